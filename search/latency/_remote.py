"""The remote implementation of :class:`Meter`: an ``autosculpt agent`` on the target machine
(:mod:`autosculpt.search.servers.agent`) times the ONNX model alone and answers its figures."""

from __future__ import annotations

import http.client
import json
import os
from urllib.parse import urlencode, urlsplit

from ...errors import UserError
from ._meter import WORKER_TIMEOUT_S, Meter
from ._types import TOKEN_ENV, LatencyStats, MeasurementError, Reference, TargetUnavailable

CONNECT_TIMEOUT_S = 10.0


class RemoteMeter(Meter):
    """Sends the model to the agent at ``target.url`` with the token in ``$AUTOSCULPT_AGENT_TOKEN``.

    The agent measures the same way as :class:`LocalMeter`, alone: a reference network
    is refused (UserError).
    """

    def measure_onnx(self, onnx_bytes: bytes, shape: tuple[int, ...], reference: Reference | None = None) -> LatencyStats:
        if reference is not None:
            raise UserError("a remote latency agent times models alone: measure without a reference")
        target = self.target
        query = urlencode({
            "shape": ",".join(str(d) for d in shape), "threads": target.threads, "batch": target.batch,
            "min_runs": target.min_runs, "max_seconds": target.max_seconds, "warmup": target.warmup,
            "min_seconds": target.min_seconds, "rounds": target.rounds,
        })
        status, body = _request(target.url, "POST", f"/measure?{query}", onnx_bytes)
        if status != 200:
            raise _remote_error(target.url, status, body, len(onnx_bytes))
        return LatencyStats.from_dict(json.loads(body))


def agent_info(url: str) -> dict:
    """What the agent at ``url`` reports about its machine (``GET /info``)."""
    status, body = _request(url, "GET", "/info", None)
    if status != 200:
        raise _remote_error(url, status, body, 0)
    return json.loads(body)


def _request(url: str, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
    """One authorised request to an agent: (status, body); TargetUnavailable if unreachable."""
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise TargetUnavailable(f"no token for the latency agent at {url}: set {TOKEN_ENV} to the agent's token")
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=CONNECT_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    try:
        connection.connect()
        connection.sock.settimeout(WORKER_TIMEOUT_S + 60)  # the agent may queue us behind other measurements
        try:
            connection.request(method, parts.path.rstrip("/") + path, body=body, headers=headers)
        except ConnectionError:
            pass  # the agent refused the request without reading the body, and closed: read why
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as error:
        raise TargetUnavailable(
            f"the latency agent at {url} is unreachable ({error}): start `autosculpt agent --host HOST --port PORT` "
            f"there with the same {TOKEN_ENV}"
        ) from None
    finally:
        connection.close()


def _remote_error(url: str, status: int, body: bytes, size: int) -> UserError:
    try:
        message = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        message = body[:200].decode(errors="replace")
    if status == 401:
        return TargetUnavailable(f"the latency agent at {url} refused the token: set {TOKEN_ENV} to the agent's token")
    if status == 413:
        return UserError(f"the model ({size / 1e6:.1f} MB) is over the limit of the agent at {url}: "
                         "restart the agent with a larger --max-mb")
    if status == 503:
        return TargetUnavailable(f"the latency agent at {url} is busy ({message}): "
                                 "try again, or send it fewer requests at once")
    if status == 400:
        return MeasurementError(f"the latency agent at {url} could not measure the model: {message}")
    return TargetUnavailable(f"the latency agent at {url} answered {status}: {message}")
