"""Shapes that project onto a network an earlier trial fine-tuned take its outcome, free; so are
shapes that could not reach the budget (nothing fine-tuned)."""

from __future__ import annotations

import optuna
import pytest
from conftest import FLOW, run_cli
from optuna.trial import TrialState, create_trial

from autosculpt.search.study.progress import LiveView
from autosculpt.search.study.quota import TrialQuota, is_repeat
from autosculpt.search.study.settings import with_preset
from autosculpt.search.study.trial import network_key, repeat

CHANNELS = {"enc1": 8, "dec1": 4}
RECIPE = {"method": "prune", "importance": "l1"}


def fine_tuned(value=0.9, state=TrialState.COMPLETE, **attrs) -> optuna.trial.FrozenTrial:
    """A finished trial that fine-tuned the network of CHANNELS."""
    user_attrs = {"finetuned": True, "channels": CHANNELS, "recipe": RECIPE, "precision": "fp32",
                  "dice": value, "weights_artifact": "w0", **attrs}
    if state == TrialState.PRUNED:
        return create_trial(state=state, user_attrs=user_attrs, intermediate_values={3: 0.4, 5: value})
    return create_trial(value=value, user_attrs=user_attrs)


def quota_of(trials: list, limit: int) -> TrialQuota:
    study = optuna.create_study(direction="maximize")
    for trial in trials:
        study.add_trial(trial)
    settings, _ = with_preset("smoke", {"budget_ms": 50.0, "trials": limit})
    return TrialQuota(study, settings)


def test_repeats_are_free_up_to_as_many_as_the_study_has_trials():
    repeated = [fine_tuned()]
    repeats = [create_trial(value=0.9, user_attrs={"repeat_of": 0}) for _ in range(4)]
    assert quota_of(repeated + repeats[:2], limit=3).counted() == 1
    assert quota_of(repeated + repeats[:3], limit=3).counted() == 1
    assert quota_of(repeated + repeats, limit=3).counted() == 2  # the fourth repeat counts: the study still ends
    assert not quota_of(repeated + repeats[:2], limit=3).done()


def test_shapes_that_could_not_reach_the_budget_are_free_too():
    """Past the width floor a third of the depth space keeps every level: those shapes are
    measured and scored, never fine-tuned, and must not use up the study's fine-tunes."""
    unreachable = [create_trial(value=0.3, user_attrs={"finetuned": False, "feasible": False}) for _ in range(3)]
    assert quota_of([fine_tuned(), *unreachable[:2]], limit=2).counted() == 1
    assert quota_of([fine_tuned(), *unreachable], limit=2).counted() == 2  # beyond the limit they count: it ends
    assert quota_of([fine_tuned(), fine_tuned()], limit=2).done()


def test_a_repeat_does_not_take_a_later_trials_place():
    quota = quota_of([fine_tuned(), create_trial(value=0.9, user_attrs={"repeat_of": 0})], limit=2)
    trial = quota.study.ask()
    quota.claim(trial)  # trial 2 runs: only one trial counts before it
    assert "surplus" not in trial.user_attrs


def test_a_repeat_takes_the_value_and_weights_of_the_trial_that_fine_tuned_its_network():
    study = optuna.create_study(direction="maximize")
    study.add_trial(fine_tuned(0.87))
    earlier = study.trials[0]
    trial = study.ask()
    assert repeat(trial, earlier, report=True) == 0.87
    assert trial.user_attrs["repeat_of"] == 0 and trial.user_attrs["weights_artifact"] == "w0"
    assert trial.user_attrs["dice"] == 0.87


def test_a_repeat_of_a_trial_stopped_early_is_stopped_with_its_last_dice():
    study = optuna.create_study(direction="maximize")
    study.add_trial(fine_tuned(0.5, state=TrialState.PRUNED))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="repeats the network of trial 0"):
        repeat(trial, study.trials[0], report=True)
    study.tell(trial, state=TrialState.PRUNED)
    assert study.trials[1].intermediate_values == {5: 0.5}  # what TPE ranks a pruned trial by


def test_the_live_view_counts_repeats_apart_and_free():
    study = quota_of([fine_tuned(latency_ms=1.0), create_trial(value=0.9, user_attrs={"repeat_of": 0, "finetuned": False})],
                     limit=3).study
    panel = LiveView(study, 2.0, limit=3, quiet=True)._render()
    trials = next(cell for cell in panel.columns[1].cells if "fine-tuned" in str(cell))
    assert trials.startswith("1/3: 1 fine-tuned (1 within budget), 0 too slow to fine-tune, 0 stopped early, "
                             "1 repeated a fine-tuned network")


def test_the_network_key_tells_precision_and_importance_apart():
    base = {"channels": CHANNELS, "recipe": RECIPE, "precision": "fp32"}
    assert network_key(base) == network_key({**base, "channels": dict(reversed(CHANNELS.items()))})
    assert network_key(base) != network_key({**base, "precision": "int8"})
    assert network_key(base) != network_key({**base, "recipe": {**RECIPE, "importance": "bn"}})
    assert network_key(base) != network_key({**base, "channels": {**CHANNELS, "dec1": 8}})


def test_a_search_whose_every_shape_is_one_network_fine_tunes_it_once_and_ends(tmp_path):
    """The uniform space has one shape: every trial projects onto the same network."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    done = run_cli("search", "--preset", "smoke", "--budget-ms", "50", "--space", "uniform", "--trials", "2",
                   "--polish-epochs", "0", "--study", "one", "--storage", url, "--out", str(tmp_path / "best"))
    assert done.returncode in FLOW, done.stderr[-3000:]
    trials = optuna.load_study(study_name="one", storage=url).trials
    first, *rest = trials
    assert first.user_attrs["finetuned"] is True and not is_repeat(first)
    assert len(rest) == 3, "two repeats are free (as many as the study's trials), the third counts"
    for trial in rest:
        assert trial.state == TrialState.COMPLETE and trial.user_attrs["repeat_of"] == 0
        assert trial.value == first.value and trial.user_attrs["finetuned"] is False
        assert "time_finetune_s" not in trial.user_attrs
    report = (tmp_path / "best" / "report.html").read_text()
    assert "repeats the network of trial 0: took its Dice without fine-tuning" in report
