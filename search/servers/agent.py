"""The remote latency agent: measures ONNX models on the CPU they will be deployed on.

Run ``autosculpt agent`` on the target machine; a search elsewhere measures there with
``Target(url="http://HOST:PORT")``. The protocol is plain HTTP with a bearer token:

- ``GET /info`` answers the machine's CPU model, core count and runtime versions.
- ``POST /measure?shape=1,1,96,96&threads=1&batch=1&min_runs=60&max_seconds=3&warmup=5&min_seconds=1&rounds=10``
  with an ONNX file as the body answers :class:`~autosculpt.search.latency.LatencyStats`
  as JSON.

Every answer is JSON and closes its connection; errors are ``{"error": "..."}`` with 401
(missing or wrong token), 404, 411 (no Content-Length), 413 (model over ``--max-mb``), 503
(busy) or 400 (bad parameters, an input over ``--max-elements``, or a model that does not
load or run, or runs out of ``--max-memory-mb``).

Resources are bounded whatever clients send:

- A refused request is answered as soon as its headers are read, and its connection
  closed: the agent never reads a body it refuses. A client that sends
  ``Expect: 100-continue`` (curl does, for large bodies) is told before it sends the model.
- At most :data:`MAX_CONNECTIONS` connections are served at once, each by one thread;
  the agent answers 503 to any more, at once, without reading them.
- Measurements run one at a time, so that none disturbs another's figures: an accepted
  request waits for its turn (searches with several workers share one agent) and only
  then is its model read, so at most one model is held in memory.
- The input has at most :data:`MAX_DIMS` dimensions and ``--max-elements`` elements.
- Each measurement runs in its own worker process, with at most ``--max-memory-mb`` MB of
  writable memory, so a hostile model can exhaust or crash only that process; models are
  read as ONNX by ONNX Runtime, never unpickled.

The token travels in clear text over HTTP: use the agent on a trusted network or behind a
TLS proxy.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import platform
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from ...errors import UserError
from ..latency import TOKEN_ENV, LocalMeter, Target, batched, cpu_model, package_version

MAX_RUNS = 10_000
MAX_SECONDS = 60.0
MAX_WARMUP = 1_000
MAX_CONNECTIONS = 16
MAX_DIMS = 8
MAX_ELEMENTS = 1 << 24  # 4096 x 4096: 64 MiB of float32
MAX_MEMORY_MB = 4096


class AgentServer(ThreadingHTTPServer):
    """An HTTP server that measures one model at a time for holders of ``token``.

    It accepts models of at most ``max_bytes`` bytes, inputs of at most ``max_elements``
    elements, and measures them in a worker process capped at ``memory_mb`` MB.
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], token: str | None, max_bytes: int,
                 max_elements: int = MAX_ELEMENTS, memory_mb: int = MAX_MEMORY_MB):
        if not token:
            raise UserError(f"the agent needs a token: set {TOKEN_ENV} or pass --token")
        super().__init__(address, _Handler)
        self.token = token.encode()
        self.max_bytes = max_bytes
        self.max_elements = max_elements
        self.memory_mb = memory_mb
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.measuring = threading.Lock()

    def process_request(self, request, client_address) -> None:
        """Serve the connection in a thread of its own, or answer 503 at once if
        :data:`MAX_CONNECTIONS` are being served."""
        if self.connections.acquire(blocking=False):
            super().process_request(request, client_address)
            return
        body = json.dumps({"error": f"it serves {MAX_CONNECTIONS} connections at most"})
        try:
            request.settimeout(1)
            request.sendall(f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode())
        except OSError:
            pass
        self.shutdown_request(request)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()


def info() -> dict:
    """What ``GET /info`` answers: this machine's CPU and the versions that measure."""
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": package_version("onnxruntime"),
        "numpy": package_version("numpy"),
        "autosculpt": package_version("autosculpt"),
    }


class _Handler(BaseHTTPRequestHandler):
    server: AgentServer
    timeout = 30  # seconds a client may stall while sending its request
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._answer(self._get)

    def do_POST(self):
        self._answer(self._post)

    def handle_expect_100(self) -> bool:
        return True  # "100 Continue" is sent by _post, once it accepts the request

    def _answer(self, handle) -> None:
        """Run ``handle() -> (status, payload)``, reply with JSON whatever happens, and close."""
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
        """Measure the body, once the request is accepted and no other measurement runs."""
        parts = urlsplit(self.path)
        if parts.path != "/measure":
            return 404, {"error": "unknown path: use GET /info or POST /measure"}
        size = self._content_length()
        if size is None:
            return 411, {"error": "send the ONNX model with a Content-Length header"}
        if size > self.server.max_bytes:
            limit = self.server.max_bytes / 1e6
            return 413, {"error": f"model of {size / 1e6:.1f} MB is over the agent's {limit:g} MB limit"}
        shape, target = _parse_query(parts.query, self.server.max_elements)
        with self.server.measuring:
            if self.headers.get("Expect", "").lower() == "100-continue":
                self.send_response_only(100)
                self.end_headers()
            model = self.rfile.read(size)
            if len(model) != size:
                raise ValueError(f"the model ended after {len(model)} of {size} bytes")
            meter = LocalMeter(target, memory_mb=self.server.memory_mb)
            return 200, meter.measure_onnx(model, shape).to_dict()  # a MeasurementError (a UserError) is 400

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
        self.send_header("Connection", "close")  # and any body we did not read stays unread
        self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


def _parse_query(query: str, max_elements: int = MAX_ELEMENTS) -> tuple[tuple[int, ...], Target]:
    """The input shape (batch set) and target of ``POST /measure``; ValueError/UserError when
    invalid, or when the input has over :data:`MAX_DIMS` dimensions or ``max_elements`` elements."""
    params = {name: values[-1] for name, values in parse_qs(query).items()}
    try:
        shape = tuple(int(d) for d in params["shape"].split(","))
    except (KeyError, ValueError):
        raise ValueError("give the input shape as integers, e.g. ?shape=1,1,96,96") from None
    if len(shape) > MAX_DIMS:
        raise ValueError(f"the input shape has {len(shape)} dimensions, over the agent's {MAX_DIMS}: "
                         "give an image's shape, e.g. ?shape=1,1,96,96")
    shape = batched(shape, int(params.get("batch", shape[0])))
    if math.prod(shape) > max_elements:
        raise ValueError(f"the input {shape} has {math.prod(shape):,} elements, over the agent's {max_elements:,}: "
                         "give a smaller input or batch, or restart the agent with a larger --max-elements")
    threads = int(params.get("threads", 1))
    if not 1 <= threads <= (os.cpu_count() or 1):
        raise ValueError(f"threads must be between 1 and {os.cpu_count()} on this machine")
    target = Target(
        threads=threads, batch=shape[0],
        min_runs=min(int(params.get("min_runs", Target.min_runs)), MAX_RUNS),
        max_seconds=min(float(params.get("max_seconds", Target.max_seconds)), MAX_SECONDS),
        warmup=min(int(params.get("warmup", Target.warmup)), MAX_WARMUP),
        min_seconds=min(float(params.get("min_seconds", Target.min_seconds)), MAX_SECONDS),
        rounds=min(int(params.get("rounds", Target.rounds)), MAX_RUNS),
    )
    return shape, target


def serve(host: str, port: int, token: str | None, max_mb: float = 200.0, announce=print,
          max_elements: int = MAX_ELEMENTS, memory_mb: int = MAX_MEMORY_MB) -> None:
    """Serve until interrupted; ``announce`` gets one line with the URL (never the token)."""
    server = AgentServer((host, port), token, int(max_mb * 1e6), max_elements, memory_mb)
    bound_host, bound_port = server.server_address[:2]
    announce(f"autosculpt agent listening on http://{bound_host}:{bound_port} ({cpu_model()}); Ctrl-C stops it")
    try:
        server.serve_forever()
    finally:
        server.server_close()
