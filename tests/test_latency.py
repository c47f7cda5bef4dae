"""The CPU latency harness: statistics, runtimes, ONNX fidelity, and ``autosculpt latency``."""

from __future__ import annotations

import json
import time

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import run_cli

from autosculpt.errors import UserError
from autosculpt.search.cli import build_parser, main
from autosculpt.search.cli import latency as latency_cli
from autosculpt.search.latency import LatencyStats, MeasurementError, Target, measure, measure_onnx
from autosculpt.search.onnx_io import onnx_input_shape, to_onnx
from autosculpt.search.study.anchors import can_anchor, nearest_anchor
from autosculpt.space.unet import UNet, preset_config

SHAPE = (1, 1, 32, 32)
FAST = Target(min_runs=10, max_seconds=0.2, warmup=2)


def unet(preset: str) -> UNet:
    return UNet(preset_config(preset, 1, 4))


def assert_sane(stats: LatencyStats, target: Target, shape=SHAPE) -> None:
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.max_ms
    assert stats.runs >= target.min_runs
    assert stats.cv >= 0
    assert (stats.threads, stats.runtime, stats.input_shape) == (target.threads, target.runtime, shape)
    assert stats.cpu_model


@pytest.mark.parametrize("threads", [1, 2])
def test_ort_stats_are_ordered_and_honour_threads(threads):
    target = Target(threads=threads, min_runs=10, max_seconds=0.2, warmup=2)
    assert_sane(measure(unet("unet-tiny"), SHAPE, target), target)


def test_torch_runtime_measures_an_exported_program():
    model = unet("unet-tiny").train()
    target = Target(runtime="torch", min_runs=10, max_seconds=0.2, warmup=2)
    assert_sane(measure(model, SHAPE, target), target)
    assert model.training, "measuring must leave the model's mode alone"


def test_batch_sets_the_leading_dimension():
    stats = measure(unet("unet-tiny"), SHAPE, Target(batch=2, min_runs=10, max_seconds=0.2, warmup=2))
    assert stats.input_shape == (2, 1, 32, 32)


def test_deployed_onnx_matches_pytorch():
    model = unet("unet-tiny").eval()
    onnx_bytes = to_onnx(model, SHAPE)
    assert onnx_input_shape(onnx_bytes) == SHAPE
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    image = torch.randn(*SHAPE)
    with torch.no_grad():
        expected = model(image).numpy()
    (actual,) = session.run(None, {"image": image.numpy()})
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_a_bigger_model_measures_slower_side_by_side():
    shape = (1, 1, 64, 64)
    tiny = measure(unet("unet-tiny"), shape, FAST).median_ms
    small = measure(unet("unet-small"), shape, FAST).median_ms
    assert small > 3 * tiny


def test_a_broken_model_is_a_measurement_error():
    with pytest.raises(MeasurementError, match="could not be measured"):
        measure_onnx(b"not an onnx model", SHAPE, FAST)
    with pytest.raises(MeasurementError, match="invalid dimensions"):
        measure_onnx(to_onnx(unet("unet-tiny"), SHAPE), (1, 1, 64, 64), FAST)


def test_target_and_stats_round_trip_without_the_token(monkeypatch):
    monkeypatch.setenv("AUTOSCULPT_AGENT_TOKEN", "s3cret")
    target = Target(url="http://10.0.0.7:8765", threads=2, max_seconds=0.5)
    stored = json.dumps(target.to_dict())
    assert "s3cret" not in stored
    assert Target.from_dict(json.loads(stored)) == target
    stats = LatencyStats(1.0, 1.2, 0.9, 2.0, 30, 0.1, 1, "ort", "cpu", SHAPE)
    assert LatencyStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


@pytest.mark.parametrize("bad", [{"runtime": "tvm"}, {"threads": 0}, {"url": "10.0.0.7:8765"},
                                 {"url": "http://h:1", "runtime": "torch"}])
def test_bad_targets_are_user_errors(bad):
    with pytest.raises(UserError):
        Target(**bad)


def test_cli_latency_json_of_a_pruned_preset():
    done = run_cli("latency", "--model", "unet-tiny", "--keep", "0.5", "--size", "32", "--format", "json")
    assert done.returncode == 0, done.stderr
    stats = LatencyStats.from_dict(json.loads(done.stdout))
    assert stats.input_shape == SHAPE and stats.runtime == "ort" and stats.threads == 1
    assert stats.measurements == latency_cli.MEASUREMENTS == 3  # pooled: one slow window does not move the figure


def test_cli_keep_prunes_as_the_search_rounds():
    """Odd channel counts (13, 51) ran 1.3x slower than the same keep rounded to 4, and less steadily."""
    model, shape = latency_cli._preset(_latency_args("--keep", "0.2"))
    kept = [m.out_channels for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert shape == (1, 1, 96, 96) and all(c % 4 == 0 for c in kept) and max(kept) < 512


def _latency_args(*argv: str):
    return build_parser().parse_args(["latency", *argv])


def test_cli_latency_times_against_the_machine_reference_calibrated_once():
    argv = ("latency", "--model", "unet-tiny", "--size", "32", "--format", "json")
    started = time.time()
    first = json.loads(run_cli(*argv, "--recalibrate").stdout)  # measured now, whatever earlier tests cached
    second = json.loads(run_cli(*argv).stdout)
    assert first["reference"]["calibrated_at"] > started
    assert first["reference"]["measurements"] == 5 and first["reference"]["network"] == "unet keep 0.25"
    assert second["reference"]["calibrated_at"] == first["reference"]["calibrated_at"]  # cached, not measured again
    assert second["reference_ms"] == first["reference"]["median_ms"] and second["clock"] == "thread-cpu"


def test_the_command_times_a_model_against_the_anchor_nearest_its_latency():
    shape = (1, 1, 32, 32)
    dense, tiny = to_onnx(unet("unet"), shape), to_onnx(unet("unet-tiny"), shape)
    assert nearest_anchor(dense, shape, Target())[1]["network"] == "unet keep 1"
    assert nearest_anchor(tiny, shape, Target())[1]["network"] == "unet keep 0.25"
    assert [can_anchor(s, Target()) for s in (shape, (1, 1, 40, 40), (1, 1, 8, 32, 32))] == [True, False, False]
    assert not can_anchor(shape, Target(runtime="torch")) and not can_anchor(shape, Target(url="http://agent:8765"))


def test_cli_latency_of_an_exported_folder(tmp_path):
    (tmp_path / "model.onnx").write_bytes(to_onnx(unet("unet-tiny"), (1, 1, 32, 32)))  # 32 px: anchors cached above
    done = run_cli("latency", "--model", str(tmp_path), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["input_shape"] == [1, 1, 32, 32]


def test_cli_latency_of_an_exported_folder_times_the_file_its_card_deploys(tmp_path):
    (tmp_path / "model.onnx").write_bytes(to_onnx(unet("unet-tiny"), (1, 1, 48, 48)))
    (tmp_path / "small.onnx").write_bytes(to_onnx(unet("unet-tiny"), (1, 1, 32, 32)))
    (tmp_path / "model.json").write_text(json.dumps({"deploy": "small.onnx"}))
    done = run_cli("latency", "--model", str(tmp_path), "--format", "json", "--alone")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["input_shape"] == [1, 1, 32, 32]


def test_cli_latency_of_a_preset_with_several_input_channels():
    done = run_cli("latency", "--model", "unet-tiny", "--channels", "3", "--size", "32", "--format", "json", "--alone")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["input_shape"] == [1, 3, 32, 32]
    assert figures["reference"] is None and figures["reference_ms"] is None  # --alone: no anchor


@pytest.mark.parametrize("argv", [["--size", "50"], ["--model", "resnet"], ["--keep", "1.5"], ["--channels", "0"],
                                  ["--target", "http://127.0.0.1:9", "--runtime", "torch"]])
def test_cli_latency_bad_input_is_one_line(argv, capsys):
    assert main(["latency", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("command", ["latency", "agent"])
def test_cli_help_shows_examples(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0 and "examples:" in capsys.readouterr().out
