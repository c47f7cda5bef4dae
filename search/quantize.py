"""INT8 deployment: static quantization of an exported fp32 ONNX model with ONNX Runtime's tool.

:func:`quantize_int8` runs ``quant_pre_process`` (shape inference, basic graph
optimisation) then ``quantize_static``: QDQ format, int8 weights per output channel,
int8 activations whose ranges are calibrated (MinMax) on training slices. The result
runs in plain ONNX Runtime. What is quantized was chosen by measuring the ``unet``
preset at 96x96 (ONNX Runtime 1.32, 1 thread, a 2-core AMD EPYC with VNNI):

- *Pre-processing first.* The exporter's Identity nodes hide the convolutions' biases
  from the quantizer ("Expected bias ... to be an initializer"), which then leaves them
  unfused: without ``quant_pre_process``, keep 0.25 took 2.59 against 1.98 ms.
- *Conv only.* The CPU provider fuses ``DequantizeLinear -> Conv`` into ``QLinearConv``,
  but runs a quantized ConvTranspose as ``DequantizeLinear -> ConvTranspose`` in fp32
  with extra Q/DQ pairs: quantizing it too made the model slower (keep 1: 12.0 against
  11.3 ms; keep 0.25: 2.10 against 2.02 ms). Quantizing Relu, MaxPool and Concat as
  well (the tool's default) made it 1.5x slower (17.1 against 11.1 ms at keep 1).
- *Thin convolutions stay fp32.* A Conv with fewer than :data:`MIN_INT8_CHANNELS` input
  (per group) or output channels (the first layer, the head, the layers of a heavily
  pruned net) costs more in quantizing, layout changes and dequantizing than int8
  saves: with every Conv quantized, keep 0.1 took 1.67 ms against fp32's 0.97; with
  the thin ones in fp32, 0.85 ms.
- *reduce_range without VNNI.* x86 CPUs without VNNI multiply 8-bit values with an
  instruction whose 16-bit sums can saturate; 7-bit weights avoid it
  (``reduce_range=True``). :func:`~.latency.has_vnni` reads the CPU flags.

A whole model can still be slower in INT8 than in fp32: the export measures both and says so.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                      quantize_static)
from torch import nn

from .onnx_io import onnx_input_shape, to_onnx

INT8_FILE = "model.int8.onnx"
CALIBRATION_SLICES = 64  # training slices, evenly spaced over the split
MIN_INT8_CHANNELS = 8  # a Conv with fewer input or output channels stays fp32


@dataclass(frozen=True)
class Int8Model:
    """A quantized model and what was done to it, as the model card records it.

    ``quantized`` and ``kept_fp32`` count the Conv and ConvTranspose nodes by kind
    (``"Conv (thin)"``: fewer than ``min_channels`` channels), leaving out zero counts.
    """

    onnx: bytes
    reduce_range: bool
    calibration_slices: int
    min_channels: int
    quantized: dict[str, int]
    kept_fp32: dict[str, int]

    def to_dict(self) -> dict:
        return {"format": "QDQ", "per_channel": True, "activations": "int8", "weights": "int8",
                "reduce_range": self.reduce_range, "quantized": self.quantized, "kept_fp32": self.kept_fp32,
                "min_int8_channels": self.min_channels,
                "calibration": {"split": "train", "slices": self.calibration_slices, "method": "MinMax"}}


def reduce_range_for(vnni: bool | None) -> bool:
    """Whether to quantize weights to 7 bits for a CPU that has VNNI (``vnni``: True), lacks it
    (False) or is not known (None, :func:`~.latency.target_vnni`): yes unless it is known to have it."""
    return vnni is not True


def int8_onnx(net: nn.Module, input_shape: tuple[int, ...], images: torch.Tensor, reduce_range: bool) -> bytes:
    """The deployed INT8 ONNX model of ``net`` at ``input_shape`` (batch included): exported
    as fp32 (:func:`~.onnx_io.to_onnx`), then :func:`quantize_int8` calibrated on ``images``."""
    return quantize_int8(to_onnx(net, input_shape), images, reduce_range).onnx


def calibration_slices(images: torch.Tensor, count: int = CALIBRATION_SLICES) -> torch.Tensor:
    """``count`` slices of ``images`` evenly spaced over it (all of them when it has fewer),
    so that calibration sees every patient of the split, not the first few."""
    index = np.unique(np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int))
    return images[torch.from_numpy(index)]


def quantize_int8(onnx_bytes: bytes, images: torch.Tensor, reduce_range: bool, *,
                  conv_transpose: bool = False, min_channels: int = MIN_INT8_CHANNELS) -> Int8Model:
    """The INT8 QDQ model of the fp32 single-input ONNX model ``onnx_bytes``, its activation
    ranges calibrated on ``images`` (N, C, H, W, fed in batches of the model's fixed batch size).

    Conv nodes are quantized (weights per output channel), except those with fewer than
    ``min_channels`` input (per group) or output channels, and ConvTranspose nodes when
    ``conv_transpose``; everything else stays fp32. Input and output stay fp32 tensors with the same names. The defaults are
    the deployed choice; bench/int8.py measures the others.
    """
    with tempfile.TemporaryDirectory(prefix="autosculpt-int8-") as folder:
        fp32, prepared, int8 = (Path(folder) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        fp32.write_bytes(onnx_bytes)
        quant_pre_process(fp32, prepared, skip_symbolic_shape=True)
        model = onnx.load(prepared)
        thin = _thin_convs(model, min_channels)
        quantize_static(
            prepared, int8, _Slices(model.graph.input[0].name, images, onnx_input_shape(onnx_bytes)[0]), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "ConvTranspose"] if conv_transpose else ["Conv"], nodes_to_exclude=thin, per_channel=True, reduce_range=reduce_range,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        )
        result = int8.read_bytes()
    ops = Counter(node.op_type for node in model.graph.node)
    transposed = ops["ConvTranspose"] if conv_transpose else 0
    quantized = {"Conv": ops["Conv"] - len(thin), "ConvTranspose": transposed}
    kept = {"ConvTranspose": ops["ConvTranspose"] - transposed, "Conv (thin)": len(thin)}
    return Int8Model(result, reduce_range, len(images), min_channels, _nonzero(quantized), _nonzero(kept))


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {kind: count for kind, count in counts.items() if count}


def _thin_convs(model: onnx.ModelProto, min_channels: int) -> list[str]:
    """Names of the Conv nodes with fewer than ``min_channels`` input (per group) or output channels."""
    shapes = {tensor.name: numpy_helper.to_array(tensor).shape for tensor in model.graph.initializer}
    thin = []
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1] in shapes:
            out_channels, in_per_group = shapes[node.input[1]][:2]
            if min(out_channels, in_per_group) < min_channels:
                thin.append(node.name)
    return thin


class _Slices(CalibrationDataReader):
    """Feeds ``images`` as the model's input ``name`` in batches of ``batch`` consecutive
    slices (the last one filled up from the first slices)."""

    def __init__(self, name: str, images: torch.Tensor, batch: int):
        starts = range(0, len(images), batch)
        self._feeds = iter([{name: images[torch.arange(i, i + batch) % len(images)].numpy()} for i in starts])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)
