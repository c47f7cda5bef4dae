"""The search as a user runs it: the CLI in a subprocess, on the smoke preset, against real storage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import nibabel
import numpy as np
import onnxruntime
import optuna
import pytest
from conftest import FLOW, run_cli
from PIL import Image

from autosculpt.search.cli import build_parser
from autosculpt.search.cli.resume import merged_settings
from autosculpt.search.cli.search import settings_given
from autosculpt.search.data import load_data
from autosculpt.search.deploy.verdict import EXIT_VERDICT_FAILED
from autosculpt.search.latency import Target
from autosculpt.search.study.best import finalists
from autosculpt.search.study.quota import COUNTED, is_free
from autosculpt.search.study.settings import with_preset
from autosculpt.search.training.train import finetune_lr

SMOKE = ("--preset", "smoke")


def counted(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards the study's total: complete or pruned, not free (repeats,
    shapes that could not reach the budget; these tests ask for fewer trials than a study's free ones)."""
    study = optuna.load_study(study_name=name, storage=url)
    return [t for t in study.get_trials(states=COUNTED) if not is_free(t)]


def test_search_resume_export_predict(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    out = tmp_path / "best"
    done = run_cli("search", *SMOKE, "--speedup", "1", "--study", "flow", "--storage", url, "--out", str(out))
    assert done.returncode in FLOW, done.stderr
    assert "autosculpt resume flow" in done.stderr and "budget" in done.stderr.splitlines()[-1]
    first = {t.number: t.values for t in counted(url, "flow")}
    assert len(first) == 3
    assert (out / "model.onnx").exists() and (out / "report.html").exists()
    study = optuna.load_study(study_name="flow", storage=url)
    settings, baseline = study.user_attrs["settings"], study.user_attrs["baseline"]
    assert settings["speedup"] == 1 and settings["budget_ms"] == pytest.approx(baseline["latency"]["median_ms"])
    polish = study.user_attrs["polish"]
    assert polish["dice_after"] >= polish["dice_before"] and polish["epochs"] == 3
    card = json.loads((out / "model.json").read_text())
    assert card["polish"] == polish and card["latency"]["clock"] == "thread-cpu" == card["latency_clock"]
    assert (done.returncode == 0) == card["verdict"]["ok"]
    weights = {"prune": "from the baseline's pruned weights", "scale": "from fresh weights"}[card["recipe"]["method"]]
    assert weights in (out / "report.html").read_text()  # the report says how the winner got its weights
    assert settings["balance_classes"] and "weighed the cross-entropy against class imbalance" in (out / "report.html").read_text()

    done = run_cli("resume", "flow", "--storage", url, "--trials", "2", "--finalists", "2", "--out", str(out))
    assert done.returncode in FLOW, done.stderr
    after = {t.number: t.values for t in counted(url, "flow")}
    assert len(after) == 5
    assert all(after[number] == values for number, values in first.items())  # nothing lost or changed
    study = optuna.load_study(study_name="flow", storage=url)
    polished = study.user_attrs["polish"]  # the two best trials within budget polished, the best after it wins
    assert [c["trial"] for c in polished["candidates"]] == [t.number for t in finalists(study, 2)]
    assert polished["dice_after"] == max(c["dice_after"] for c in polished["candidates"])
    assert polish["candidates"][0] in polished["candidates"] or polish["trial"] not in after  # a finalist is polished once
    assert f"winner: trial {polished['trial']}" in done.stderr

    done = run_cli("resume", "flow", "--storage", url, "--polish-epochs", "1", "--finalists", "2", "--out", str(out))
    assert done.returncode in FLOW, done.stderr
    study = optuna.load_study(study_name="flow", storage=url)
    polished = study.user_attrs["polish"]
    assert [c["epochs"] for c in polished["candidates"]] == [1] * len(finalists(study, 2))  # polished again, not reused

    export = tmp_path / "export"
    done = run_cli("export", "flow", "--storage", url, "--out", str(export))
    assert done.returncode in FLOW, done.stderr
    card = json.loads((export / "model.json").read_text())
    assert card["trial"] == polished["trial"] and card["polish"] == polished  # export takes the polish's winner
    assert card["onnx_max_abs_diff"] < 1e-3
    assert (export / "model.pt2").exists()
    assert _onnx_test_dice(export / "model.onnx", card) == pytest.approx(card["dice"], abs=1e-6)
    per_volume = card["per_volume"]  # one entry per test patient, for both models, HD95 in mm
    test_patients = set(load_data(None, image_size=card["input_shape"][-1], seed=0, patients=8).test.groups)
    assert {v["volume"] for v in per_volume["volumes"]} == test_patients and per_volume["unit"] == "mm"
    assert set(per_volume["exported"]) == set(per_volume["baseline"]) == set(card["class_names"][1:])
    assert "Per patient (test volumes)" in (out / "report.html").read_text() and sorted(test_patients)[0] in (out / "report.html").read_text()

    done = run_cli("trials", "flow", "--storage", url, "--format", "json")
    rows = [row for row in json.loads(done.stdout) if row["state"] in ("COMPLETE", "PRUNED")]
    assert len([row for row in rows if row["repeat_of"] is None and row["finetuned"] is not False]) == 5  # the counted ones
    finetuned = [t for t in counted(url, "flow") if t.user_attrs.get("finetuned")]
    assert all(t.user_attrs["time_finetune_s"] > 0 for t in finetuned)  # pruned ones too: the benches count it
    assert all(t.user_attrs["lr"] == pytest.approx(finetune_lr(t.user_attrs["param_ratio"]), rel=1e-3) for t in finetuned)

    slice_png = tmp_path / "slice.png"
    Image.fromarray(np.full((50, 70), 128, dtype=np.uint8)).save(slice_png)
    done = run_cli("predict", "--model", str(export), str(slice_png), "--out", str(tmp_path / "pred"))
    assert done.returncode == 0, done.stderr
    mask = np.asarray(Image.open(tmp_path / "pred" / "slice_mask.png"))
    assert mask.shape == (50, 70) and mask.max() < len(card["class_names"])

    # The test split as one volume (slices along the third axis): the label volume scores the card's test Dice.
    data = load_data(None, image_size=card["input_shape"][-1], seed=0, patients=8)
    volume = data.test.images[:, 0].numpy().transpose(1, 2, 0)
    nibabel.save(nibabel.Nifti1Image(volume, np.diag([1.4, 1.4, 8.0, 1.0])), tmp_path / "patient.nii.gz")
    done = run_cli("predict", "--model", str(export), str(tmp_path / "patient.nii.gz"), "--out", str(tmp_path / "labels"))
    assert done.returncode == 0, done.stderr
    labels = nibabel.load(tmp_path / "labels" / "patient.nii.gz")
    assert labels.shape == volume.shape and np.allclose(labels.affine, np.diag([1.4, 1.4, 8.0, 1.0]))
    pred = np.asarray(labels.dataobj).transpose(2, 0, 1)
    assert _pooled_dice(pred, data.test.masks.numpy(), data.num_classes) == pytest.approx(card["dice"], abs=0.01)


def test_verdict_over_budget_exits_3_with_the_trade_off_and_still_writes_the_model(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    done = run_cli("search", *SMOKE, "--budget-ms", "50", "--trials", "1", "--polish-epochs", "0", "--max-dice-loss", "99",
                   "--study", "v", "--storage", url, "--out", str(tmp_path / "first"))
    assert done.returncode in FLOW, done.stderr
    out = tmp_path / "tight"
    done = run_cli("export", "v", "--storage", url, "--trial", "0", "--budget-ms", "0.001", "--out", str(out))
    assert done.returncode == EXIT_VERDICT_FAILED, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("budget NOT met (over budget):") and "No fine-tuned trial is within 0.001 ms" in line
    assert "autosculpt search --budget-ms" in line  # the trade-off the study found, as a command
    card = json.loads((out / "model.json").read_text())
    assert (out / "model.onnx").exists() and card["verdict"]["ok"] is False and card["budget_ms"] == 0.001
    assert "polish" not in optuna.load_study(study_name="v", storage=url).user_attrs  # --polish-epochs 0


def _onnx_test_dice(path, card) -> float:
    """Mean foreground Dice of the exported ONNX model on the test split, computed here independently."""
    data = load_data(None, image_size=card["input_shape"][-1], seed=0, patients=8)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    pred = np.concatenate([session.run(None, {name: image[None].numpy()})[0].argmax(1) for image in data.test.images])
    return _pooled_dice(pred, data.test.masks.numpy(), data.num_classes)


def _pooled_dice(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    dice = []
    for c in range(1, num_classes):  # foreground classes, pixels pooled over the whole split
        p, t = pred == c, truth == c
        size = p.sum() + t.sum()
        dice.append(1.0 if size == 0 else 2 * (p & t).sum() / size)
    return float(np.mean(dice))


def test_sigkill_mid_trial_then_resume(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    env = {"AUTOSCULPT_GRACE_SECONDS": "4", "AUTOSCULPT_HEARTBEAT_SECONDS": "1"}
    command = [sys.executable, "-m", "autosculpt.search.cli", "search", *SMOKE, "--budget-ms", "50",
               "--study", "killed", "--storage", url, "--epochs", "1000", "--trials", "3"]
    worker = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        running = _wait_for_finetuning(url, "killed", worker)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    time.sleep(5)  # let the heartbeat go stale
    done = run_cli("resume", "killed", "--storage", url, "--epochs", "2", "--force", env=env)
    assert done.returncode in FLOW, done.stderr
    study = optuna.load_study(study_name="killed", storage=url)
    states = {t.number: t.state for t in study.trials}
    assert states[running.number] == optuna.trial.TrialState.FAIL
    retried = [t for t in study.trials if t.number > running.number and t.params == running.params]
    assert retried and retried[0].state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert len(counted(url, "killed")) == 3


def _wait_for_finetuning(url: str, name: str, process: subprocess.Popen, limit: float = 240):
    """The first trial seen fine-tuning (it has an epoch recorded) while ``process`` runs."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert process.poll() is None, "the search ended before a trial was seen fine-tuning"
        try:
            for trial in optuna.load_study(study_name=name, storage=url).trials:
                if trial.state == optuna.trial.TrialState.RUNNING and trial.user_attrs.get("dice_by_epoch"):
                    return trial
        except KeyError:
            pass  # the study is not created yet
        time.sleep(0.5)
    raise AssertionError("no trial reached fine-tuning in time")


BAD_INPUTS = [
    (("search", "--budget-ms", "-3"), "budget"),
    (("search", "--budget-ms", "abc"), "invalid float"),
    (("search", "--speedup", "0.5"), "--speedup 0.5 must be at least 1"),
    (("search", "--budget-ms", "5", "--speedup", "3"), "give one budget"),
    (("search",), "give one budget"),
    (("resume", "no-such-study"), "no study named"),
    (("search", "--budget-ms", "5", "--preset", "nope"), "invalid choice"),
    (("search", "--budget-ms", "5", "--device", "tpu"), "invalid choice"),
    (("search", "--budget-ms", "5", "--model", "resnet9000"), "unknown model"),
    (("search", "--budget-ms", "5", "--space", "/nonexistent/space.toml"), "space"),
    (("search", "--budget-ms", "5", "--target", "http://127.0.0.1:9"), "127.0.0.1:9"),
    (("studies", "--storage", "postgresql://alice:s3cret-pw@127.0.0.1:1/db"), "cannot open storage"),
    (("studies", "--storage", "not a url://alice:s3cret-pw@"), "malformed"),
]


@pytest.mark.parametrize("args, expected", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line(tmp_path, args, expected):
    env = {"AUTOSCULPT_STORAGE": f"sqlite:///{tmp_path / 'studies.db'}", "AUTOSCULPT_AGENT_TOKEN": "t"}
    done = run_cli(*args, "--preset", "smoke", env=env) if args[0] == "search" and "--preset" not in args else run_cli(*args, env=env)
    assert done.returncode == 2
    assert expected in done.stderr
    assert "Traceback" not in done.stderr and "s3cret-pw" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) <= 2  # the error, after the line of defaults


def test_storage_is_plain_optuna(storage_url):
    """A study made by autosculpt is listed by Optuna's own CLI on every backend."""
    done = run_cli("search", *SMOKE, "--budget-ms", "50", "--trials", "1", "--study", "plain", "--storage", storage_url)
    assert done.returncode in FLOW, done.stderr
    optuna_cli = os.path.join(os.path.dirname(sys.executable), "optuna")
    listed = subprocess.run([optuna_cli, "studies", "--storage", storage_url, "-f", "json"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert [row["name"] for row in json.loads(listed.stdout)] == ["plain"]
    done = run_cli("studies", "--storage", storage_url, "--format", "json")
    assert json.loads(done.stdout)[0]["study"] == "plain"


def test_every_command_has_help_with_examples(capsys):
    from autosculpt.search.cli import COMMANDS, build_parser

    done = run_cli("--help")  # the installed entry point, once
    assert done.returncode == 0 and all(command in done.stdout for command in COMMANDS)
    for command in COMMANDS:  # each command's parser in this process: a subprocess each cost 2 s of imports
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args([command, "--help"])
        assert exited.value.code == 0, command
        assert "examples:" in capsys.readouterr().out, command


def test_ctrl_c_marks_the_trial_failed_and_prints_resume(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    command = [sys.executable, "-m", "autosculpt.search.cli", "search", *SMOKE, "--budget-ms", "50",
               "--study", "interrupted", "--storage", url, "--epochs", "1000"]  # Ctrl-C lands mid fine-tune
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        running = _wait_for_finetuning(url, "interrupted", process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "autosculpt resume interrupted" in stderr and "Traceback" not in stderr
    study = optuna.load_study(study_name="interrupted", storage=url)
    assert study.trials[running.number].state == optuna.trial.TrialState.FAIL



def test_resume_timeout_gives_more_time_after_the_limit_ran_out(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    done = run_cli("search", *SMOKE, "--budget-ms", "50", "--timeout", "1", "--polish-epochs", "0", "--study", "late",
                   "--storage", url, "--out", str(tmp_path / "late"))
    # The limit runs out during the first trial, or before it on a loaded machine (then nothing is exported: status 1).
    assert done.returncode in (*FLOW, 1) and "Traceback" not in done.stderr, done.stderr
    before = len(counted(url, "late"))
    assert before <= 1
    optuna.load_study(study_name="late", storage=url).set_user_attr("started_at", time.time() - 3600)
    done = run_cli("resume", "late", "--storage", url, "--timeout", "30", "--trials", "1", "--out", str(tmp_path / "late"))
    assert done.returncode in FLOW, done.stderr
    assert len(counted(url, "late")) == before + 1  # 30 s from now, although an hour passed since the study started


def test_target_flags_are_set_over_the_presets_measurements():
    """``--threads``/``--runtime`` change those fields only: the smoke preset keeps its short
    latency measurements, and ``resume --threads`` keeps the stored study's."""
    args = build_parser("search").parse_args(["search", "--preset", "smoke", "--budget-ms", "5", "--threads", "2"])
    settings, defaulted = with_preset("smoke", settings_given(args))
    short = Target(threads=2, min_runs=10, max_seconds=0.2, min_seconds=0.1, warmup=2)
    assert Target.from_dict(settings.target) == short and "target" not in defaulted
    args = build_parser("resume").parse_args(["resume", "s", "--runtime", "torch", "--force"])
    assert Target.from_dict(merged_settings(None, settings, args).target) == Target(**{**short.to_dict(), "runtime": "torch"})
