"""The networks clinical researchers bring: MONAI's and nnU-Net's, pruned for real.

Each network is pruned by a per-layer recipe and must keep its output shape, compute what
the original computes with the removed channels zeroed, have the channels and parameters
the plan predicts, rebuild from its state dict and run the same in ONNX Runtime.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import re

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping

from autosculpt.errors import UserError
from autosculpt.search.onnx_io import to_onnx
from autosculpt.space import (
    Recipe,
    UNet,
    apply_recipe,
    channel_plan,
    count_parameters,
    figures,
    layer_groups,
    load_user_model,
    rebuild,
    survey_groups,
)
from autosculpt.space import _tp_patch
from autosculpt.space._graph import dependency_graph
from autosculpt.space._prune import _named_groups, prune_in_place
from autosculpt.space._usermodel import first_output

CLASSES = 4
LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def basic_unet(scale: float) -> nn.Module:
    nets = pytest.importorskip("monai.networks.nets")
    features = tuple(int(f * scale) for f in (32, 32, 64, 128, 256, 32))
    return nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=CLASSES, features=features)


def monai_unet(scale: float, res_units: int = 0) -> nn.Module:
    nets = pytest.importorskip("monai.networks.nets")
    channels = tuple(int(c * scale) for c in (8, 16, 32, 64))
    return nets.UNet(2, 1, CLASSES, channels=channels, strides=(2, 2, 2), num_res_units=res_units)


def attention_unet(scale: float) -> nn.Module:
    nets = pytest.importorskip("monai.networks.nets")
    return nets.AttentionUnet(2, 1, CLASSES, channels=tuple(int(c * scale) for c in (8, 16, 32, 64)), strides=(2, 2, 2))


def segresnet(scale: float) -> nn.Module:
    nets = pytest.importorskip("monai.networks.nets")
    return nets.SegResNet(2, init_filters=int(16 * scale), in_channels=1, out_channels=CLASSES)


def plain_conv_unet(scale: float, deep_supervision: bool = False) -> nn.Module:
    """nnU-Net's 2D network as nnU-Net configures it (InstanceNorm affine, LeakyReLU in place), 5 stages."""
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    return first_output(unet.PlainConvUNet)(
        1, 5, tuple(int(f * scale) for f in (8, 16, 32, 64, 64)), nn.Conv2d, 3, (1, 2, 2, 2, 2), (2,) * 5,
        CLASSES, (2,) * 4, True, nn.InstanceNorm2d, {"eps": 1e-5, "affine": True}, None, None,
        nn.LeakyReLU, {"inplace": True}, deep_supervision=deep_supervision,
    )


def residual_encoder_unet(scale: float, deep_supervision: bool = False) -> nn.Module:
    """nnU-Net's recommended ResEnc network in 2D: residual blocks (1, 2, 2, 2), InstanceNorm, a stem."""
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    return first_output(unet.ResidualEncoderUNet)(
        1, 4, tuple(int(f * scale) for f in (8, 16, 32, 64)), nn.Conv2d, 3, (1, 2, 2, 2), (1, 2, 2, 2), CLASSES,
        (1, 1, 1), True, nn.InstanceNorm2d, {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU,
        {"inplace": True}, deep_supervision=deep_supervision,
    )


def dynunet_residual(scale: float) -> nn.Module:
    nets = pytest.importorskip("monai.networks.nets")
    filters = [int(f * scale) for f in (16, 32, 64, 128)]
    return nets.DynUNet(2, 1, CLASSES, kernel_size=[3] * 4, strides=[1, 2, 2, 2], upsample_kernel_size=[2] * 3,
                        filters=filters, res_block=True)


def unet_plus_plus(scale: float, deep_supervision: bool = False) -> nn.Module:
    """MONAI's UNet++: nested, densely concatenated skips; every head runs, one is returned without deep supervision."""
    nets = pytest.importorskip("monai.networks.nets")
    features = tuple(int(f * scale) for f in (16, 16, 32, 64, 128, 16))
    return first_output(nets.BasicUNetPlusPlus)(spatial_dims=2, in_channels=1, out_channels=CLASSES,
                                                features=features, deep_supervision=deep_supervision)


def unetr(scale: float) -> nn.Module:
    """MONAI's UNETR in 2D: a ViT encoder (hidden size and heads fixed), a convolutional decoder."""
    nets = pytest.importorskip("monai.networks.nets")
    return nets.UNETR(1, CLASSES, (32, 32), feature_size=int(16 * scale), hidden_size=96, mlp_dim=int(192 * scale),
                      num_heads=4, spatial_dims=2)


def swin_unetr(scale: float) -> nn.Module:
    """MONAI's SwinUNETR in 2D; its embedding width is its feature size, so only ``scale`` 1 is built."""
    nets = pytest.importorskip("monai.networks.nets")
    return nets.SwinUNETR(1, CLASSES, feature_size=int(12 * scale), spatial_dims=2, depths=(1, 1, 1, 1),
                          num_heads=(3, 3, 3, 3))


# name: (network at a width scale, channel rounding its norms need, input size)
NETWORKS = {
    "monai-basicunet": (basic_unet, 1, 32),
    "monai-unet": (monai_unet, 1, 32),
    "monai-unet-res": (lambda scale: monai_unet(scale, res_units=2), 1, 32),
    "monai-attentionunet": (attention_unet, 1, 32),
    "monai-segresnet": (segresnet, 8, 32),  # GroupNorm of 8 groups
    "monai-dynunet-res": (dynunet_residual, 1, 32),
    "monai-unetplusplus": (unet_plus_plus, 1, 32),
    "monai-unetplusplus-deep-supervision": (lambda scale: unet_plus_plus(scale, deep_supervision=True), 1, 32),
    "monai-unetr": (unetr, 1, 32),
    "monai-swinunetr": (swin_unetr, 1, 64),  # four halvings and a norm that needs more than one pixel
    "nnunet-plainconvunet": (plain_conv_unet, 1, 32),
    "nnunet-deep-supervision": (lambda scale: plain_conv_unet(scale, deep_supervision=True), 1, 32),
    "nnunet-resenc": (residual_encoder_unet, 1, 32),
    "nnunet-resenc-deep-supervision": (lambda scale: residual_encoder_unet(scale, deep_supervision=True), 1, 32),
}
# What Torch-Pruning cannot follow in them, kept whole (prefixes of group names): a ViT's
# hidden size (the patch embedding, joined to every block by residual additions) and its
# fused query-key-value projections, which einops splits into heads.
KEPT_WHOLE = {
    "monai-unetr": ("vit.patch_embedding", "vit.blocks.0.attn.qkv"),
    "monai-swinunetr": ("swinViT.patch_embed", "swinViT.layers1.0.blocks.0.attn.qkv"),
}


def randomise_norms(model: nn.Module) -> nn.Module:
    """Give every norm layer distinct affine terms (and BatchNorm statistics), as training would."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and module.weight is not None:
            n = module.weight.numel()
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model


def outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every output of the model: all deep-supervision heads, not only the first."""
    with torch.no_grad():
        return tp.utils.flatten_as_list(getattr(model, "all_outputs", model)(x))


def used_parameters(model: nn.Module, x: torch.Tensor) -> int:
    """Parameters of the layers the forward pass calls (nnU-Net keeps unused heads without deep supervision)."""
    called = []
    hooks = [m.register_forward_hook(lambda m, *_: called.append(m)) for m in model.modules()]
    outputs(model, x)
    for hook in hooks:
        hook.remove()
    return sum(p.numel() for m in set(called) for p in m.parameters(recurse=False))


def masked_copy(model: nn.Module, kept: dict[str, list[int]], x: torch.Tensor) -> nn.Module:
    """The original with every removed channel zeroed where a layer reads it.

    Torch-Pruning's own groups say which input channels of which layers each removed channel
    becomes (through concatenations, residual additions and norms); a forward pre-hook zeroes
    them. This generalises tests/test_prune.py's masked_copy beyond our U-Net.
    """
    masked = copy.deepcopy(model)
    graph = dependency_graph(masked, x)
    zeroed: dict[nn.Module, set[int]] = {}
    for name, root, group in _named_groups(graph):
        removed = sorted(set(range(graph.get_out_channels(root))) - set(kept.get(name, range(10**6))))
        if not removed:
            continue
        for dep, idxs in graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, removed):
            if graph.is_in_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, LAYERS):
                zeroed.setdefault(dep.target.module, set()).update(int(i) for i in idxs)
    for layer, channels in zeroed.items():
        index, dim = torch.tensor(sorted(channels)), -1 if isinstance(layer, nn.Linear) else 1  # tokens: (..., C)
        layer.register_forward_pre_hook(lambda _, args, index=index, dim=dim: (args[0].index_fill(dim, index, 0),))
    return masked


def varied_recipe(survey, round_to: int) -> Recipe:
    ratios = (0.3, 0.5, 0.75, 1.0, 0.2)
    keep = {g.name: ratios[i % len(ratios)] for i, g in enumerate(survey.groups)}
    return Recipe(keep=keep, round_to=round_to, ignore=survey.ignore())


def example(size: int) -> torch.Tensor:
    return torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return example(32)


@pytest.fixture(scope="module", params=list(NETWORKS))
def network(request):
    """(name, network in eval mode, its group survey, channel rounding, example input)."""
    build, round_to, size = NETWORKS[request.param]
    torch.manual_seed(0)
    net = randomise_norms(build(1.0)).eval()
    x = example(size)
    return request.param, net, survey_groups(net, x), round_to, x


def test_groups_are_named_by_unique_readable_module_paths(network):
    name, net, survey, _, _ = network
    groups = survey.groups
    names = [g.name for g in groups]
    assert len(names) == len(set(names)) > 4
    assert all(isinstance(net.get_submodule(n), LAYERS) for n in names)  # a real layer's path, no op ids
    assert all(g.stage == g.name.split(".")[0] for g in groups)
    if name.startswith("nnunet") and "resenc" not in name:
        assert names[:2] == ["encoder.stages.0.0.convs.0.conv", "encoder.stages.0.0.convs.1.conv"]
        assert "decoder.transpconvs.0" in names and not any(n.startswith("decoder.seg_layers") for n in names)
    if name.startswith("nnunet-resenc"):
        assert names[0] == "encoder.stem.convs.0.conv" and "encoder.stages.1.blocks.0.conv1.conv" in names


def test_only_what_torch_pruning_cannot_follow_is_kept_whole(network):
    name, _, survey, _, _ = network
    expected = KEPT_WHOLE.get(name, ())
    assert all(any(kept == prefix or kept.startswith(prefix + ".") for kept in survey.kept_whole) for prefix in expected)
    assert all(kept.startswith(("vit.", "swinViT.")) for kept in survey.kept_whole)  # convolutions all prune
    if name == "monai-unetr":
        assert {g.name for g in survey.groups} >= {"vit.blocks.0.mlp.linear1", "encoder1.layer.conv2.conv"}


def test_pruned_network_computes_the_original_with_removed_channels_zeroed(network):
    name, net, survey, round_to, x = network
    if name == "monai-segresnet":
        pytest.skip("GroupNorm mixes a group's channels: removing one changes its neighbours' statistics")
    recipe = varied_recipe(survey, round_to)
    if name == "monai-swinunetr":  # its last stage's output is layer-normalised over channels without weights
        recipe = dataclasses.replace(recipe, keep={**recipe.keep, "swinViT.layers4.0.downsample.reduction": 1.0})
    pruned = copy.deepcopy(net)
    kept = prune_in_place(pruned, recipe, x)
    expected = outputs(masked_copy(net, kept, x), x)
    got = outputs(pruned.eval(), x)
    assert [t.shape for t in got] == [t.shape for t in outputs(net, x)]
    assert max((a - b).abs().max().item() for a, b in zip(got, expected)) < 1e-5
    assert (outputs(net, x)[0] - expected[0]).abs().max() > 1e-3  # the mask did change the original


def test_channels_and_parameters_follow_the_plan(network):
    name, net, survey, round_to, x = network
    recipe = varied_recipe(survey, round_to)
    pruned = apply_recipe(net, recipe, x)
    got = figures(pruned, x, survey.groups)
    assert got.channels == channel_plan(survey.groups, recipe)
    assert got.params == count_parameters(pruned) < count_parameters(net)
    half = apply_recipe(net, Recipe.uniform(0.5, round_to=round_to, ignore=survey.ignore()), x)
    if name != "monai-swinunetr":  # its transformer's width is kept whole: no narrower network to build
        assert used_parameters(half, x) == used_parameters(NETWORKS[name][0](0.5), x)  # built half as wide
    assert pruned(x).shape == half(x).shape == net(x).shape


def test_rebuilt_network_runs_the_same_in_onnx_runtime(network, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _, net, survey, round_to, x = network
    recipe = varied_recipe(survey, round_to)
    pruned = apply_recipe(net, recipe, x)
    torch.save(pruned.state_dict(), tmp_path / "weights.pt")
    rebuilt = rebuild(net, recipe, x, torch.load(tmp_path / "weights.pt", weights_only=True))
    with torch.no_grad():
        expected = rebuilt(x[:1]).numpy()
        assert np.array_equal(expected, pruned(x[:1]).numpy())
    session = ort.InferenceSession(to_onnx(rebuilt, (1, *x.shape[1:])), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4


NNUNET_FILE = """
from torch import nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet

class DeepNet(PlainConvUNet):
    def __init__(self):
        super().__init__(1, 4, (8, 16, 32, 32), nn.Conv2d, 3, (1, 2, 2, 2), 2, 3, 2, True, nn.InstanceNorm2d,
                         {"affine": True}, None, None, nn.LeakyReLU, {"inplace": True}, deep_supervision=True)
"""


def test_deep_supervision_shows_the_full_resolution_output_and_prunes_every_head(tmp_path, x):
    pytest.importorskip("dynamic_network_architectures")
    (tmp_path / "nets.py").write_text(NNUNET_FILE)
    state = load_user_model(f"{tmp_path}/nets.py:DeepNet").state_dict()
    assert all(key.startswith(("encoder.", "decoder.")) for key in state)  # the class's own names, no wrapper
    torch.save(state, tmp_path / "w.pt")
    model = load_user_model(f"{tmp_path}/nets.py:DeepNet", str(tmp_path / "w.pt")).eval()
    heads = outputs(model, x)
    assert [tuple(h.shape) for h in heads] == [(2, 3, 32, 32), (2, 3, 16, 16), (2, 3, 8, 8)]
    assert torch.equal(model(x), heads[0])  # what training, Dice, latency and export see
    groups = layer_groups(model, x)
    pruned = apply_recipe(model, Recipe.uniform(0.5), x)
    assert [h.shape for h in outputs(pruned, x)] == [h.shape for h in heads]
    assert [pruned.get_submodule(f"decoder.seg_layers.{i}").in_channels for i in range(3)] == [16, 8, 4]
    assert figures(pruned, x, groups).channels == channel_plan(groups, Recipe.uniform(0.5))


class ConcatsItsInput(nn.Module):
    """Joins the input image to its features along channels: no layer produced that tensor."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Conv2d(9, 2, 1)

    def forward(self, x):
        return self.head(torch.cat([self.body(x), x], dim=1))


class FoldsChannels(nn.Module):
    """Sums the two halves of its channels through a reshape, which Torch-Pruning cannot follow."""

    def __init__(self, mix: bool = True):
        super().__init__()
        self.body = nn.Conv2d(1, 8, 3, padding=1)
        self.mix = nn.Conv2d(4, 8, 3, padding=1) if mix else nn.Identity()
        self.head = nn.Conv2d(8 if mix else 4, 2, 1)

    def forward(self, x):
        y = self.body(x)
        n, c, h, w = y.shape
        return self.head(self.mix(y.reshape(n, 2, c // 2, h, w).sum(1)))


def test_a_group_that_cannot_be_pruned_is_kept_whole_and_named_and_the_rest_is_searched(x):
    net = FoldsChannels().eval()
    survey = survey_groups(net, x)
    assert [g.name for g in survey.groups] == ["mix"] and list(survey.kept_whole) == ["body"]
    assert re.fullmatch(r"kept whole: 1 group: body, because pruning it breaks the model \(.+\)", survey.describe())
    assert survey.ignore(("head",)) == ("head", "body")
    pruned = apply_recipe(net, Recipe.uniform(0.5, ignore=survey.ignore()), x)
    assert (pruned.body.out_channels, pruned.mix.out_channels) == (8, 4) and pruned(x).shape == net(x).shape
    assert survey_groups(net, x, ignore=["body"]).kept_whole == {}  # the ignore list works as before


def test_a_stored_survey_is_taken_as_it_is(x, monkeypatch):
    """A study's workers and exports give the survey its creator stored: no group is tried again."""
    from autosculpt.space import _prune

    net = FoldsChannels().eval()
    stored = survey_groups(net, x).kept_whole
    monkeypatch.setattr(_prune, "_unsafe_groups", lambda *args: pytest.fail("the groups were tried again"))
    again = survey_groups(net, x, kept_whole=stored)
    assert again.kept_whole == stored and [g.name for g in again.groups] == ["mix"]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (ConcatsItsInput, r"^cannot prune: torch\.cat at test_user_networks\.py:\d+ .*: concatenate only layer outputs"),
        (lambda: FoldsChannels(mix=False),
         r"^nothing in the model can be pruned \(kept whole: 1 group: body, because .*\): report the model to us$"),
    ],
)
def test_a_model_that_cannot_be_pruned_is_refused_in_one_line(model, message, x):
    with pytest.raises(UserError, match=message) as info:
        layer_groups(model().eval(), x)
    assert "\n" not in str(info.value)


def test_groupnorm_channels_stay_a_multiple_of_its_groups(x):
    net = segresnet(1.0).eval()
    groups = layer_groups(net, x)
    assert {g.step for g in groups} == {8}
    recipe = Recipe.uniform(0.25, round_to=4)  # 16 channels -> 4 would break GroupNorm(8): rounded to 8
    plan = channel_plan(groups, recipe)
    assert all(kept % 8 == 0 for kept in plan.values())
    pruned = apply_recipe(net, recipe, x)
    assert pruned(x).shape == net(x).shape


def test_the_patch_repairs_concat_channel_inference_of_the_pinned_version():
    class PReLUSkip(nn.Module):  # MONAI's UNet in miniature: a one-slope PReLU before a concat
        def __init__(self):
            super().__init__()
            self.down, self.act, self.head = nn.Conv2d(1, 8, 3, padding=1), nn.PReLU(), nn.Conv2d(16, 2, 1)

        def forward(self, x):
            y = self.act(self.down(x))
            return self.head(torch.cat([y, y * 2], dim=1))

    net, x = PReLUSkip().eval(), torch.randn(1, 1, 16, 16)
    with pytest.raises(TypeError, match="NoneType"):  # Torch-Pruning 1.6.1 alone (VainF/Torch-Pruning#387)
        tp.DependencyGraph().build_dependency(net, x)
    assert [g.name for g in layer_groups(net, x)] == ["down"]
    assert apply_recipe(net, Recipe.uniform(0.5), x).head.in_channels == 8


def test_another_torch_pruning_is_refused(monkeypatch):
    _tp_patch.check_pinned()
    monkeypatch.setitem(_tp_patch._SOURCE_DIGESTS, index_mapping.update_index_mapping, "0" * 64)
    with pytest.raises(ImportError, match="update_index_mapping differs.*reinstall torch-pruning==1.6.1"):
        _tp_patch.check_pinned()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.7.0")
    with pytest.raises(ImportError, match="needs torch-pruning==1.6.1, found 1.7.0"):
        _tp_patch.check_pinned()


# --- loading a user's class and weights -------------------------------------------------


USER_MODEL = """
import torch
from torch import nn

class TinySeg(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.body(x))

class NeedsArgs(nn.Module):
    def __init__(self, width):
        super().__init__()

NOT_A_MODULE = 3
"""


def test_load_user_model_from_a_file(tmp_path):
    path = tmp_path / "mynet.py"
    path.write_text(USER_MODEL)
    model = load_user_model(f"{path}:TinySeg")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = load_user_model(f"{path}:TinySeg", str(tmp_path / "w.pt"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    x = torch.randn(1, 1, 16, 16)
    assert [g.name for g in layer_groups(loaded, x)] == ["body.0", "body.3"]
    assert apply_recipe(loaded, Recipe.uniform(0.5), x)(x).shape == (1, 2, 16, 16)
    assert isinstance(load_user_model("autosculpt.space.unet:UNet"), UNet)


@pytest.mark.parametrize(
    ("spec", "weights", "message"),
    [
        ("{dir}/missing.py:TinySeg", None, "not found"),
        ("{dir}/mynet.py", None, "module:Class"),
        ("{dir}/mynet.py:Nope", None, "no nn.Module class"),
        ("{dir}/mynet.py:NOT_A_MODULE", None, "no nn.Module class"),
        ("{dir}/mynet.py:NeedsArgs", None, "without arguments"),
        ("no_such_package.models:Net", None, "cannot import"),
        ("{dir}/mynet.py:TinySeg", "missing.pt", "not found"),
        ("{dir}/mynet.py:TinySeg", "wrong.pt", "does not fit"),
        ("{dir}/mynet.py:TinySeg", "pickled.pt", "cannot read"),
    ],
)
def test_load_user_model_errors(tmp_path, spec, weights, message):
    (tmp_path / "mynet.py").write_text(USER_MODEL)
    torch.save({"head.weight": torch.zeros(3, 8, 1, 1)}, tmp_path / "wrong.pt")
    torch.save(nn.Conv2d(1, 1, 1), tmp_path / "pickled.pt")
    with pytest.raises(UserError, match=message):
        load_user_model(spec.format(dir=tmp_path), weights and str(tmp_path / weights))
