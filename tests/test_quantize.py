"""INT8 export: ``autosculpt export --precision int8`` on a smoke study, the quantizer's rules, and bench/int8.py --quick."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import FLOW, run_cli
from onnx import numpy_helper

from autosculpt.search.data import load_data
from autosculpt.search.latency import cpu_model, has_vnni
from autosculpt.search.onnx_io import to_onnx
from autosculpt.search.quantize import INT8_FILE, MIN_INT8_CHANNELS, calibration_slices, quantize_int8
from autosculpt.space import UNet, preset_config


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A one-trial smoke study exported twice: by the search itself (fp32, the default) and
    with ``export --precision int8``."""
    tmp = tmp_path_factory.mktemp("int8")
    url = f"sqlite:///{tmp / 'studies.db'}"
    done = run_cli("search", "--preset", "smoke", "--budget-ms", "50", "--trials", "1", "--polish-epochs", "0",
                   "--study", "q", "--storage", url, "--out", str(tmp / "fp32"))
    assert done.returncode in FLOW, done.stderr
    int8 = run_cli("export", "q", "--storage", url, "--out", str(tmp / "int8"), "--precision", "int8")
    assert int8.returncode in FLOW, int8.stderr
    return {"url": url, "fp32": tmp / "fp32", "int8": tmp / "int8", "stdout": int8.stdout}


def _graph(path) -> onnx.GraphProto:
    return onnx.load(path).graph


def _weight_source(graph: onnx.GraphProto, node: onnx.NodeProto):
    """The initializer a node's weight comes from, and the DequantizeLinear in between (None if fp32)."""
    producers = {out: n for n in graph.node for out in n.output}
    initializers = {t.name: t for t in graph.initializer}
    name = node.input[1]
    dequantize = producers.get(name)
    if dequantize is not None and dequantize.op_type == "DequantizeLinear":
        return initializers[dequantize.input[0]], dequantize, initializers
    return initializers[name], None, initializers


def _predict(path, images: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: image[None].numpy()})[0].argmax(1) for image in images])


def _dice(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """Mean foreground Dice, pixels pooled over the split (empty against empty scores 1)."""
    scores = []
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        size = p.sum() + t.sum()
        scores.append(1.0 if size == 0 else 2 * (p & t).sum() / size)
    return float(np.mean(scores))


def test_int8_model_is_qdq_with_per_channel_conv_weights_and_fp32_conv_transpose(exports):
    graph = _graph(exports["int8"] / INT8_FILE)
    ops = [node.op_type for node in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    quantized = 0
    for node in (n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")):
        weight, dequantize, initializers = _weight_source(graph, node)
        if node.op_type == "ConvTranspose":
            assert dequantize is None and weight.data_type == onnx.TensorProto.FLOAT, node.name
        elif node.op_type == "Conv":
            out_channels, in_channels = numpy_helper.to_array(weight).shape[:2]
            if min(out_channels, in_channels) < MIN_INT8_CHANNELS:  # the first layer and the 4-class head
                assert dequantize is None, node.name
                continue
            assert weight.data_type == onnx.TensorProto.INT8, node.name
            scale = numpy_helper.to_array(initializers[dequantize.input[1]])
            assert scale.shape == (out_channels,) and len(np.unique(scale)) > 1, node.name  # one scale per output channel
            quantized += 1
    assert quantized > 0 and "ConvTranspose" in ops


def test_int8_model_card_and_predictions(exports):
    card = json.loads((exports["int8"] / "model.json").read_text())
    int8 = card["int8"]
    assert int8["precision"] == "int8" and int8["file"] == INT8_FILE and card["searched_precision"] == "fp32"
    data = load_data(None, image_size=card["input_shape"][-1], seed=0, patients=8)
    fp32_pred = _predict(exports["int8"] / "model.onnx", data.test.images)
    int8_pred = _predict(exports["int8"] / INT8_FILE, data.test.images)
    agreement = float((fp32_pred == int8_pred).mean())
    assert agreement > 0.9 and int8["agreement"] == pytest.approx(agreement, abs=1e-9)
    truth = data.test.masks.numpy()
    assert int8["dice"] == pytest.approx(_dice(int8_pred, truth, data.num_classes), abs=1e-6)
    assert int8["dice_change"] == pytest.approx(int8["dice"] - int8["fp32_dice"], abs=1e-9)
    assert int8["fp32_dice"] == pytest.approx(_dice(fp32_pred, truth, data.num_classes), abs=1e-6)
    assert int8["dice_split"] == "test" and set(int8["dice_per_class"]) == set(card["dice_per_class"])
    latency = int8["latency"]
    assert latency["median_ms"] > 0 and latency["clock"] == card["latency"]["clock"] and latency["measurements"] == 3
    assert latency["reference_ms"] == card["latency"]["reference_ms"]  # timed against the study's reference, like fp32
    assert int8["faster"] == (latency["median_ms"] < int8["fp32_latency_ms"])
    # An fp32 trial exported in INT8 deploys INT8 only where it measured faster; the verdict judges what is deployed.
    # An fp32 trial exported in INT8 deploys INT8 only where it measured faster; the card's
    # top-level figures and the verdict are the deployed file's.
    assert card["deploy"] == (INT8_FILE if int8["faster"] else "model.onnx")
    assert card["precision"] == ("int8" if int8["faster"] else "fp32")
    deployed_dice = int8["dice"] if int8["faster"] else int8["fp32_dice"]
    assert card["dice"] == card["verdict"]["dice"] == deployed_dice
    assert card["verdict"]["median_ms"] == card["latency"]["median_ms"]
    assert (card["latency"] == int8["latency"]) == int8["faster"]
    assert int8["reduce_range"] == (has_vnni() is not True) and int8["vnni"] == has_vnni()
    assert int8["kept_fp32"]["ConvTranspose"] == 4 and int8["calibration"]["split"] == "train"
    assert int8["summary"] in exports["stdout"]
    assert ("SLOWER" in int8["summary"]) != int8["faster"]


def test_fp32_default_is_unchanged(exports):
    fp32, int8 = exports["fp32"], exports["int8"]
    card = json.loads((fp32 / "model.json").read_text())
    assert not (fp32 / INT8_FILE).exists() and "int8" not in card and card["precision"] == "fp32"
    assert card["deploy"] == "model.onnx"
    assert (fp32 / "model.onnx").read_bytes() == (int8 / "model.onnx").read_bytes()


def test_unknown_precision_is_a_one_line_error(exports):
    done = run_cli("export", "q", "--storage", exports["url"], "--out", "never", "--precision", "fp16")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "fp16" in done.stderr


@pytest.mark.parametrize("reduce_range, bound", [(False, 127), (True, 64)])
def test_reduce_range_quantizes_weights_to_seven_bits(reduce_range, bound):
    torch.manual_seed(0)
    net = UNet(preset_config("unet-tiny", 1, 4)).eval()
    model = quantize_int8(to_onnx(net, (1, 1, 32, 32)), torch.randn(4, 1, 32, 32), reduce_range=reduce_range)
    weights = [numpy_helper.to_array(t) for t in onnx.load_from_string(model.onnx).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and t.dims and len(t.dims) == 4]
    assert weights and max(int(np.abs(w).max()) for w in weights) == bound
    # Widths 4, 8, ...: enc1's two convs, enc2.conv1 (4 in), dec1's two convs and the head stay fp32.
    assert model.reduce_range is reduce_range and model.kept_fp32 == {"ConvTranspose": 4, "Conv (thin)": 6}
    assert model.quantized == {"Conv": 19 - 6}


def test_vnni_is_read_from_the_cpu_flags():
    assert has_vnni("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n") is True
    assert has_vnni("flags\t\t: fpu avx2 avx_vnni\n") is True
    assert has_vnni("flags\t\t: fpu avx2 avx512f avx512vl\n") is False
    assert has_vnni("processor\t: 0\n") is None


def test_calibration_slices_spread_over_the_split():
    images = torch.arange(100.0).reshape(100, 1, 1, 1)
    assert calibration_slices(images, 5).flatten().tolist() == [0, 25, 50, 74, 99]
    assert len(calibration_slices(images[:3], 5)) == 3


def test_the_bench_variants_quantize_conv_transpose_and_thin_convs_when_asked():
    torch.manual_seed(0)
    net = UNet(preset_config("unet-tiny", 1, 4)).eval()
    model = quantize_int8(to_onnx(net, (1, 1, 32, 32)), torch.randn(4, 1, 32, 32), reduce_range=False,
                          conv_transpose=True, min_channels=1)
    assert model.quantized == {"Conv": 19, "ConvTranspose": 4} and model.kept_fp32 == {}
    graph = onnx.load_from_string(model.onnx).graph
    assert all(_weight_source(graph, node)[1] is not None for node in graph.node if node.op_type in ("Conv", "ConvTranspose"))


@pytest.mark.slow
def test_int8_bench_quick_prints_its_table(tmp_path):
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "bench" / "int8.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fp32 against INT8" in done.stdout and cpu_model() in done.stdout
    assert all(re.search(rf"│\s*{keep}\s*│", done.stdout) for keep in ("0.5", "0.25", "0.1")), done.stdout
