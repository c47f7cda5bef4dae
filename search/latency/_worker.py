"""The measuring process: ``python -m autosculpt.search.latency._worker SPEC`` times one model
(and a reference, interleaved) and writes its :class:`LatencyStats` as JSON.

It imports neither torch (for ONNX Runtime) nor the caller's code: it starts in a fraction
of a second and runs nothing but the timing. It fixes the thread count, pins itself to one
core when it runs one thread, warms up, then times single runs in ``rounds`` rounds spread
over a window of at least ``min_seconds`` (longer for slow models: ``min_runs`` runs), at
most ``max_seconds``.

With ``memory_mb`` in the spec it first caps its own memory (see :func:`_cap_memory`).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

from ._types import LatencyStats, Target, cpu_model

ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


def _worker(spec: dict) -> None:
    if "memory_mb" in spec:
        _cap_memory(int(spec["memory_mb"]))
    target = Target.from_dict(spec["target"])
    shape = tuple(spec["shape"])
    if target.threads == 1:
        _pin_to_one_core()
    if target.runtime == "ort":
        run = _ort_runner(Path(spec["model"]), shape, target.threads)
    else:
        run = _torch_runner(Path(spec["model"]), shape, target.threads, target.device)
    reference = _ort_runner(Path(spec["reference"]), shape, target.threads) if "reference" in spec else None
    rounds = _time_rounds(run, reference, target)
    Path(spec["out"]).write_text(json.dumps(_stats(rounds, target, shape, spec.get("reference_ms")).to_dict()))


def _cap_memory(megabytes: int) -> None:
    """Let this process map at most ``megabytes`` MB of writable memory (heap, arrays, thread stacks).

    ``RLIMIT_DATA`` rather than ``RLIMIT_AS``: glibc reserves 64 MB of address space per
    thread's malloc arena (1.3 GB at 16 threads for a worker that uses 75 MB), and under an
    address-space cap it would share arenas instead, timing the model with another
    allocator than uncapped. Reserved space is not writable, so this cap leaves it alone.
    """
    import resource

    limit = megabytes * 1_000_000
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


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


def _torch_runner(path: Path, shape: tuple[int, ...], threads: int, device: str = "cpu"):
    """A run of the exported program on ``device``; on a GPU it waits for the kernels to finish."""
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    module = torch.export.load(path).module().to(device)
    image = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(device)
    wait = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        with torch.inference_mode():
            module(image)
        wait()

    return run


def _clock_name(target: Target) -> str:
    """Thread CPU time for one CPU thread; wall clock for more threads or a GPU (its time is not the thread's)."""
    return "thread-cpu" if target.threads == 1 and target.device == "cpu" else "wall"


def _time_rounds(run, reference, target: Target) -> list[tuple[list[float], list[float]]]:
    """Per round, milliseconds of the model's single runs and of the reference's (empty without one).

    At one thread, where the runtime computes on the calling thread, a run lasts the CPU
    time of that thread: time spent preempted by other processes on the measuring machine
    is not the model's. With more threads a run lasts its wall-clock time (perf_counter_ns).
    The window is ``max(min_seconds, min_runs runs)`` (estimated from the warm-up), at
    most ``max_seconds``, split evenly into rounds; with a reference each round gives half
    its time to each network.
    """
    clock = time.thread_time_ns if _clock_name(target) == "thread-cpu" else time.perf_counter_ns
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
        cpu_model=cpu_model(), input_shape=shape, clock=_clock_name(target), rounds=len(rounds),
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
