"""Precision as a search dimension (``search --precision fp32,int8``): INT8 candidates are
measured, projected and scored as the deployed INT8 model, and exported and predicted as such."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from conftest import FLOW, run_cli
from PIL import Image

from autosculpt.errors import UserError
from autosculpt.search.deploy.export import trial_network
from autosculpt.search.latency import target_vnni
from autosculpt.search.onnx_io import ort_labels
from autosculpt.search.quantize import INT8_FILE, calibration_slices, int8_onnx, reduce_range_for
from autosculpt.search.study.settings import Settings
from autosculpt.search.study.storage import open_storage
from autosculpt.search.study.study import prepare, study_baseline
from autosculpt.search.training.train import split_scores


@pytest.fixture(scope="module")
def int8_study(tmp_path_factory):
    """A one-trial smoke study searched in INT8 only, exported by the search itself."""
    tmp = tmp_path_factory.mktemp("int8-search")
    url = f"sqlite:///{tmp / 'studies.db'}"
    done = run_cli("search", "--preset", "smoke", "--budget-ms", "50", "--trials", "1", "--polish-epochs", "0",
                   "--precision", "int8", "--study", "i8", "--storage", url, "--out", str(tmp / "out"))
    assert done.returncode in FLOW, done.stderr
    return {"url": url, "out": tmp / "out", "tmp": tmp, "stdout": done.stdout + done.stderr}


def test_int8_trials_are_measured_and_scored_as_int8(int8_study):
    url = int8_study["url"]
    study = optuna.load_study(study_name="i8", storage=open_storage(url))
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert trials and all(t.user_attrs["precision"] == "int8" for t in trials)
    cached = [entry for key, entry in study.user_attrs.items() if key.startswith("latency:")]
    assert any(entry["precision"] == "int8" for entry in cached)  # the candidates, beside the fp32 baseline and reference
    settings = Settings.from_dict(study.user_attrs["settings"])
    context = prepare(settings, study_baseline(study, url))
    tuned = [t for t in trials if t.user_attrs["finetuned"]]
    assert tuned
    trial = tuned[0]
    # The trial's value is the quantized network's validation Dice, not the fp32 one's.
    net = trial_network(trial, context, url)
    deployed = int8_onnx(net, tuple(context.example.shape), calibration_slices(context.data.train.images),
                         reduce_range_for(target_vnni(context.target)))
    val = context.data.val
    expected = split_scores(ort_labels(deployed, val.images), val, context.data.class_names).mean
    assert trial.value == pytest.approx(expected, abs=1e-6) == trial.user_attrs["dice"]
    assert "dice_fp32" in trial.user_attrs and trial.user_attrs["time_eval_s"] > 0


def test_the_search_exports_and_judges_the_int8_model(int8_study):
    out = int8_study["out"]
    card = json.loads((out / "model.json").read_text())
    assert card["precision"] == "int8" == card["searched_precision"] and card["deploy"] == INT8_FILE
    assert (out / INT8_FILE).is_file() and (out / "model.onnx").is_file()
    assert card["verdict"]["median_ms"] == card["int8"]["latency"]["median_ms"]
    assert card["verdict"]["dice"] == card["int8"]["dice"]
    assert f"deploy {INT8_FILE}" in " ".join(int8_study["stdout"].split())  # rich wraps long lines


def test_predict_runs_the_deployed_int8_model(int8_study, tmp_path):
    out, card = int8_study["out"], json.loads((int8_study["out"] / "model.json").read_text())
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(tmp_path / "slice.png")
    done = run_cli("predict", "--model", str(out), str(tmp_path / "slice.png"), "--out", str(tmp_path / "masks"))
    assert done.returncode == 0, done.stderr
    assert INT8_FILE in done.stdout + done.stderr
    mask = np.asarray(Image.open(tmp_path / "masks" / "slice_mask.png"))
    assert mask.shape == (40, 48) and mask.max() < len(card["class_names"])


@pytest.mark.parametrize("values, message", [
    ({"precisions": ["fp16"]}, "fp16"),
    ({"precisions": []}, "--precision"),
    ({"precisions": ["int8"], "target": {"runtime": "torch"}}, "ONNX Runtime"),
])
def test_bad_precisions_are_refused_before_anything_runs(values, message):
    with pytest.raises(UserError, match=message):
        Settings(budget_ms=5, **values)


def test_precision_on_the_command_line_is_a_one_line_error(tmp_path):
    done = run_cli("search", "--preset", "smoke", "--budget-ms", "5", "--precision", "fp32,fp16",
                   "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "fp16" in done.stderr
