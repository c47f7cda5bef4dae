"""The one interface behind which latency is measured, and its local implementation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from ...errors import UserError
from ._types import TOKEN_ENV, LatencyStats, MeasurementError, Reference, Target, batched

WORKER_TIMEOUT_S = 600.0
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# glibc malloc keeps freed memory instead of unmapping it: eager PyTorch otherwise takes
# ~1000 page faults per run of a small U-Net, whose cost swings with the machine's load.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}
# How Python, ONNX Runtime, C++ and OpenBLAS say that an allocation failed.
ALLOCATION_FAILED = ("MemoryError", "Failed to allocate memory", "bad_alloc", "Cannot allocate memory",
                     "Memory allocation")


class Meter(ABC):
    """Times models on one :class:`Target`. Subclasses implement :meth:`measure_onnx`.

    Contract, for every implementation:

    - **Clock.** At one thread a run lasts the CPU time of the thread that computes it
      (``thread-cpu``), else its wall-clock time (``wall``); every :class:`LatencyStats`
      names its clock, and its median and p90 are on that clock.
    - **Isolation.** Every measurement runs in a fresh process that runs nothing else:
      fixed thread count, pinned to one core at one thread, no torch import for ONNX
      Runtime. Nothing of the caller's process (its threads, its allocator) runs in it.
    - **Errors.** :class:`MeasurementError` when the model does not load or run on the
      input shape; :class:`TargetUnavailable` when the target cannot be reached or refuses
      us; :class:`UserError` for arguments the target cannot honour. Nothing else.
    """

    def __init__(self, target: Target) -> None:
        self.target = target

    @abstractmethod
    def measure_onnx(self, onnx_bytes: bytes, shape: tuple[int, ...], reference: Reference | None = None) -> LatencyStats:
        """Latency of a single-file ONNX model on an input of ``shape`` (batch already set).

        ``reference`` is timed in the same rounds (interleaved), and the figure is then
        relative to it (see :class:`Reference`).
        """

    def measure(self, model, shape: tuple[int, ...], reference: Reference | None = None) -> LatencyStats:
        """Latency of an ``nn.Module`` as the target's runtime runs it (ONNX by default)."""
        from ..onnx_io import to_onnx

        return self.measure_onnx(to_onnx(model, shape), shape, reference)


class LocalMeter(Meter):
    """Measures on this machine, in a child ``python -m autosculpt.search.latency._worker``.

    ``memory_mb`` caps the writable memory of that child (none by default): a model that
    needs more fails with a :class:`MeasurementError` that names the cap.
    """

    def __init__(self, target: Target, memory_mb: int | None = None) -> None:
        super().__init__(target)
        self.memory_mb = memory_mb

    def measure_onnx(self, onnx_bytes: bytes, shape: tuple[int, ...], reference: Reference | None = None) -> LatencyStats:
        with tempfile.TemporaryDirectory(prefix="autosculpt-latency-") as folder:
            path = Path(folder) / "model.onnx"
            path.write_bytes(onnx_bytes)
            if reference is None:
                return self._run_worker(path, shape)
            reference_path = Path(folder) / "reference.onnx"
            reference_path.write_bytes(reference.onnx)
            return self._run_worker(path, shape, (reference_path, reference.median_ms))

    def measure(self, model, shape: tuple[int, ...], reference: Reference | None = None) -> LatencyStats:
        """With runtime ``torch``, the model travels as a ``torch.export`` program (no pickled modules)."""
        if self.target.runtime != "torch":
            return super().measure(model, shape, reference)
        if reference is not None:
            raise UserError("a reference network is timed in ONNX Runtime: measure eager PyTorch without one")
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
            return self._run_worker(path, shape)

    def _run_worker(self, model_path: Path, shape: tuple[int, ...],
                    reference: tuple[Path, float] | None = None) -> LatencyStats:
        """Time the model file (and the reference, interleaved) in a fresh worker process."""
        out = model_path.with_name("stats.json")
        spec = {"model": str(model_path), "shape": list(shape), "target": self.target.to_dict(), "out": str(out)}
        if reference is not None:
            spec["reference"], spec["reference_ms"] = str(reference[0]), reference[1]
        if self.memory_mb is not None:
            spec["memory_mb"] = self.memory_mb
        command = [sys.executable, "-m", "autosculpt.search.latency._worker", json.dumps(spec)]
        try:
            done = subprocess.run(  # in the model's own folder: ONNX external data cannot reach other files
                command, cwd=model_path.parent, env=_worker_env(self.target.threads),
                capture_output=True, text=True, timeout=WORKER_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            cap = "" if self.memory_mb is None else f" (or it hung short of memory under its {self.memory_mb} MB cap)"
            raise MeasurementError(f"measuring took over {WORKER_TIMEOUT_S:.0f} s{cap}: "
                                   "give a smaller model or input") from None
        if done.returncode == 0:
            return LatencyStats.from_dict(json.loads(out.read_text()))
        if self.memory_mb is not None and any(text in done.stderr for text in ALLOCATION_FAILED):
            raise MeasurementError(f"the measuring process ran out of its {self.memory_mb} MB memory cap: "
                                   f"{_failure(done)}")
        raise MeasurementError(f"the model could not be measured: {_failure(done)}")


def meter_for(target: Target) -> Meter:
    """The meter of ``target``: remote when it names an agent's URL, else local."""
    if target.url:
        from ._remote import RemoteMeter

        return RemoteMeter(target)
    return LocalMeter(target)


def measure(model, input_shape: tuple[int, ...], target: Target = Target(),
            reference: Reference | None = None) -> LatencyStats:
    """Latency of ``model`` (an ``nn.Module``) on one input of ``input_shape`` at ``target``.

    ``input_shape`` includes the batch dimension, which is set to ``target.batch``. The
    model is measured in eval mode; its own mode is left as it was. Errors as in :class:`Meter`.
    """
    return meter_for(target).measure(model, batched(input_shape, target.batch), reference)


def measure_onnx(onnx_bytes: bytes, input_shape, target: Target, reference: Reference | None = None) -> LatencyStats:
    """Latency of a single-file ONNX model in ONNX Runtime at ``target`` (batch set to
    ``target.batch``). Errors as in :class:`Meter`."""
    if target.runtime != "ort":
        raise UserError("an ONNX model is measured in ONNX Runtime: use runtime 'ort'")
    return meter_for(target).measure_onnx(onnx_bytes, batched(input_shape, target.batch), reference)


def _worker_env(threads: int) -> dict:
    """The caller's environment without the agent token, with fixed threads and malloc."""
    env = {key: value for key, value in os.environ.items() if key != TOKEN_ENV}
    return {**env, **{name: str(threads) for name in THREAD_ENV}, **MALLOC_ENV}


def _failure(done: subprocess.CompletedProcess) -> str:
    if done.returncode < 0:
        return f"the runtime crashed (signal {-done.returncode})"
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return lines[-1][:500] if lines else f"exit status {done.returncode}"
