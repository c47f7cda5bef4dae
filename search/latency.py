"""CPU latency of a model, measured the way it is deployed.

:func:`measure` turns a PyTorch model into what the chosen runtime executes (ONNX for
ONNX Runtime, a ``torch.export`` program for eager PyTorch) and times it in a fresh
worker process (``python -m autosculpt.search.latency``), so the caller's threads and
allocator do not disturb the timing. The worker fixes the thread count, pins itself to
one core when it runs one thread, warms up, then times single runs in ``rounds`` rounds
spread over a window of at least ``min_seconds`` (longer for slow models: ``min_runs``
runs), at most ``max_seconds``. The figure is the median of the runs in the undisturbed
half of the rounds (those with the lowest medians), so a burst of other load shorter than
half the window does not move it.

A run is timed in wall-clock ``perf_counter_ns``, except at one thread, where it is
timed in the CPU time of the thread that computes it (``thread_time_ns``): the same
figure on an idle machine, but one that other processes on a busy measuring machine do
not inflate. :attr:`LatencyStats.clock` names the clock of every figure.

What other processes still change (shared caches, memory bandwidth, the host's other
tenants) drifts over seconds and minutes. A :class:`Reference` network of about the same
cost, timed in the same rounds (interleaved), cancels it: the figure is then the ratio
of the two medians times the reference's own calibrated latency. On a 2-core AMD EPYC
with transient load, round medians of a 2.4 ms network moved 34 % while its ratio to a
1 ms network moved 7 % (bench/latency.py). With ``Target(url=...)`` the ONNX model is
sent to a remote ``autosculpt agent`` (see :mod:`autosculpt.search.agent`), which times
it alone.

This module imports neither torch nor onnxruntime at the top: the ONNX Runtime worker
starts in a fraction of a second because it never imports torch.
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from statistics import median
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from ..errors import UserError

__all__ = [
    "LatencyStats", "MeasurementError", "Reference", "Target", "TargetUnavailable",
    "agent_info", "clear_of", "cpu_model", "measure", "measure_onnx", "pooled",
]

RUNTIMES = ("ort", "torch")
TOKEN_ENV = "AUTOSCULPT_AGENT_TOKEN"
WORKER_TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 10.0
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# glibc malloc keeps freed memory instead of unmapping it: eager PyTorch otherwise takes
# ~1000 page faults per run of a small U-Net, whose cost swings with the machine's load.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}
MAX_MEASUREMENTS = 3  # of one network whose figure is within the noise of a budget
MIN_NOISE = 0.02  # figures closer than this to a budget are measured again whatever their noise
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


class TargetUnavailable(UserError):
    """The remote latency agent cannot be reached or refuses us; the message names its URL."""


class MeasurementError(UserError):
    """The model could not be measured (it does not load or run in the runtime)."""


@dataclass(frozen=True)
class Target:
    """Where and how latency is measured: stored in a study's settings, never with the token.

    ``url`` None measures on this machine; ``"http://HOST:PORT"`` sends the model to an
    ``autosculpt agent`` there (token from ``$AUTOSCULPT_AGENT_TOKEN``), which runs ONNX
    Runtime only. ``batch`` replaces the leading dimension of the measured input shape.
    After ``warmup`` runs, runs are timed in ``rounds`` rounds over a window of
    ``max(min_seconds, min_runs runs)``, capped at ``max_seconds``; every round has at
    least one run.
    """

    url: str | None = None
    threads: int = 1
    runtime: str = "ort"
    batch: int = 1
    min_runs: int = 60
    max_seconds: float = 3.0
    warmup: int = 5
    min_seconds: float = 1.0
    rounds: int = 10

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise UserError(f"unknown latency runtime {self.runtime!r}: choose one of {', '.join(RUNTIMES)}")
        for name in ("threads", "batch", "min_runs", "rounds"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"latency {name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0 or not self.max_seconds > 0 or self.min_seconds < 0:
            raise UserError("latency warmup and min_seconds must be >= 0 and max_seconds > 0")
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise UserError(f"latency target {self.url!r} is not a URL: give it as http://HOST:PORT")
            if self.runtime != "ort":
                raise UserError("a remote latency agent measures ONNX Runtime only: use runtime 'ort' with --target")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Target":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class Reference:
    """A network timed in the same rounds as every candidate, so that machine drift cancels.

    ``onnx`` is its ONNX file; ``median_ms`` its own latency, calibrated once (a long
    measurement without a reference) on the same target, input shape and clock. A
    candidate's figure is then (candidate / reference, per round) x ``median_ms``.
    """

    onnx: bytes
    median_ms: float


@dataclass(frozen=True)
class LatencyStats:
    """Timings of one model in milliseconds per run, on the clock named by ``clock``.

    ``median_ms`` and ``p90_ms`` are those of the single runs in the undisturbed half of
    the rounds (the rounds with the lowest medians); with a reference (``reference_ms``
    set) they are relative to the reference, times its calibrated latency. ``raw_median_ms``
    is the median of all rounds' medians, as timed in this window. ``noise`` is the interquartile range of the
    rounds' figures over their median: a figure within ``noise`` of a budget is too close
    to call from one measurement. ``measurements`` counts the pooled measurements
    (:func:`pooled`); ``cv`` is the std/mean of single runs.
    """

    median_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    runs: int
    cv: float
    threads: int
    runtime: str
    cpu_model: str
    input_shape: tuple[int, ...]
    clock: str = "wall"
    rounds: int = 1
    noise: float = 0.0
    measurements: int = 1
    raw_median_ms: float | None = None
    reference_ms: float | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "input_shape": list(self.input_shape)}

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyStats":
        """Stats as stored by :meth:`to_dict`; figures stored before a field existed take its default."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        return cls(**{**values, "input_shape": tuple(int(d) for d in data["input_shape"])})


def pooled(measurements: list[LatencyStats]) -> LatencyStats:
    """One figure from repeated measurements of one model: medians of their figures.

    ``runs``, ``rounds`` and ``measurements`` add up; ``noise`` shrinks with the square
    root of the number pooled (the median of independent measurements).
    """
    if len(measurements) == 1:
        return measurements[0]
    first = measurements[0]

    def mid(name: str) -> float:
        return float(median(getattr(m, name) for m in measurements))

    raw = [m.raw_median_ms for m in measurements if m.raw_median_ms is not None]
    return replace(
        first, median_ms=mid("median_ms"), p90_ms=mid("p90_ms"), cv=mid("cv"),
        min_ms=min(m.min_ms for m in measurements), max_ms=max(m.max_ms for m in measurements),
        runs=sum(m.runs for m in measurements), rounds=sum(m.rounds for m in measurements),
        measurements=sum(m.measurements for m in measurements),
        noise=mid("noise") / len(measurements) ** 0.5, raw_median_ms=float(median(raw)) if raw else None,
    )


def measure(model, input_shape: tuple[int, ...], target: Target = Target(),
            reference: Reference | None = None) -> LatencyStats:
    """Latency of ``model`` (an ``nn.Module``) on one input of ``input_shape`` at ``target``.

    ``input_shape`` includes the batch dimension, which is set to ``target.batch``. The
    model is measured in eval mode; its own mode is left as it was. ``reference`` (ONNX
    Runtime on this machine only) is timed in the same rounds. Raises
    :class:`MeasurementError` or, for a remote target, :class:`TargetUnavailable`.
    """
    shape = _batched(input_shape, target.batch)
    if target.runtime == "torch":
        return _measure_torch(model, shape, target)
    from .onnx_io import to_onnx

    return measure_onnx(to_onnx(model, shape), shape, target, reference)


def measure_onnx(onnx_bytes: bytes, input_shape, target: Target, reference: Reference | None = None) -> LatencyStats:
    """Latency of a single-file ONNX model in ONNX Runtime, here or on ``target.url``.

    ``reference`` is timed in the same rounds on this machine; a remote agent times the
    model alone (``reference`` must then be None). Raises :class:`MeasurementError` when
    the bytes are not a model that runs on an input of ``input_shape`` (batch set to
    ``target.batch``), and :class:`TargetUnavailable` when a remote agent is down or
    refuses the token.
    """
    shape = _batched(input_shape, target.batch)
    if target.runtime != "ort":
        raise UserError("an ONNX model is measured in ONNX Runtime: use runtime 'ort'")
    if target.url:
        if reference is not None:
            raise UserError("a remote latency agent times models alone: measure without a reference")
        return _measure_remote(onnx_bytes, shape, target)
    with tempfile.TemporaryDirectory(prefix="autosculpt-latency-") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(onnx_bytes)
        if reference is None:
            return _run_worker(path, shape, target)
        reference_path = Path(folder) / "reference.onnx"
        reference_path.write_bytes(reference.onnx)
        return _run_worker(path, shape, target, (reference_path, reference.median_ms))


def clear_of(budget_ms: float, measure_once) -> LatencyStats:
    """``measure_once()`` pooled (:func:`pooled`) over as many measurements as it takes for
    the figure to clear ``budget_ms`` by more than its noise (at least MIN_NOISE), at most
    MAX_MEASUREMENTS: feasibility is then not decided by one noisy measurement."""
    measurements = [measure_once()]
    while len(measurements) < MAX_MEASUREMENTS:
        stats = pooled(measurements)
        if abs(stats.median_ms - budget_ms) > max(stats.noise, MIN_NOISE) * budget_ms:
            break
        measurements.append(measure_once())
    return pooled(measurements)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def agent_info(url: str) -> dict:
    """What the agent at ``url`` reports about its machine (``GET /info``)."""
    status, body = _request(url, "GET", "/info", None)
    if status != 200:
        raise _remote_error(url, status, body, 0)
    return json.loads(body)


def _batched(input_shape, batch: int) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) < 2 or min(shape) < 1:
        raise UserError(f"input shape {shape} needs a batch and positive sizes, e.g. (1, 1, 96, 96)")
    return (batch, *shape[1:])


# --- the caller's side ---------------------------------------------------------------


def _measure_torch(model, shape: tuple[int, ...], target: Target) -> LatencyStats:
    """Ship the model as a ``torch.export`` program (no pickled modules) to a worker."""
    import torch

    was_training = model.training
    model.eval()
    try:
        program = torch.export.export(model, (torch.randn(*shape),))
    finally:
        model.train(was_training)
    with tempfile.TemporaryDirectory(prefix="autosculpt-latency-") as folder:
        path = Path(folder) / "model.pt2"
        torch.export.save(program, path)
        return _run_worker(path, shape, target)


def _run_worker(model_path: Path, shape: tuple[int, ...], target: Target,
                reference: tuple[Path, float] | None = None) -> LatencyStats:
    """Time the model file (and the reference, interleaved) in a fresh ``python -m autosculpt.search.latency`` process."""
    out = model_path.with_name("stats.json")
    spec = {"model": str(model_path), "shape": list(shape), "target": target.to_dict(), "out": str(out)}
    if reference is not None:
        spec["reference"], spec["reference_ms"] = str(reference[0]), reference[1]
    command = [sys.executable, "-m", "autosculpt.search.latency", json.dumps(spec)]
    try:
        done = subprocess.run(  # in the model's own folder: ONNX external data cannot reach other files
            command, cwd=model_path.parent, env=_worker_env(target.threads),
            capture_output=True, text=True, timeout=WORKER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise MeasurementError(f"measuring took over {WORKER_TIMEOUT_S:.0f} s: give a smaller model or input") from None
    if done.returncode != 0:
        raise MeasurementError(f"the model could not be measured: {_failure(done)}")
    return LatencyStats.from_dict(json.loads(out.read_text()))


def _worker_env(threads: int) -> dict:
    """The caller's environment without the agent token, with fixed threads and malloc."""
    env = {key: value for key, value in os.environ.items() if key != TOKEN_ENV}
    return {**env, **{name: str(threads) for name in THREAD_ENV}, **MALLOC_ENV}


def _failure(done: subprocess.CompletedProcess) -> str:
    if done.returncode < 0:
        return f"the runtime crashed (signal {-done.returncode})"
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return lines[-1][:500] if lines else f"exit status {done.returncode}"


def _measure_remote(onnx_bytes: bytes, shape: tuple[int, ...], target: Target) -> LatencyStats:
    query = urlencode({
        "shape": ",".join(str(d) for d in shape), "threads": target.threads, "batch": target.batch,
        "min_runs": target.min_runs, "max_seconds": target.max_seconds, "warmup": target.warmup,
        "min_seconds": target.min_seconds, "rounds": target.rounds,
    })
    status, body = _request(target.url, "POST", f"/measure?{query}", onnx_bytes)
    if status != 200:
        raise _remote_error(target.url, status, body, len(onnx_bytes))
    return LatencyStats.from_dict(json.loads(body))


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
        connection.request(method, parts.path.rstrip("/") + path, body=body, headers=headers)
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
    if status == 400:
        return MeasurementError(f"the latency agent at {url} could not measure the model: {message}")
    return TargetUnavailable(f"the latency agent at {url} answered {status}: {message}")


# --- the worker process (no torch import for ONNX Runtime) ----------------------------


def _worker(spec: dict) -> None:
    target = Target.from_dict(spec["target"])
    shape = tuple(spec["shape"])
    if target.threads == 1:
        _pin_to_one_core()
    load = _ort_runner if target.runtime == "ort" else _torch_runner
    run = load(Path(spec["model"]), shape, target.threads)
    reference = _ort_runner(Path(spec["reference"]), shape, target.threads) if "reference" in spec else None
    rounds = _time_rounds(run, reference, target)
    Path(spec["out"]).write_text(json.dumps(_stats(rounds, target, shape, spec.get("reference_ms")).to_dict()))


def _pin_to_one_core() -> None:
    """Stay on one core: no migrations between runs (the last core sees fewer interrupts)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})


def _ort_runner(path: Path, shape: tuple[int, ...], threads: int):
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Loaded from bytes: a hostile model cannot point ONNX Runtime at files beside it.
    session = ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type not in ORT_DTYPES:
        raise ValueError("the model needs exactly one floating-point input")
    image = np.random.default_rng(0).standard_normal(shape).astype(ORT_DTYPES[inputs[0].type])
    feed = {inputs[0].name: image}
    return lambda: session.run(None, feed)


def _torch_runner(path: Path, shape: tuple[int, ...], threads: int):
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    module = torch.export.load(path).module()
    image = torch.randn(*shape, generator=torch.Generator().manual_seed(0))

    def run():
        with torch.inference_mode():
            module(image)

    return run


def _clock_name(threads: int) -> str:
    return "thread-cpu" if threads == 1 else "wall"


def _time_rounds(run, reference, target: Target) -> list[tuple[list[float], list[float]]]:
    """Per round, milliseconds of the model's single runs and of the reference's (empty without one).

    At one thread, where the runtime computes on the calling thread, a run lasts the CPU
    time of that thread: time spent preempted by other processes on the measuring machine
    is not the model's. With more threads a run lasts its wall-clock time (perf_counter_ns).
    The window is ``max(min_seconds, min_runs runs)`` (estimated from the warm-up), at
    most ``max_seconds``, split evenly into rounds; with a reference each round gives half
    its time to each network.
    """
    clock = time.thread_time_ns if target.threads == 1 else time.perf_counter_ns
    networks = 1 if reference is None else 2
    start = time.perf_counter_ns()
    for _ in range(max(target.warmup, 1)):
        run()
    per_run = (time.perf_counter_ns() - start) / max(target.warmup, 1)
    for _ in range(target.warmup if reference else 0):
        reference()
    window = min(target.max_seconds * 1e9, max(target.min_seconds * 1e9, target.min_runs * per_run * networks))
    block = window / target.rounds / networks
    gc.collect()
    gc.disable()
    rounds = []
    for _ in range(target.rounds):
        model_times = _time_block(run, clock, block)
        rounds.append((model_times, [] if reference is None else _time_block(reference, clock, block)))
    gc.enable()
    return rounds


def _time_block(run, clock, nanoseconds: float) -> list[float]:
    """Milliseconds of single runs for about ``nanoseconds`` of wall time (at least one run)."""
    times = []
    deadline = time.perf_counter_ns() + nanoseconds
    while not times or time.perf_counter_ns() < deadline:
        start = clock()
        run()
        times.append((clock() - start) / 1e6)
    return times


def _stats(rounds, target: Target, shape: tuple[int, ...], reference_ms: float | None) -> LatencyStats:
    """The figure of timed rounds.

    Alone: the median and p90 of the runs in the undisturbed half of the rounds (those
    with the lowest medians): other load only ever adds time, and bursts of it hit whole
    rounds. With a reference: the median over rounds of (model / reference) times the
    reference's calibrated latency, the runs' spread scaled to it.
    """
    import numpy as np

    medians = np.asarray([np.median(model) for model, _ in rounds])
    raw = float(np.median(medians))
    if reference_ms is None:
        undisturbed = np.argsort(medians, kind="stable")[: (len(rounds) + 1) // 2]
        runs = np.concatenate([np.asarray(rounds[i][0]) for i in undisturbed])
        per_round = medians
        figure = float(np.median(runs))
    else:
        runs = np.concatenate([np.asarray(model) for model, _ in rounds])
        per_round = np.asarray([np.median(model) / np.median(ref) * reference_ms for model, ref in rounds])
        figure = float(np.median(per_round))
    scale = figure / float(np.median(runs))
    q25, q75 = np.percentile(per_round, [25, 75])
    return LatencyStats(
        median_ms=figure, p90_ms=float(np.percentile(runs, 90)) * scale,
        min_ms=float(runs.min()) * scale, max_ms=float(runs.max()) * scale, runs=sum(len(model) for model, _ in rounds),
        cv=float(runs.std() / runs.mean()), threads=target.threads, runtime=target.runtime,
        cpu_model=cpu_model(), input_shape=shape, clock=_clock_name(target.threads), rounds=len(rounds),
        noise=float((q75 - q25) / figure), raw_median_ms=raw, reference_ms=reference_ms,
    )


def _worker_main(argv: list[str]) -> int:
    try:
        _worker(json.loads(argv[0]))
    except Exception as error:  # noqa: BLE001 - reported to the parent as one line on stderr
        message = " ".join(str(error).split()) or error.__class__.__name__
        print(f"{error.__class__.__name__}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
