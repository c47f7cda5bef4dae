"""A trained nnU-Net folder as ``--model``: built from its plans, loaded from its checkpoint, searched."""

from __future__ import annotations

import copy
import json
import pydoc

import optuna
import pytest
import torch
from conftest import FLOW, run_cli
from nnunet_fixtures import PLAIN, RESENC, plans, write_raw_dataset, write_trained_folder

from autosculpt.errors import UserError
from autosculpt.search.data import load_data
from autosculpt.search.train import evaluate
from autosculpt.space import is_nnunet_folder, load_nnunet_model, model_digest, nnunet_fold

pytest.importorskip("dynamic_network_architectures")


def nnunet_network(architecture: dict, seed: int = 0) -> torch.nn.Module:
    """The network as nnU-Net's get_network_from_plans builds it for training (deep supervision on)."""
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture["_kw_requires_import"]:
        kwargs[key] = pydoc.locate(kwargs[key]) if kwargs[key] else None
    torch.manual_seed(seed)
    return pydoc.locate(architecture["network_class_name"])(input_channels=1, num_classes=4, deep_supervision=True, **kwargs)


@pytest.fixture
def trained(tmp_path):
    """(trained-model folder, the network whose weights its checkpoint holds)."""
    network = nnunet_network(PLAIN)
    return write_trained_folder(tmp_path / "results", plans(PLAIN), network.state_dict()), network


@pytest.mark.parametrize("architecture", [PLAIN, RESENC], ids=["PlainConvUNet", "ResidualEncoderUNet"])
def test_the_folder_builds_the_plans_network_with_the_checkpoints_weights(tmp_path, architecture):
    network = nnunet_network(architecture).eval()
    folder = write_trained_folder(tmp_path / "results", plans(architecture), network.state_dict())
    assert is_nnunet_folder(str(folder)) and is_nnunet_folder(str(folder / "fold_0"))
    model = load_nnunet_model(str(folder)).eval()
    assert type(model).__name__ == type(network).__name__
    assert all(torch.equal(v, network.state_dict()[k]) for k, v in model.state_dict().items())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        heads = network(x)
        assert torch.equal(model(x), heads[0])  # the full-resolution output, as nnU-Net predicts
        assert [h.shape for h in model.all_outputs(x)] == [h.shape for h in heads]  # every head, for pruning


def test_a_fold_is_chosen_as_nnunet_would(tmp_path):
    network = nnunet_network(PLAIN)
    only_one = write_trained_folder(tmp_path / "a", plans(PLAIN), network.state_dict(), folds=(3,))
    assert nnunet_fold(str(only_one)).fold == 3
    several = write_trained_folder(tmp_path / "b", plans(PLAIN), network.state_dict(), folds=(0, 2))
    assert nnunet_fold(str(several)).fold == 0 and nnunet_fold(str(several), 2).fold == 2
    assert nnunet_fold(str(several / "fold_2")).spec == str(several / "fold_2")
    with pytest.raises(UserError, match=r"has no fold 1 with checkpoint_final.pth: choose --fold from 0, 2"):
        nnunet_fold(str(several), 1)
    assert model_digest(str(several / "fold_0")) != model_digest(str(several / "fold_2"))  # each its checkpoint


def configuration_3d(plan: dict) -> dict:
    three = copy.deepcopy(plan)
    config = three["configurations"].pop("2d")
    config["architecture"]["arch_kwargs"]["conv_op"] = "torch.nn.modules.conv.Conv3d"
    config["patch_size"] = [16, 32, 32]
    three["configurations"]["3d_fullres"] = config
    return three


def cascade(plan: dict) -> dict:
    staged = copy.deepcopy(plan)
    staged["configurations"]["3d_cascade_fullres"] = {"inherits_from": "2d", "previous_stage": "3d_lowres"}
    return staged


@pytest.mark.parametrize(("plan", "configuration", "dataset", "message"), [
    (configuration_3d(plans(PLAIN)), "3d_fullres", None, r"is a 3d configuration .*Conv3d.*train nnU-Net's 2d configuration"),
    (cascade(plans(PLAIN)), "3d_cascade_fullres", None, r"is a cascade stage \(it needs 3d_lowres's predictions\)"),
    (plans(PLAIN), "2d", {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3]},
                          "regions_class_order": [1, 2]}, r"region-based labels: autosculpt searches one label per pixel"),
    (plans({**PLAIN, "network_class_name": "os.system"}), "2d", None, r"plans.json names os.system: autosculpt builds only"),
    (plans(PLAIN), "3d_lowres", None, r"names configuration '3d_lowres', which its plans.json lacks \(it has 2d\)"),
])
def test_what_cannot_be_searched_is_refused_in_one_line(tmp_path, plan, configuration, dataset, message):
    folder = write_trained_folder(tmp_path, plan, {}, configuration=configuration, dataset=dataset)
    with pytest.raises(UserError, match=message) as info:
        load_nnunet_model(str(folder))
    assert "\n" not in str(info.value)


def test_a_folder_without_a_checkpoint_or_with_other_weights_is_one_line(tmp_path, trained):
    folder, _ = trained
    (folder / "fold_0" / "checkpoint_final.pth").unlink()
    with pytest.raises(UserError, match=r"has no fold_N/checkpoint_final.pth: finish training a fold"):
        nnunet_fold(str(folder))
    other = write_trained_folder(tmp_path / "other", plans(PLAIN), nnunet_network(RESENC).state_dict())
    with pytest.raises(UserError, match=r"does not fit the network its plans describe .*: use the plans.json the checkpoint"):
        load_nnunet_model(str(other))


@pytest.mark.slow
def test_search_a_trained_nnunet_folder_scores_its_own_weights_and_exports(tmp_path, trained):
    folder, network = trained
    raw = write_raw_dataset(tmp_path / "raw" / "Dataset027_Heart")
    url, out = f"sqlite:///{tmp_path / 'studies.db'}", tmp_path / "best"
    env = {"nnUNet_raw": str(tmp_path / "raw")}  # --data defaults to $nnUNet_raw/<the plans' data set>
    done = run_cli("search", "--preset", "smoke", "--model", str(folder), "--speedup", "1.5", "--trials", "1",
                   "--study", "nn", "--storage", url, "--out", str(out), env=env)
    assert done.returncode in FLOW, done.stderr
    study = optuna.load_study(study_name="nn", storage=url)
    settings = study.user_attrs["settings"]
    assert settings["model"] == str(folder / "fold_0") and settings["data"] == str(raw)
    data = load_data(str(raw), image_size=32, seed=0, patients=settings["patients"])
    own = evaluate(load_nnunet_model(str(folder)), data.test, data.class_names).mean
    assert study.user_attrs["baseline"]["test_dice"] == pytest.approx(own, abs=1e-6)  # scored, not trained
    card = json.loads((out / "model.json").read_text())
    assert card["param_ratio"] > 1 and card["onnx_max_abs_diff"] < 1e-3
    assert any(name.startswith("decoder.transpconvs") for name in card["channels"])


def test_fold_and_weights_are_refused_where_they_do_not_fit(tmp_path, trained):
    folder, _ = trained
    done = run_cli("search", "--preset", "smoke", "--speedup", "2", "--fold", "1", "--storage", f"sqlite:///{tmp_path}/s.db")
    assert done.returncode == 2 and "--fold 1 needs an nnU-Net trained-model folder" in done.stderr
    done = run_cli("search", "--preset", "smoke", "--speedup", "2", "--model", str(folder), "--weights", "w.pt",
                   "--storage", f"sqlite:///{tmp_path}/s.db")
    assert done.returncode == 2 and "brings its own weights" in done.stderr
    done = run_cli("search", "--preset", "smoke", "--speedup", "2", "--model", str(folder), "--fold", "4",
                   "--storage", f"sqlite:///{tmp_path}/s.db")
    assert done.returncode == 2 and "has no fold 4" in done.stderr and done.stderr.count("\n") == 1
