"""Residual, nested and transformer-hybrid networks searched as a user searches them.

Each network is a user's ``file.py:Class`` with its weights (untrained: the flow is under
test, not the Dice), searched on the smoke preset, exported, and run by ``predict``. What
cannot be pruned is kept whole and named in the first lines, the model card and the report.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FLOW, run_cli
from PIL import Image

from autosculpt.space import load_user_model

pytestmark = pytest.mark.slow

NETS = """
from torch import nn
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from monai.networks.nets import UNETR, BasicUNetPlusPlus, DynUNet, SwinUNETR, UNet


class ResEnc(ResidualEncoderUNet):
    def __init__(self):
        super().__init__(1, 4, (8, 16, 32, 32), nn.Conv2d, 3, (1, 2, 2, 2), (1, 2, 2, 2), 4, (1, 1, 1), True,
                         nn.InstanceNorm2d, {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU,
                         {"inplace": True}, deep_supervision=True)


class DynRes(DynUNet):
    def __init__(self):
        super().__init__(2, 1, 4, kernel_size=[3] * 4, strides=[1, 2, 2, 2], upsample_kernel_size=[2] * 3,
                         filters=[8, 16, 32, 32], res_block=True)


class Nested(BasicUNetPlusPlus):
    def __init__(self, deep_supervision=True):
        super().__init__(spatial_dims=2, in_channels=1, out_channels=4, features=(8, 8, 16, 32, 32, 8),
                         deep_supervision=deep_supervision)


class NestedOneHead(Nested):
    def __init__(self):
        super().__init__(deep_supervision=False)


class ResUnits(UNet):
    def __init__(self):
        super().__init__(2, 1, 4, channels=(8, 16, 32, 32), strides=(2, 2, 2), num_res_units=2)


class Transformer(UNETR):
    def __init__(self):
        super().__init__(1, 4, (32, 32), feature_size=8, hidden_size=48, mlp_dim=96, num_heads=2, spatial_dims=2)


class Swin(SwinUNETR):
    def __init__(self):
        super().__init__(1, 4, feature_size=12, spatial_dims=2, depths=(1, 1, 1, 1), num_heads=(3, 3, 3, 3))
"""


@pytest.mark.parametrize(("cls", "speedup", "kept_whole", "size"), [
    ("ResEnc", 1.5, None, 32),
    ("DynRes", 1.5, None, 32),
    ("Nested", 1.5, None, 64),  # at 32 px its narrowest network was 1.2x faster on a 2-core AMD EPYC: fixed costs
    ("NestedOneHead", 1.5, None, 32),
    ("ResUnits", 1.5, None, 64),  # at 32 px its narrowest network is barely 1.5x faster: noise decided
    ("Transformer", 1.1, "vit.patch_embedding.patch_embeddings", 32),
    ("Swin", 1.1, "swinViT.patch_embed.proj", 64),  # four halvings, and a norm that needs more than one pixel
])
def test_search_export_and_predict(tmp_path, cls, speedup, kept_whole, size):
    pytest.importorskip("dynamic_network_architectures")
    (tmp_path / "nets.py").write_text(NETS)
    spec = f"{tmp_path / 'nets.py'}:{cls}"
    torch.manual_seed(0)
    torch.save(load_user_model(spec).state_dict(), tmp_path / "w.pt")
    url, out = f"sqlite:///{tmp_path / 'studies.db'}", tmp_path / "best"
    done = run_cli("search", "--preset", "smoke", "--model", spec, "--weights", str(tmp_path / "w.pt"),
                   "--speedup", str(speedup), "--size", str(size), "--trials", "1", "--epochs", "1", "--polish-epochs", "1", "--study", cls, "--storage", url, "--out", str(out))
    assert done.returncode in FLOW, done.stderr
    card = json.loads((out / "model.json").read_text())
    assert card["param_ratio"] > 1 and card["onnx_max_abs_diff"] < 1e-3
    report = (out / "report.html").read_text()
    if kept_whole is None:
        assert card["kept_whole"] == {} and "kept whole" not in done.stderr and 'id="kept-whole"' not in report
    else:
        first_lines = done.stderr.split("measuring the dense model")[0]
        assert kept_whole in card["kept_whole"] and f"kept whole: {len(card['kept_whole'])} groups: {kept_whole}" in first_lines
        assert 'id="kept-whole"' in report and kept_whole in report
    Image.fromarray(np.full((40, 40), 100, dtype=np.uint8)).save(tmp_path / "slice.png")
    done = run_cli("predict", "--model", str(out), str(tmp_path / "slice.png"), "--out", str(tmp_path / "pred"))
    assert done.returncode == 0, done.stderr
    assert np.asarray(Image.open(tmp_path / "pred" / "slice_mask.png")).shape == (40, 40)
