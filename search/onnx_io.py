"""ONNX in and out: the one way autosculpt turns a PyTorch model into a deployable ONNX file.

The exporter is PyTorch's TorchScript-based one (``dynamo=False``): for our U-Nets it
writes the same graph as the ``torch.export``-based exporter (outputs equal to 1e-7) in
0.04-0.4 s instead of 1.1-2.6 s, which matters because every latency measurement
exports. If it cannot trace a model, the ``torch.export``-based exporter is used.
Tracing runs the model once, on one thread: on a busy machine a thread pool made that
forward pass 3-10x slower.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OPSET = 20


def to_onnx(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """A single-file ONNX model of ``model`` for a fixed ``input_shape`` (batch included).

    The graph has one float32 input named ``image`` and one output named ``logits``;
    it is exported in eval mode and all weights are inside the returned bytes. The model's
    mode and torch's thread count are restored afterwards.
    """
    example = torch.randn(*input_shape)
    was_training, threads = model.training, torch.get_num_threads()
    model.eval()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            try:
                return _export_traced(model, example)
            except Exception:  # noqa: BLE001 - tracing failed; the dynamo exporter may still cope
                return _export_dynamo(model, example)
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)


def _export_traced(model: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (example,), buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        opset_version=OPSET, dynamo=False, external_data=False,
    )
    return buffer.getvalue()


def _export_dynamo(model: nn.Module, example: torch.Tensor) -> bytes:
    program = torch.onnx.export(
        model, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        opset_version=OPSET, dynamo=True, external_data=False, verbose=False,
    )
    return program.model_proto.SerializeToString()


def onnx_input_shape(onnx_bytes: bytes) -> tuple[int, ...]:
    """The fixed shape of the single input of an ONNX model.

    Raises ValueError when the model has several inputs or a symbolic dimension.
    """
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"the ONNX model has {len(inputs)} inputs; autosculpt measures models with one input")
    dims = inputs[0].type.tensor_type.shape.dim
    if any(not dim.HasField("dim_value") for dim in dims):
        raise ValueError("the ONNX model's input shape is not fixed; export it with a fixed shape")
    return tuple(int(dim.dim_value) for dim in dims)


def ort_labels(session, images: torch.Tensor) -> torch.Tensor:
    """Label maps (N, H, W) of ``images`` (N, C, H, W) from an ONNX Runtime session (or the
    bytes of a model, run on the CPU), one image at a time (exported models have batch 1)."""
    import numpy as np
    import onnxruntime

    if isinstance(session, bytes):
        session = onnxruntime.InferenceSession(session, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(np.concatenate([session.run(None, {name: image[None].numpy()})[0].argmax(1) for image in images]))
