"""Failures of one candidate fail its trial, not the worker; options that cannot work are refused up front."""

from __future__ import annotations

import dataclasses

import optuna
import torch
from conftest import FLOW, run_cli

from autosculpt.search.study.runner import MAX_FAILURES_IN_A_ROW, run_worker
from autosculpt.search.study.settings import with_preset
from autosculpt.search.study.study import create_study, prepare


def test_a_diverging_fine_tune_fails_its_trial_and_the_worker_goes_on(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    settings, _ = with_preset("smoke", {"budget_ms": 50.0, "trials": 5, "epochs": 1})
    context = prepare(settings)
    study, context = create_study("nan", url, settings, context)
    poisoned = dataclasses.replace(context.data.train, images=torch.full_like(context.data.train.images, float("nan")))
    context = dataclasses.replace(context, data=dataclasses.replace(context.data, train=poisoned))
    run_worker(study, context, url, quiet=True)
    trials = optuna.load_study(study_name="nan", storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * MAX_FAILURES_IN_A_ROW
    assert all(t.user_attrs["fail_reason"].startswith("FloatingPointError: training diverged") for t in trials)
    assert f"{MAX_FAILURES_IN_A_ROW} trials failed in a row" in capsys.readouterr().err


NO_BATCHNORM = '''
import torch
from torch import nn


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(self.body(x))
'''


def test_bn_importance_on_a_model_without_batchnorm_is_refused_before_the_baseline_trains(tmp_path, session_cache):
    (tmp_path / "plain.py").write_text(NO_BATCHNORM)
    (tmp_path / "bn.toml").write_text('importance = "bn"\n')
    cached = set(session_cache.rglob("*.pt"))
    done = run_cli("search", "--preset", "smoke", "--budget-ms", "50", "--model", f"{tmp_path / 'plain.py'}:Plain",
                   "--space", str(tmp_path / "bn.toml"), "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert done.returncode == 2 and "importance 'bn' needs BatchNorm layers, and this model has none" in done.stderr
    assert "Traceback" not in done.stderr
    assert set(session_cache.rglob("*.pt")) == cached, "no baseline was trained"


def test_taylor_importance_works_in_a_search(tmp_path):
    (tmp_path / "taylor.toml").write_text('importance = "taylor"\n')
    url = f"sqlite:///{tmp_path / 's.db'}"
    done = run_cli("search", "--preset", "smoke", "--budget-ms", "50", "--trials", "1", "--polish-epochs", "0",
                   "--space", str(tmp_path / "taylor.toml"), "--study", "t", "--storage", url, "--out", str(tmp_path / "t"))
    assert done.returncode in FLOW, done.stderr
    trial = optuna.load_study(study_name="t", storage=url).trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.user_attrs["recipe"]["importance"] == "taylor"


def test_a_model_file_that_changed_since_the_study_was_created_is_refused(tmp_path):
    model = tmp_path / "plain.py"
    model.write_text(NO_BATCHNORM)
    url = f"sqlite:///{tmp_path / 's.db'}"
    done = run_cli("search", "--preset", "smoke", "--budget-ms", "50", "--trials", "1", "--polish-epochs", "0",
                   "--model", f"{model}:Plain", "--study", "m", "--storage", url, "--out", str(tmp_path / "m"))
    assert done.returncode in FLOW, done.stderr
    study = optuna.load_study(study_name="m", storage=url)
    assert study.user_attrs["settings"]["model_sha256"]
    stored = len(study.trials)
    model.write_text(NO_BATCHNORM + "\nimport os  # whoever can write the storage or this file decides what runs\n")
    done = run_cli("resume", "m", "--storage", url, "--trials", "1")
    assert done.returncode == 2 and f"the model file of {model}:Plain differs" in done.stderr
    assert len(optuna.load_study(study_name="m", storage=url).trials) == stored  # nothing ran
