"""CPU latency of a model, measured the way it is deployed.

:func:`measure` turns a PyTorch model into what the chosen runtime executes (ONNX for
ONNX Runtime, a ``torch.export`` program for eager PyTorch) and hands it to the
:class:`Meter` of its :class:`Target`: :class:`LocalMeter` times it in a fresh worker
process on this machine (:mod:`._worker`), the remote meter sends it to an
``autosculpt agent`` (:mod:`autosculpt.search.servers.agent`). :class:`Meter` states the
contract both keep: which clock, what isolation, which errors.

The figure is the median of the runs in the undisturbed half of the rounds (those with
the lowest medians), so a burst of other load shorter than half the window does not move
it. At one thread a run is timed in the CPU time of the thread that computes it
(``thread_time_ns``): the same figure on an idle machine, but one that other processes
on a busy measuring machine do not inflate. :attr:`LatencyStats.clock` names the clock
of every figure.

What other processes still change (shared caches, memory bandwidth, the host's other
tenants) drifts over seconds and minutes. A :class:`Reference` network of about the same
cost, timed in the same rounds (interleaved), cancels it: the figure is then the ratio
of the two medians times the reference's own calibrated latency. On a 2-core AMD EPYC
with transient load, round medians of a 2.4 ms network moved 34 % while its ratio to a
1 ms network moved 7 % (bench/latency.py).

Importing this package imports neither torch nor onnxruntime.
"""

from ._calibration import machine_reference
from ._meter import LocalMeter, Meter, measure, measure_onnx, meter_for
from ._remote import agent_info
from ._types import (MAX_MEASUREMENTS, TOKEN_ENV, LatencyStats, MeasurementError, Reference, Target, TargetUnavailable,
                     batched, clear_of, cpu_model, has_vnni, package_version, pooled, target_vnni)

__all__ = [
    "MAX_MEASUREMENTS", "TOKEN_ENV", "LatencyStats", "LocalMeter", "MeasurementError", "Meter", "Reference", "Target",
    "TargetUnavailable", "agent_info", "batched", "clear_of", "cpu_model", "has_vnni", "machine_reference", "measure", "measure_onnx", "meter_for",
    "package_version", "pooled", "target_vnni",
]
