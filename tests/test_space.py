"""The search space: presets, Optuna sampling, the warm start's shapes, TOML files and their errors."""

from __future__ import annotations

import dataclasses
import json
import tomllib

import optuna
import pytest
import torch

from autosculpt.errors import UserError
from autosculpt.space import (Depth, LayerGroup, Recipe, SearchSpace, UNet, apply_recipe, channel_plan, depth_of, layer_groups,
                              preset_config, warm_start)
from autosculpt.space._recipe import is_ignored
from autosculpt.space._space import PRESETS_DIR
from autosculpt.space._warm import TRADE_OFF_FRACTIONS

PRESETS = ("per-layer", "per-stage", "uniform")
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def tiny() -> UNet:
    torch.manual_seed(0)
    return UNet(preset_config("unet-tiny", 1, 4)).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(1, 1, 32, 32)


@pytest.fixture(scope="module")
def groups(tiny, x):
    return layer_groups(tiny, x)


def expected_params(space: SearchSpace, groups) -> set[str]:
    names = {
        "per-layer": {f"keep.{g.name}" for g in groups},
        "per-stage": {f"keep.{g.stage}" for g in groups},
        "uniform": {"keep"},
    }[space.granularity]
    choices = {"width": space.width_choices, "method": space.methods}
    return names | {name for name, values in choices.items() if len(values) > 1}


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_sample_valid_recipes(preset, tiny, x, groups):
    space = SearchSpace.load(preset)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        recipe = space.sample(trial, groups)
        assert set(trial.params) == expected_params(space, groups)
        assert set(recipe.keep) == {g.name for g in groups}
        assert all(space.keep_low <= k <= space.keep_high for k in recipe.keep.values())
        assert (recipe.round_to, recipe.importance) == (space.round_to, space.importance)
        study.tell(trial, sum(channel_plan(groups, recipe).values()))
    if space.granularity == "per-stage":
        assert recipe.keep["enc2.conv1"] == recipe.keep["enc2.conv2"] == trial.params["keep.enc2"]
    assert apply_recipe(tiny, recipe, x)(x).shape == tiny(x).shape


@pytest.mark.parametrize("preset", PRESETS)
def test_uniform_recipes_enqueue_and_run(preset, groups):
    space = SearchSpace.load(preset)
    points = space.uniform_recipes(6, groups)
    study = optuna.create_study()
    for params in points:
        study.enqueue_trial(params)
    study.optimize(lambda t: sum(channel_plan(groups, space.sample(t, groups)).values()), n_trials=len(points))
    fractions = []
    for trial, params in zip(study.trials, points):
        assert trial.params == params
        assert all(d._contains(d.to_internal_repr(trial.params[k])) for k, d in trial.distributions.items())
        keeps = {v for k, v in params.items() if k.startswith("keep")}
        assert len(keeps) == 1  # every group at one ratio
        fractions.append(keeps.pop() * params.get("width", space.width_choices[0]))
    assert fractions == sorted(fractions, reverse=True) and len(set(fractions)) == len(fractions)
    assert fractions[0] == space.keep_high * max(space.width_choices)
    assert fractions[-1] == pytest.approx(space.keep_low * min(space.width_choices))


def test_both_methods_become_a_parameter(groups):
    space = SearchSpace(methods=("prune", "scale"), granularity="uniform", width_choices=(1.0,))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    methods = set()
    for _ in range(12):
        trial = study.ask()
        methods.add(space.sample(trial, groups).method)
        assert set(trial.params) == {"keep", "method"}
        study.tell(trial, 0.0)
    assert methods == {"prune", "scale"}
    assert all(p["method"] == "prune" for p in space.uniform_recipes(3, groups))


def test_ignored_layers_are_not_searched(tiny, x, groups):
    space = SearchSpace(ignore=("enc1", "up4"))
    trial = optuna.create_study().ask()
    recipe = space.sample(trial, groups)
    assert not any(k.startswith(("keep.enc1.", "keep.up4")) for k in trial.params)
    assert recipe.ignore == ("enc1", "up4")
    channels = {n: tiny.get_submodule(n).out_channels for n in ("enc1.conv1", "up4")}
    pruned = apply_recipe(tiny, recipe, x)
    assert {n: pruned.get_submodule(n).out_channels for n in channels} == channels
    assert space.sample(optuna.create_study().ask(), layer_groups(tiny, x, space.ignore)).ignore == ("enc1", "up4")
    with pytest.raises(UserError, match="encoder"):
        layer_groups(tiny, x, SearchSpace(ignore=("encoder",)).ignore)
    with pytest.raises(UserError, match="no layer group"):
        SearchSpace(ignore=("enc1", "enc2")).uniform_recipes(2, groups[:4])


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_round_trip(preset):
    space = SearchSpace.load(preset)
    assert space.granularity == preset
    assert space.to_dict() == tomllib.loads((PRESETS_DIR / f"{preset}.toml").read_text())  # fully specified files
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space


def test_user_toml_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('granularity = "per-stage"\nmethods = ["prune", "scale"]\nignore = ["enc1"]\n')
    path.write_text(path.read_text() + "[keep]\nlow = 0.1\nhigh = 1\nlog = true\n")
    space = SearchSpace.load(path)
    expected = SearchSpace("per-stage", ("prune", "scale"), keep_low=0.1, keep_step=None, keep_log=True)
    expected = dataclasses.replace(expected, ignore=("enc1",))
    assert space == expected
    assert SearchSpace.load(str(path)) == space and SearchSpace.from_dict(space.to_dict()) == space
    assert space.keep_step is None and "step" not in space.to_dict()["keep"]
    assert SearchSpace() == SearchSpace.load("per-layer") == SearchSpace.from_dict({})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[keep]\nlow = 0.8\nhigh = 0.2", "keep.low"),
        ("[keep]\nlow = 0.0", "keep.low"),
        ("[keep]\nhigh = 1.5", "keep.high"),
        ("[keep]\nstep = 0.05\nlog = true", "keep.log"),
        ("[keep]\nlow = 0.1\nhigh = 1.0\nstep = 0.07", "keep.step"),
        ('granularity = "per-block"', "granularity"),
        ('methods = ["grow"]', "methods"),
        ('methods = "prune"', "methods"),
        ('importance = "random"', "importance"),
        ("[width]\nchoices = [0.0, 1.0]", "width.choices"),
        ("[width]\nchoices = []", "width.choices"),
        ("[channels]\nround_to = 0", "channels.round_to"),
        ("widht = 1", "'widht'"),
        ("[keep]\nlo = 0.1", "'lo'"),
        ("granularity = ", "invalid TOML"),
    ],
)
def test_impossible_spaces_are_refused(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(UserError) as info:
        SearchSpace.load(path)
    message = str(info.value)
    assert str(path) in message and key in message and "\n" not in message


def test_unknown_spaces_are_refused(tmp_path):
    with pytest.raises(UserError, match="per-layer, per-layer-depth, per-stage, uniform"):
        SearchSpace.load("per-block")
    with pytest.raises(UserError, match="cannot read"):
        SearchSpace.load(tmp_path / "missing.toml")


def test_sampled_recipe_is_json_safe(groups):
    trial = optuna.create_study().ask()
    recipe = SearchSpace.load("per-layer").sample(trial, groups)
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


def test_warm_start_brackets_a_kept_fraction(groups):
    """With ``around``, the uniform points run from about sqrt(2) times it to 1/sqrt(2) times it."""
    space = SearchSpace.load("uniform")
    points = space.uniform_recipes(3, groups, around=0.3)
    keeps = [p["keep"] * p.get("width", 1.0) for p in points]
    assert keeps == sorted(keeps, reverse=True) and len(keeps) == 3
    assert 0.3 * 2**0.5 + 0.05 >= keeps[0] > 0.3 > keeps[-1] >= 0.3 / 2**0.5 - 0.05


EXACT = SearchSpace(granularity="per-layer", methods=("prune",), keep_low=0.01, keep_step=None, keep_log=True,
                    width_choices=(1.0,), round_to=1)


def test_capped_params_cap_every_group(groups):
    recipe = EXACT.sample(optuna.trial.FixedTrial(EXACT.capped_params(8, groups)), groups)
    assert channel_plan(groups, recipe) == {g.name: min(g.channels, 8) for g in groups}


def test_capped_params_choose_the_width_that_clips_least(groups):
    wide = [LayerGroup("a.conv", "a", 256), LayerGroup("b.conv", "b", 512)]
    space = SearchSpace(width_choices=(0.25, 1.0), keep_low=0.05, keep_step=0.05, methods=("prune",))
    assert space.capped_params(4, wide) == {"keep.a.conv": 0.05, "keep.b.conv": 0.05, "width": 0.25}  # 13 and 26 channels
    assert space.capped_params(128, wide)["width"] == 1.0  # keeps 0.5 and 0.25: width 0.25 would clip them
    with pytest.raises(UserError, match="per-layer or per-stage"):
        SearchSpace.load("uniform").capped_params(8, groups)


def test_warm_start_lists_uniform_then_capped_shapes_then_the_trade_off(groups):
    points = warm_start(EXACT, groups, 3)
    assert [fraction for _, fraction in points] == [1.0, 1.0, 1.0, *TRADE_OFF_FRACTIONS]
    plans = [channel_plan(groups, EXACT.sample(optuna.trial.FixedTrial(params), groups)) for params, _ in points]
    assert plans[0] == {g.name: g.channels for g in groups}  # uniform: the shape of the dense model
    narrowest = min(g.channels for g in groups)
    for plan, cap in zip(plans[1:3], (narrowest, 2 * narrowest)):
        assert plan == {g.name: min(g.channels, cap) for g in groups}
    assert points[3][0] == points[4][0] == points[1][0]  # the flat capped shape at other budgets


def test_warm_start_of_a_uniform_space_has_one_shape(groups):
    uniform = SearchSpace.load("uniform")
    points = warm_start(uniform, groups, 4)
    assert [p for p, _ in points] == uniform.uniform_recipes(1, groups) * (1 + len(TRADE_OFF_FRACTIONS))


def test_warm_start_drops_caps_that_repeat_a_shape(groups):
    points = warm_start(EXACT, groups, 12)  # caps beyond the widest group repeat the uniform shape
    shapes = [json.dumps(p, sort_keys=True) for p, fraction in points if fraction == 1.0]
    assert len(set(shapes)) == len(shapes) < 12


@pytest.mark.parametrize("methods", [("prune", "scale"), ("scale", "prune")])
def test_warm_start_tries_the_first_capped_shape_with_the_other_method_when_the_space_lists_both(groups, methods):
    first, second = methods
    both = dataclasses.replace(EXACT, methods=methods)
    points = warm_start(both, groups, 4)
    at_budget = [params for params, fraction in points if fraction == 1.0]
    assert [p["method"] for p in at_budget] == [first, first, first, second]
    assert {**at_budget[3], "method": first} == at_budget[1]  # the first capped shape, the other way
    assert all(params["method"] == first for params, fraction in points if fraction != 1.0)
    assert [p["method"] for p, _ in warm_start(both, groups, 2)] == [first] * 4  # too few shapes to give one up
    assert SearchSpace.load("per-layer").methods == ("prune",)  # inherited weights: see space/_warm.py
    assert "method" not in warm_start(SearchSpace.load("per-layer"), groups, 4)[0][0]


def test_depth_preset_is_the_per_layer_space_with_levels_to_drop():
    depth = SearchSpace.load("per-layer-depth")
    assert depth.depth_drop == (0, 1, 2)
    assert dataclasses.replace(depth, depth_drop=(0,), depth_convs=(2,)) == SearchSpace.load("per-layer")
    assert depth.for_depth(Depth(levels=(("a",),))).depth_drop == (0, 1) and depth.for_depth(Depth()).depth_drop == (0,)
    assert depth.for_depth(Depth()).depth_convs == (2,) and depth.depth_convs == (2, 1)
    assert SearchSpace.from_dict(json.loads(json.dumps(depth.to_dict()))) == depth


@pytest.mark.parametrize("key, value", [("drop", [-1]), ("drop", [0, 0]), ("drop", [0.5]), ("drop", []), ("drop", "1"),
                                        ("convs", [3]), ("convs", []), ("convs", [1, 1])])
def test_impossible_depths_are_refused(key, value):
    with pytest.raises(UserError, match=f"depth.{key}"):
        SearchSpace.from_dict({"depth": {key: value}})


def test_a_sampled_depth_removes_the_deepest_levels_and_second_convolutions(tiny, x, groups):
    space, depth = SearchSpace.load("per-layer-depth"), depth_of(tiny)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drops, singles = set(), set()
    for _ in range(12):
        trial = study.ask()
        recipe = space.sample(trial, groups, depth)
        drop = trial.params["depth.drop"]
        levels = {name for level in depth.levels[:drop] for name in level}
        single = {stage for stage in depth.convs if trial.params[f"convs.{stage}"] == 1 and stage not in levels}
        drops.add(drop)
        singles |= single
        assert set(recipe.removed) == levels | {name for stage in single for name in depth.convs[stage]}
        assert set(recipe.keep) == {g.name for g in groups if not is_ignored(g.name, recipe.removed)}
        assert {name for name, n in channel_plan(groups, recipe).items() if n == 0} == {g.name for g in groups} - set(recipe.keep)
        assert apply_recipe(tiny, recipe, x)(x).shape == tiny(x).shape
        study.tell(trial, 0.0)
    assert drops == {0, 1, 2} and singles == set(depth.convs)
    with pytest.raises(UserError, match="can lose 1"):
        space.sample(optuna.trial.FixedTrial({**space.capped_params(4, groups), **space.depth_params(depth, drop=2)}),
                     groups, Depth(depth.levels[:1], depth.convs))


def test_warm_start_tries_its_first_capped_shape_at_every_depth(tiny, groups):
    space, depth = SearchSpace.load("per-layer-depth"), depth_of(tiny)
    points = warm_start(space, groups, 3, depth)
    at_budget = [params for params, fraction in points if fraction == 1.0]
    assert [p["depth.drop"] for p in at_budget] == [0, 0, 0, 1, 2, 0]
    assert [sum(p[f"convs.{stage}"] for stage in depth.convs) for p in at_budget] == [18] * 5 + [9]
    assert [{**p, **space.depth_params(depth)} for p in at_budget[3:]] == [at_budget[1]] * 3
    assert all(p["depth.drop"] == 0 for p, fraction in points if fraction != 1.0)
    assert warm_start(SearchSpace.load("per-layer"), groups, 3, depth) == warm_start(SearchSpace.load("per-layer"), groups, 3)
