"""The finalists' polish: which trial is the answer, and how well the trials ranked the polished networks."""

from __future__ import annotations

import copy

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution

from autosculpt.search.cli.search import describe
from autosculpt.search.study.best import UNSETTLED_FINALISTS, answer, finalist_count, finalists
from autosculpt.search.study.polish import polish_epochs, polish_network, rank_correlation
from autosculpt.search.study.settings import POLISH_ATTR, SETTINGS_ATTR, Settings, with_preset
from autosculpt.search.study.study import prepare
from autosculpt.search.training.train import evaluate


def test_rank_correlation_is_spearman_or_none_where_it_means_nothing():
    assert rank_correlation([0.5, 0.6, 0.7], [0.1, 0.9, 0.95]) == pytest.approx(1.0)
    assert rank_correlation([0.5, 0.6, 0.7, 0.8], [0.9, 0.8, 0.95, 0.7]) == pytest.approx(-0.4)
    assert rank_correlation([0.5, 0.6], [0.6, 0.5]) is None  # two finalists: no ranking to judge
    assert rank_correlation([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]) is None


def study_of(scores: dict[int, tuple[float, float]], budget_ms: float = 2.0) -> optuna.Study:
    """A study of complete fine-tuned trials: number -> (val Dice, latency ms)."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(SETTINGS_ATTR, Settings(budget_ms=budget_ms).to_dict())
    for number in sorted(scores):
        dice, latency = scores[number]
        study.add_trial(optuna.trial.create_trial(value=dice, params={"keep": 0.5}, distributions={"keep": FloatDistribution(0, 1)},
                                                  user_attrs={"latency_ms": latency, "finetuned": True}))
    return study


def test_the_answer_is_the_polish_winner_while_it_is_within_the_budget():
    study = study_of({0: (0.90, 1.9), 1: (0.95, 1.5), 2: (0.80, 1.0), 3: (0.99, 3.0)})
    assert [t.number for t in finalists(study, 2)] == [1, 0]  # best first, trial 3 is over the budget
    assert answer(study).number == 1  # no polish yet: the best trial
    study.set_user_attr(POLISH_ATTR, {"trial": 0, "dice_after": 0.97})
    assert answer(study).number == 0
    assert answer(study, budget_ms=1.6).number == 1  # the winner is over a tighter budget: the best within it


def test_more_finalists_are_polished_when_the_trials_have_not_settled_unless_the_user_says():
    study = study_of({0: (0.90, 1.9), 1: (0.95, 1.5), 2: (0.99, 3.0)})
    study.set_user_attr("baseline", {"dice": 0.96})
    assert finalist_count(study, Settings(budget_ms=2.0)) == 1  # the best within budget is 1 % below the baseline
    study.set_user_attr("baseline", {"dice": 1.01})
    assert finalist_count(study, Settings(budget_ms=2.0)) == UNSETTLED_FINALISTS  # 5.9 % below: not settled
    assert finalist_count(study, Settings(budget_ms=2.0, finalists=2)) == 2
    assert finalist_count(study_of({0: (0.5, 3.0)}), Settings(budget_ms=2.0)) == 1  # nothing within budget, no baseline
    assert describe(Settings(budget_ms=2.0), "finalists").startswith("finalists=auto (1; 5 when")  # the defaults line


def test_tiny_networks_polish_longer_unless_the_user_says():
    settings, _ = with_preset("default", {"speedup": 30})  # epochs 8: a polish of 16
    assert [polish_epochs(settings, ratio) for ratio in (1, 41, 100, 1000, 3607, 1e6)] == [16, 16, 16, 32, 41, 48]
    given, _ = with_preset("default", {"speedup": 30, "polish_epochs": 5})
    assert polish_epochs(given, 3607) == 5


def test_a_polish_tries_each_variant_and_keeps_the_best_weights_its_own_included():
    """A distilling study polishes twice (plain, distilled, with the study's teacher); the
    network keeps the best of those and its own weights, and the record says which."""
    settings, _ = with_preset("smoke", {"budget_ms": 50.0, "distill": 0.5})
    context = prepare(settings)
    net = copy.deepcopy(context.baseline.model)
    own = {k: v.clone() for k, v in net.state_dict().items()}
    polished = polish_network(net, context, epochs=1, seed=0)
    assert set(polished.variants) == {"plain", "distilled"}
    assert polished.dice_after == max(polished.dice_before, *polished.variants.values())
    assert polished.kept == ("trial" if polished.dice_after == polished.dice_before else
                             max(polished.variants, key=polished.variants.get))
    kept_own = all(torch.equal(v, own[k]) for k, v in net.state_dict().items())
    assert kept_own == (polished.kept == "trial")
    assert evaluate(net, context.data.val, context.data.class_names).mean == pytest.approx(polished.dice_after)
