"""Structural pruning: layer groups, recipes, apply_recipe, rebuild, figures, user models."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autosculpt.errors import UserError
from autosculpt.space import (
    Figures,
    Recipe,
    UNet,
    apply_recipe,
    channel_plan,
    count_parameters,
    depth_of,
    figures,
    layer_groups,
    preset_config,
    rebuild,
)
from autosculpt.space._prune import prune_in_place
from autosculpt.space._recipe import is_ignored

CLASSES = 4


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResSegNet(nn.Module):
    """ResNet-style encoder-decoder: residual additions, strided downsampling, bilinear up + additive skip."""

    def __init__(self, in_channels: int = 1, num_classes: int = CLASSES):
        super().__init__()
        self.stem = conv_bn_relu(in_channels, 16)
        self.block1 = ResBlock(16)
        self.down = conv_bn_relu(16, 32, stride=2)
        self.block2 = ResBlock(32)
        self.reduce = nn.Conv2d(32, 16, 1)
        self.head = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        skip = self.block1(self.stem(x))
        y = self.reduce(self.block2(self.down(skip)))
        return self.head(F.interpolate(y, scale_factor=2, mode="bilinear") + skip)


class FPNSeg(nn.Module):
    """FPN-like: lateral 1x1 convs, top-down additions, concat of all levels, logits upsampled to the input."""

    def __init__(self, in_channels: int = 1, num_classes: int = CLASSES):
        super().__init__()
        self.c1, self.c2, self.c3 = conv_bn_relu(in_channels, 8, 2), conv_bn_relu(8, 16, 2), conv_bn_relu(16, 32, 2)
        self.lat1, self.lat2, self.lat3 = nn.Conv2d(8, 12, 1), nn.Conv2d(16, 12, 1), nn.Conv2d(32, 12, 1)
        self.fuse = conv_bn_relu(36, 12)
        self.head = nn.Conv2d(12, num_classes, 1)

    def forward(self, x):
        f1 = self.c1(x)
        f2 = self.c2(f1)
        f3 = self.c3(f2)
        p3 = self.lat3(f3)
        p2 = self.lat2(f2) + F.interpolate(p3, scale_factor=2)
        p1 = self.lat1(f1) + F.interpolate(p2, scale_factor=2)
        size = p1.shape[-2:]
        fused = torch.cat([p1, F.interpolate(p2, size=size), F.interpolate(p3, size=size)], dim=1)
        return F.interpolate(self.head(self.fuse(fused)), size=x.shape[-2:], mode="bilinear")


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms, as training would."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tiny() -> UNet:
    torch.manual_seed(0)
    return randomise_batchnorm(UNet(preset_config("unet-tiny", 1, CLASSES))).eval()


@pytest.fixture(scope="module")
def groups(tiny, x):
    return layer_groups(tiny, x)


def unet_params(plan: dict[str, int], in_channels: int, classes: int) -> int:
    """Parameters of our U-Net with these kept channels, by hand."""

    def conv_bn(cin, cout):
        return cin * cout * 9 + 2 * cout

    total, prev = 0, in_channels
    for stage in ("enc1", "enc2", "enc3", "enc4", "bottleneck"):
        total += conv_bn(prev, plan[f"{stage}.conv1"]) + conv_bn(plan[f"{stage}.conv1"], plan[f"{stage}.conv2"])
        prev = plan[f"{stage}.conv2"]
    for i in (4, 3, 2, 1):
        up, skip, mid, out = plan[f"up{i}"], plan[f"enc{i}.conv2"], plan[f"dec{i}.conv1"], plan[f"dec{i}.conv2"]
        total += prev * up * 4 + up + conv_bn(skip + up, mid) + conv_bn(mid, out)
        prev = out
    return total + prev * classes + classes


def varied_recipe(groups, **kwargs) -> Recipe:
    ratios = (0.3, 0.5, 0.75, 1.0, 0.2)
    return Recipe(keep={g.name: ratios[i % len(ratios)] for i, g in enumerate(groups)}, **kwargs)


def test_layer_groups_of_the_unet(tiny, x, groups):
    widths = dict(zip(("enc1", "enc2", "enc3", "enc4", "bottleneck"), tiny.config.widths))
    expected = [f"{s}.conv{i}" for s in widths for i in (1, 2)]
    for i in (4, 3, 2, 1):
        expected += [f"up{i}", f"dec{i}.conv1", f"dec{i}.conv2"]
    assert [g.name for g in groups] == expected  # module order; the logits layer "head" is never a group
    assert all(g.stage == g.name.split(".")[0] for g in groups)
    assert {g.name: g.channels for g in groups}["enc3.conv2"] == widths["enc3"]
    assert tiny.training is False and layer_groups(tiny.train(), x) == groups and tiny.training
    tiny.eval()


def test_params_follow_the_plan_by_hand(tiny, x):
    names = channel_plan(layer_groups(tiny, x), Recipe())
    full = {name: tiny.get_submodule(name).out_channels for name in names}
    assert unet_params(full, 1, CLASSES) == count_parameters(tiny)


@pytest.mark.parametrize(
    "make",
    [
        lambda g: Recipe.uniform(0.5),
        lambda g: varied_recipe(g),
        lambda g: varied_recipe(g, width=0.5, round_to=4),
        lambda g: varied_recipe(g, min_channels=3),
    ],
    ids=["uniform", "per-layer", "width-round4", "min3"],
)
def test_pruned_net_matches_its_plan(tiny, x, groups, make):
    recipe = make(groups)
    pruned = apply_recipe(tiny, recipe, x)
    plan = channel_plan(groups, recipe)
    got = figures(pruned, x, groups)
    assert pruned(x).shape == tiny(x).shape
    assert got.channels == plan
    assert got.params == unet_params(plan, 1, CLASSES) == count_parameters(pruned)
    assert not pruned.training


def test_uniform_prune_equals_a_scaled_unet(tiny, x):
    for keep in (0.5, 0.25):
        pruned = apply_recipe(tiny, Recipe.uniform(keep), x)
        assert count_parameters(pruned) == count_parameters(UNet(tiny.config.scaled(keep)))


def masked_copy(model: UNet, kept: dict[str, list[int]], groups) -> UNet:
    """The baseline with every removed channel made to output exactly zero."""
    masked = copy.deepcopy(model)
    channels = {g.name: g.channels for g in groups}
    with torch.no_grad():
        for name, keep in kept.items():
            removed = sorted(set(range(channels[name])) - set(keep))
            if name.startswith("up"):  # transposed conv feeding a concat: zero its filters and bias
                layer = masked.get_submodule(name)
                layer.weight[:, removed] = 0
                layer.bias[removed] = 0
            else:  # conv -> BatchNorm -> ReLU: a zero BatchNorm scale and shift emits exactly 0
                bn = masked.get_submodule(name.replace(".conv", ".bn"))
                bn.weight[removed] = 0
                bn.bias[removed] = 0
    return masked


@pytest.mark.parametrize("importance", ["l1", "bn", "taylor"])
def test_pruning_preserves_the_function_of_the_kept_channels(tiny, x, groups, importance):
    pruned = copy.deepcopy(tiny)
    calibration = (x, torch.randint(0, CLASSES, (2, 32, 32), generator=torch.Generator().manual_seed(0)))
    kept = prune_in_place(pruned, varied_recipe(groups, importance=importance), x, calibration)
    with torch.no_grad():
        expected = masked_copy(tiny, kept, groups)(x)
        assert (pruned.eval()(x) - expected).abs().max() < 1e-5
        assert (tiny(x) - expected).abs().max() > 1e-2  # the mask did change the baseline


def test_importances_choose_differently(tiny, x, groups):
    calibration = (x, torch.randint(0, CLASSES, (2, 32, 32), generator=torch.Generator().manual_seed(0)))
    choices = [
        prune_in_place(copy.deepcopy(tiny), Recipe.uniform(0.5, importance=imp), x, calibration)
        for imp in ("l1", "bn", "taylor")
    ]
    assert choices[0] != choices[1] and choices[0] != choices[2]


@pytest.mark.parametrize("importance", ["l1", "taylor"])
def test_replay_is_bit_identical_and_leaves_the_baseline_alone(tiny, x, groups, importance):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    calibration = (x, torch.randint(0, CLASSES, (2, 32, 32), generator=torch.Generator().manual_seed(0)))
    recipe = varied_recipe(groups, importance=importance)
    first = apply_recipe(tiny, recipe, x, calibration).state_dict()
    second = apply_recipe(copy.deepcopy(tiny), recipe, x, calibration).state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    assert all(p.grad is None for p in tiny.parameters())


def test_rebuild_from_state_dict_and_recipe(tiny, x, groups, tmp_path):
    calibration = (x, torch.randint(0, CLASSES, (2, 32, 32), generator=torch.Generator().manual_seed(0)))
    recipe = Recipe.from_dict(json.loads(json.dumps(varied_recipe(groups, importance="taylor").to_dict())))
    tuned = apply_recipe(tiny, recipe, x, calibration)
    with torch.no_grad():  # stand-in for fine-tuning
        for p in tuned.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    torch.save(tuned.state_dict(), tmp_path / "weights.pt")
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    rebuilt = rebuild(tiny, recipe, x, state)  # taylor recipe, yet no calibration needed
    with torch.no_grad():
        assert torch.equal(rebuilt(x), tuned(x))
    with pytest.raises(UserError, match="do not fit"):
        rebuild(tiny, Recipe.uniform(0.25), x, state)


def test_extreme_keep_still_runs(tiny, x, groups):
    pruned = apply_recipe(tiny, Recipe.uniform(0.0125), x)
    assert set(figures(pruned, x, groups).channels.values()) == {1}
    assert pruned(x).shape == tiny(x).shape and torch.isfinite(pruned(x)).all()


def test_scale_is_narrow_and_freshly_initialised(tiny, x, groups):
    recipe = varied_recipe(groups, method="scale")
    rng = torch.get_rng_state()
    scaled = apply_recipe(tiny, recipe, x)
    assert torch.equal(rng, torch.get_rng_state())  # fixed seed, global RNG untouched
    pruned = apply_recipe(tiny, Recipe.from_dict({**recipe.to_dict(), "method": "prune"}), x)
    assert figures(scaled, x, groups).channels == channel_plan(groups, recipe)
    assert scaled(x).shape == tiny(x).shape
    for name, module in scaled.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.running_var, torch.ones_like(module.running_var))
        elif isinstance(module, nn.Conv2d):
            assert not torch.equal(module.weight, pruned.get_submodule(name).weight)
    again = apply_recipe(tiny, recipe, x).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in scaled.state_dict().items())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "grow"},
        {"importance": "random"},
        {"keep": {"enc1.conv1": 0.0}},
        {"keep": {"enc1.conv1": 1.5}},
        {"width": 0},
        {"round_to": 0},
        {"min_channels": 2.5},
    ],
)
def test_bad_recipes_are_refused(kwargs):
    with pytest.raises(UserError):
        Recipe(**kwargs)


def test_bad_inputs_to_apply_recipe(tiny, x):
    with pytest.raises(UserError, match="unknown layer group.*enc9"):
        apply_recipe(tiny, Recipe(keep={"enc9.conv1": 0.5}), x)
    with pytest.raises(UserError, match="head"):  # the logits layer is not a group
        apply_recipe(tiny, Recipe(keep={"head": 0.5}), x)
    with pytest.raises(UserError, match="calibration"):
        apply_recipe(tiny, Recipe.uniform(0.5, importance="taylor"), x)
    with pytest.raises(UserError, match="example input"):
        apply_recipe(tiny, Recipe.uniform(0.5), torch.zeros(1, 3, 32, 32))
    with pytest.raises(UserError, match="ignore entry"):
        apply_recipe(tiny, Recipe(ignore=("encoder",)), x)


def test_ignored_groups_stay_whole(tiny, x, groups):
    recipe = Recipe.uniform(0.5, ignore=("enc1", "up4"))
    channels = figures(apply_recipe(tiny, recipe, x), x, groups).channels
    assert channels["enc1.conv1"] == channels["enc1.conv2"] == tiny.config.widths[0]
    assert channels["up4"] == tiny.config.widths[3] and channels["enc2.conv1"] == tiny.config.widths[1] // 2


def test_recipe_round_trips_through_json():
    keep = {"enc1.conv1": 0.35, "up2": 0.1}
    recipe = Recipe("scale", keep, width=0.75, round_to=4, min_channels=2, importance="bn", ignore=("enc4",))
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    assert Recipe.uniform(0.25, round_to=8) == Recipe(width=0.25, round_to=8)
    with pytest.raises(UserError, match="widht"):
        Recipe.from_dict({"widht": 0.5})


def test_figures_and_ratios(tiny, x, groups):
    base = figures(tiny, x)
    assert base.channels == {g.name: g.channels for g in groups} and base.params == count_parameters(tiny)
    small = figures(apply_recipe(tiny, Recipe.uniform(0.5), x), x, groups)
    ratios = small.ratios_against(base)
    assert 3 < ratios["param_ratio"] < 5 and 3 < ratios["mac_ratio"] < 5
    assert Figures(10, 20, {}).ratios_against(Figures(40, 100, {})) == {"param_ratio": 4.0, "mac_ratio": 5.0}


@pytest.mark.parametrize(
    ("model", "coupled"),
    [
        (ResSegNet, {"stem.0": ["block1.conv2", "reduce"], "down.0": ["block2.conv2"]}),
        (FPNSeg, {"lat1": ["lat2", "lat3"]}),
    ],
    ids=["resnet", "fpn"],
)
def test_any_model_is_prunable(model, coupled):
    torch.manual_seed(0)
    net = randomise_batchnorm(model()).eval()
    x = torch.randn(1, 1, 32, 32)
    groups = layer_groups(net, x)
    names = [g.name for g in groups]
    assert "head" not in names and set(coupled) <= set(names)
    assert not {member for members in coupled.values() for member in members} & set(names)  # coupled by additions
    recipes = (Recipe.uniform(0.5), Recipe(keep={names[0]: 0.25, names[-1]: 0.5}), Recipe.uniform(0.1, method="scale"))
    for recipe in recipes:
        pruned = apply_recipe(net, recipe, x)
        assert pruned(x).shape == net(x).shape
        assert figures(pruned, x, groups).channels == channel_plan(groups, recipe)
        assert count_parameters(pruned) < count_parameters(net)


def test_a_unet_loses_levels_and_second_convolutions_and_keeps_the_rest_of_its_weights(tiny, x):
    shallow = copy.deepcopy(tiny)
    assert [level[0] for level in depth_of(shallow).levels] == ["bottleneck", "enc4"]
    shallow.drop_levels(2)
    shallow.drop_convs(["enc1", "dec2"])
    assert shallow.levels == 3 and depth_of(shallow).levels == ()
    assert list(depth_of(shallow).convs) == ["enc2", "enc3", "dec1"]
    assert set(shallow.dropped) == {"bottleneck", "up4", "dec4", "enc4", "up3", "dec3", "enc1.conv2", "enc1.bn2", "enc1.relu2",
                                    "dec2.conv2", "dec2.bn2", "dec2.relu2"}
    kept = tiny.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in shallow.state_dict().items())
    assert shallow(x).shape == tiny(x).shape
    with pytest.raises(UserError, match="at most 2"):
        copy.deepcopy(tiny).drop_levels(3)
    with pytest.raises(UserError, match="no second convolution"):
        shallow.drop_convs(["enc1"])


def test_depth_and_width_replay_from_a_recipe(tiny, x, groups):
    depth = depth_of(tiny)
    removed = depth.removed(1, ["enc1", "dec4"])  # dec4 lies in the dropped level: nothing more to remove there
    assert removed == (*depth.levels[0], *depth.convs["enc1"])
    recipe = Recipe(keep={g.name: 0.5 for g in groups if not is_ignored(g.name, removed)}, removed=removed, round_to=2)
    net = apply_recipe(tiny, Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))), x)
    plan = channel_plan(groups, recipe)
    assert figures(net, x, groups).channels == plan  # removed groups report 0 channels, as planned
    assert {name for name, n in plan.items() if n == 0} == {g.name for g in groups if is_ignored(g.name, removed)}
    assert not any(name in dict(net.named_modules()) for name in removed) and net(x).shape == tiny(x).shape
    assert torch.equal(rebuild(tiny, recipe, x, net.state_dict())(x), net(x))
    for removed in [("enc4", "up3", "dec3"), ("enc1.conv2",)]:  # not the bottom level first; half of a convolution's modules
        with pytest.raises(UserError, match="deepest levels"):
            apply_recipe(tiny, Recipe(removed=removed), x)
    with pytest.raises(UserError, match="deepest levels"):
        apply_recipe(nn.Sequential(nn.Conv2d(1, 4, 3)), Recipe(removed=("bottleneck",)), x)
