"""The remote latency agent: measures ONNX models on the CPU they will be deployed on.

Run ``autosculpt agent`` on the target machine; a search elsewhere measures there with
``Target(url="http://HOST:PORT")``. The protocol is plain HTTP with a bearer token:

- ``GET /info`` answers the machine's CPU model, core count and runtime versions.
- ``POST /measure?shape=1,1,96,96&threads=1&batch=1&min_runs=60&max_seconds=3&warmup=5&min_seconds=1&rounds=10``
  with an ONNX file as the body answers :class:`~autosculpt.search.latency.LatencyStats`
  as JSON.

Every answer is JSON; errors are ``{"error": "..."}`` with 401 (missing or wrong token),
404, 411 (no Content-Length), 413 (model over ``--max-mb``) or 400 (bad parameters, or a
model that does not load or run). Measurements run one at a time, each in its own worker
process, so a hostile model can crash only that process; models are read as ONNX by ONNX
Runtime, never unpickled. The token travels in clear text over HTTP: use the agent on a
trusted network or behind a TLS proxy.
"""

from __future__ import annotations

import hmac
import json
import os
import platform
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import parse_qs, urlsplit

from ..errors import UserError
from .latency import TOKEN_ENV, Target, cpu_model, measure_onnx

MAX_RUNS = 10_000
MAX_SECONDS = 60.0
MAX_WARMUP = 1_000
CHUNK = 1 << 20


class AgentServer(ThreadingHTTPServer):
    """An HTTP server that measures one model at a time for holders of ``token``."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], token: str | None, max_bytes: int):
        if not token:
            raise UserError(f"the agent needs a token: set {TOKEN_ENV} or pass --token")
        super().__init__(address, _Handler)
        self.token = token.encode()
        self.max_bytes = max_bytes
        self.measuring = threading.Lock()


def info() -> dict:
    """What ``GET /info`` answers: this machine's CPU and the versions that measure."""
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": _version("onnxruntime"),
        "numpy": _version("numpy"),
        "autosculpt": _version("autosculpt"),
    }


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


class _Handler(BaseHTTPRequestHandler):
    server: AgentServer
    timeout = 120  # seconds a client may stall while sending
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._answer(self._get)

    def do_POST(self):
        self._answer(self._post)

    def _answer(self, handle) -> None:
        """Run ``handle() -> (status, payload)`` and reply with JSON, whatever happens."""
        self._unread = self._content_length()
        try:
            status, payload = (401, {"error": "missing or wrong token"}) if not self._authorized() else handle()
        except (UserError, ValueError) as error:
            status, payload = 400, {"error": str(error)}
        except Exception as error:  # noqa: BLE001 - the agent keeps serving
            status, payload = 500, {"error": f"{error.__class__.__name__}: {error}"}
        self._reply(status, payload)

    def _get(self) -> tuple[int, dict]:
        if urlsplit(self.path).path != "/info":
            return 404, {"error": "unknown path: use GET /info or POST /measure"}
        return 200, info()

    def _post(self) -> tuple[int, dict]:
        parts = urlsplit(self.path)
        if parts.path != "/measure":
            return 404, {"error": "unknown path: use GET /info or POST /measure"}
        if self._unread is None:
            return 411, {"error": "send the ONNX model with a Content-Length header"}
        if self._unread > self.server.max_bytes:
            limit = self.server.max_bytes / 1e6
            return 413, {"error": f"model of {self._unread / 1e6:.1f} MB is over the agent's {limit:g} MB limit"}
        shape, target = _parse_query(parts.query)
        model = self.rfile.read(self._unread)
        self._unread = 0
        with self.server.measuring:  # a MeasurementError (a UserError) becomes 400
            return 200, measure_onnx(model, shape, target).to_dict()

    def _content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value and value.isdigit() else None

    def _authorized(self) -> bool:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.server.token)

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        if self._unread:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self._discard_body()

    def _discard_body(self) -> None:
        """Read an unread request body so the client, still sending, gets our answer."""
        while self._unread:
            chunk = self.rfile.read(min(CHUNK, self._unread))
            if not chunk:
                return
            self._unread -= len(chunk)


def _parse_query(query: str) -> tuple[tuple[int, ...], Target]:
    """The input shape and target of ``POST /measure``; ValueError/UserError when invalid."""
    params = {name: values[-1] for name, values in parse_qs(query).items()}
    try:
        shape = tuple(int(d) for d in params["shape"].split(","))
    except (KeyError, ValueError):
        raise ValueError("give the input shape as integers, e.g. ?shape=1,1,96,96") from None
    threads = int(params.get("threads", 1))
    if not 1 <= threads <= (os.cpu_count() or 1):
        raise ValueError(f"threads must be between 1 and {os.cpu_count()} on this machine")
    target = Target(
        threads=threads, batch=int(params.get("batch", shape[0])),
        min_runs=min(int(params.get("min_runs", Target.min_runs)), MAX_RUNS),
        max_seconds=min(float(params.get("max_seconds", Target.max_seconds)), MAX_SECONDS),
        warmup=min(int(params.get("warmup", Target.warmup)), MAX_WARMUP),
        min_seconds=min(float(params.get("min_seconds", Target.min_seconds)), MAX_SECONDS),
        rounds=min(int(params.get("rounds", Target.rounds)), MAX_RUNS),
    )
    return shape, target


def serve(host: str, port: int, token: str | None, max_mb: float = 200.0, announce=print) -> None:
    """Serve until interrupted; ``announce`` gets one line with the URL (never the token)."""
    server = AgentServer((host, port), token, int(max_mb * 1e6))
    bound_host, bound_port = server.server_address[:2]
    announce(f"autosculpt agent listening on http://{bound_host}:{bound_port} ({cpu_model()}); Ctrl-C stops it")
    try:
        server.serve_forever()
    finally:
        server.server_close()
