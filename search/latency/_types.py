"""The latency harness's types: where it measures (:class:`Target`), what it answers
(:class:`LatencyStats`), the drift-cancelling :class:`Reference`, and the rules for
pooling and re-measuring figures near a budget."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from statistics import median
from urllib.parse import urlsplit

from ...errors import UserError

RUNTIMES = ("ort", "torch")
TOKEN_ENV = "AUTOSCULPT_AGENT_TOKEN"
MAX_MEASUREMENTS = 3  # of one network whose figure is within the noise of a budget
MIN_NOISE = 0.02  # figures closer than this to a budget are measured again whatever their noise


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
    least one run. ``device`` ``cuda`` times eager PyTorch on this machine's GPU (wall
    clock, waiting for the kernels): for comparison with the CPU figures, never a target.
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
    device: str = "cpu"

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
        if self.device not in ("cpu", "cuda") or (self.device == "cuda" and (self.runtime != "torch" or self.url)):
            raise UserError(f"latency device {self.device!r}: cpu, or cuda with the local torch runtime (--runtime torch)")

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


def package_version(package: str) -> str:
    """The installed version of ``package``, or ``not installed``."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def batched(input_shape, batch: int) -> tuple[int, ...]:
    """``input_shape`` with its leading (batch) dimension set to ``batch``; UserError if it is no shape."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) < 2 or min(shape) < 1:
        raise UserError(f"input shape {shape} needs a batch and positive sizes, e.g. (1, 1, 96, 96)")
    return (batch, *shape[1:])


VNNI_FLAGS = ("avx512_vnni", "avx_vnni")  # the CPU flags of VNNI (8-bit dot products)


def has_vnni(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU has VNNI (flag ``avx512_vnni`` or ``avx_vnni``) in ``cpuinfo``, the
    text of /proc/cpuinfo (read when None); None when there is no flags line to read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = [line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")]
    if not flags:
        return None
    return any(flag in VNNI_FLAGS for flag in flags[0])


def target_vnni(target: Target) -> bool | None:
    """Whether ``target``'s CPU has VNNI: this machine's flags (:func:`has_vnni`), None for a
    remote target, whose flags are unknown."""
    return None if target.url else has_vnni()
