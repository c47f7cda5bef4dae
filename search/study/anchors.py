"""This machine's anchor networks: one latency scale for every figure taken on it.

An anchor is ``unet`` kept uniformly at one of ANCHOR_KEEPS (about 3 and 32 ms at 96 px on
a 2.5 GHz core, 1 thread), with fixed weights, calibrated once per machine (five
measurements alone, cached per CPU, threads, ONNX Runtime version and input shape: see
:func:`~autosculpt.search.latency.machine_reference`). A model timed in the same rounds as
the anchor nearest it in latency gets that ratio times the anchor's calibrated latency.

``autosculpt latency`` times models this way, and a study calibrates its baseline (and so
a ``--speedup`` budget) and its own reference network this way. A figure timed alone
depends on the state the machine was in during those seconds: on a noisy 2-core EPYC, two
studies created minutes apart calibrated the same reference at 1.59 and 1.98 ms, and every
figure of the second came out 25 % high. Against an anchor, every study on a machine
shares the anchor's scale, and so does the command.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache

import torch

from ...space import Recipe, UNet, apply_recipe, preset_config
from ..latency import Reference, Target, machine_reference, measure_onnx
from ..onnx_io import to_onnx

ANCHOR_KEEPS = (0.25, 1.0)
ANCHOR_CLASSES = 4


def can_anchor(shape: tuple[int, ...], target: Target) -> bool:
    """Whether figures at ``shape`` on ``target`` can be timed against an anchor: ONNX Runtime
    on this machine's CPU, and an image shape the U-Net takes (N, C, H, W with H, W multiples of 16)."""
    local_ort = target.url is None and target.runtime == "ort" and target.device == "cpu"
    return local_ort and len(shape) == 4 and shape[2] % 16 == 0 and shape[3] % 16 == 0


@lru_cache(maxsize=8)
def anchor_onnx(keep: float, shape: tuple[int, ...], classes: int = ANCHOR_CLASSES) -> bytes:
    """The anchor ``unet`` kept at ``keep`` for inputs of ``shape``: the same bits in every run
    (its calibration is cached by digest), built once per process (a study asks twice)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = UNet(preset_config("unet", shape[1], classes)).eval()
    if keep < 1:
        net = apply_recipe(net, Recipe.uniform(keep), torch.zeros(*shape))
    return to_onnx(net, shape)


def nearest_anchor(model_onnx: bytes, shape: tuple[int, ...], target: Target, recalibrate: bool = False,
                   classes: int = ANCHOR_CLASSES) -> tuple[Reference, dict]:
    """The calibrated anchor nearest ``model_onnx`` in latency (by ratio, after a short look at
    the model), and its calibration record with ``network`` naming it. Needs :func:`can_anchor`.

    Every anchor is calibrated first (once per machine; ``recalibrate`` measures them again).
    """
    anchors = {keep: machine_reference(anchor_onnx(keep, shape, classes), shape, target, recalibrate)
               for keep in ANCHOR_KEEPS}
    glance = replace(target, min_runs=3, min_seconds=0.0, max_seconds=0.3, rounds=1, warmup=1)
    model_ms = measure_onnx(model_onnx, shape, glance).median_ms
    keep = min(anchors, key=lambda k: abs(math.log(anchors[k][0].median_ms / model_ms)))
    reference, record = anchors[keep]
    return reference, {**record, "network": f"unet keep {keep:g}"}
