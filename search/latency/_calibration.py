"""A machine's own latency reference: calibrated once, cached, timed beside every model.

A figure timed alone moves with the machine (other tenants of a VM, a busy neighbour
core, clock changes): five back-to-back one-thread medians of ``unet`` have spread 29 %.
A reference network timed in the same rounds moves with it, so the ratio of the two
repeats. :func:`machine_reference` gives the reference's own latency on this machine,
measured once as the median of CALIBRATION_MEASUREMENTS alone measurements and cached
per CPU model, thread count, ONNX Runtime version, input shape and reference network;
figures timed against it are that ratio times the cached latency, so they repeat as
well as the ratio does and keep the level of the day of calibration
(``recalibrate=True`` measures again).
"""

from __future__ import annotations

import hashlib
import json
import time

from ..cache import cache_dir, write_atomically
from ._meter import measure_onnx
from ._types import LatencyStats, Reference, Target, cpu_model, package_version, pooled

CALIBRATION_MEASUREMENTS = 5


def machine_reference(onnx_bytes: bytes, shape: tuple[int, ...], target: Target,
                      recalibrate: bool = False) -> tuple[Reference, dict]:
    """The reference network ``onnx_bytes`` with its calibrated latency on this machine,
    and the calibration record (``median_ms``, ``noise``, ``measurements``, ``calibrated_at``
    as a Unix time, ``cpu_model``). Local ONNX Runtime targets only."""
    path = cache_dir("latency") / f"reference-{_key(onnx_bytes, shape, target)}.json"
    record = None if recalibrate else _read(path)
    if record is None:
        stats = pooled([measure_onnx(onnx_bytes, shape, target) for _ in range(CALIBRATION_MEASUREMENTS)])
        record = _record(stats)
        write_atomically(path, lambda partial: partial.write_text(json.dumps(record)))
    return Reference(onnx_bytes, record["median_ms"]), record


def _key(onnx_bytes: bytes, shape: tuple[int, ...], target: Target) -> str:
    """Everything the reference's latency depends on, hashed."""
    what = [cpu_model(), target.threads, target.runtime, target.batch, list(shape), package_version("onnxruntime"),
            hashlib.sha256(onnx_bytes).hexdigest()]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]


def _record(stats: LatencyStats) -> dict:
    return {"median_ms": stats.median_ms, "noise": stats.noise, "measurements": stats.measurements,
            "calibrated_at": time.time(), "cpu_model": stats.cpu_model, "clock": stats.clock}


def _read(path) -> dict | None:
    """The cached record, or None when missing or unreadable (it is then measured again)."""
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record.get("median_ms"), (int, float)) and record["median_ms"] > 0 else None
    except (OSError, ValueError, AttributeError):
        return None
