"""A trained nnU-Net folder as ``--model``: built from its plans, loaded from its checkpoint, searched."""

from __future__ import annotations

import copy
import json
import pydoc

import nibabel
import numpy as np
import onnxruntime
import optuna
import pytest
import torch
from conftest import FLOW, run_cli
from nnunet_fixtures import DATASET_JSON, PLAIN, RESENC, plans, write_raw_dataset, write_trained_folder
from PIL import Image

from autosculpt.errors import UserError
from autosculpt.search.data import NnunetPreprocessing
from autosculpt.search.data._nnunet import labels_on_file_grid, prepare_case, preprocess_case, read_case
from autosculpt.search.study.settings import Settings
from autosculpt.search.study.study import study_data
from autosculpt.search.training.train import evaluate
from autosculpt.space import (Recipe, SearchSpace, apply_recipe, is_nnunet_folder, layer_groups, load_nnunet_model,
                              model_digest, nnunet_fold, write_nnunet_folder)
from autosculpt.space._nnunet import nnunet_stages

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
    data = study_data(Settings.from_dict(settings))  # nnU-Net's preprocessing of the raw data set
    assert data.image_size == (32, 32) and data.describe()["spacing"] == "1.50 x 1.50 x 10.0 mm"
    own = evaluate(load_nnunet_model(str(folder)), data.test, data.class_names).mean
    assert study.user_attrs["baseline"]["test_dice"] == pytest.approx(own, abs=1e-6)  # scored, not trained
    card = json.loads((out / "model.json").read_text())
    assert card["param_ratio"] > 1 and card["onnx_max_abs_diff"] < 1e-3
    assert any(name.startswith("decoder.transpconvs") for name in card["channels"])
    assert card["nnunet_preprocessing"]["patch_size"] == [32, 32]

    # predict writes nnU-Net's output for a raw case: CASE.nii.gz on the input's grid, the labels the
    # exported model gives the case's preprocessed slices (here on the plan's grid: nothing to resample)
    patient = data.test.groups[0]
    case = raw / "imagesTr" / f"{patient}_0000.nii.gz"
    done = run_cli("predict", "--model", str(out), str(case), "--out", str(tmp_path / "labels"))
    assert done.returncode == 0, done.stderr
    written = nibabel.load(tmp_path / "labels" / f"{patient}.nii.gz")
    assert written.shape == nibabel.load(case).shape and np.allclose(written.affine, nibabel.load(case).affine)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    rows = [i for i, group in enumerate(data.test.groups) if group == patient]
    expected = np.concatenate([session.run(None, {session.get_inputs()[0].name: data.test.images[[i]].numpy()})[0]
                               for i in rows]).argmax(1)
    assert np.array_equal(np.asarray(written.dataobj).transpose(2, 1, 0), expected)
    done = run_cli("predict", "--model", str(out), str(tmp_path / "labels"), "--out", str(tmp_path / "x"))
    assert done.returncode == 0  # a folder of one-channel cases named CASE.nii.gz: each its own case
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "slice.png")
    done = run_cli("predict", "--model", str(out), str(tmp_path / "slice.png"), "--out", str(tmp_path / "y"))
    assert done.returncode == 2 and "reads NIfTI cases" in done.stderr


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


# --- nnU-Net's preprocessing, with nnunetv2 itself as the oracle --------------------------


def anisotropic_case(folder, case="case0", zooms=(1.2, 1.3, 8.0), channels=2, seed=0):
    """A case off the plan's grid (1.5 mm): a zero border (cropped), two channels, labels 0-3."""
    rng = np.random.default_rng(seed)
    shape = (40, 36, 3)
    volumes = rng.normal(100, 30, (channels, *shape)).astype(np.float32)
    volumes[:, :4] = 0  # outside the body: cropped away
    labels = np.zeros(shape, np.uint8)
    labels[10:30, 8:20] = 1
    labels[15:25, 20:30] = 2
    labels[18:22, 12:16] = 3
    affine = np.diag([*zooms, 1.0])
    for c in range(channels):
        nibabel.Nifti1Image(volumes[c], affine).to_filename(str(folder / f"{case}_{c:04d}.nii.gz"))
    nibabel.Nifti1Image(labels, affine).to_filename(str(folder / f"{case}.nii.gz"))
    return [folder / f"{case}_{c:04d}.nii.gz" for c in range(channels)], folder / f"{case}.nii.gz"


@pytest.mark.parametrize("reader", ["SimpleITKIO", "NibabelIOWithReorient"])
@pytest.mark.parametrize("schemes", [("ZScoreNormalization", "CTNormalization"), ("RescaleTo01Normalization", "NoNormalization")])
def test_preprocessing_matches_nnunets_default_preprocessor(tmp_path, reader, schemes):
    pytest.importorskip("SimpleITK")
    oracle = pytest.importorskip("nnunetv2.preprocessing.preprocessors.default_preprocessor")
    plans_handler = pytest.importorskip("nnunetv2.utilities.plans_handling.plans_handler")
    plan = plans(PLAIN)
    plan["image_reader_writer"] = reader
    config = plan["configurations"]["2d"]
    config["normalization_schemes"], config["use_mask_for_norm"] = list(schemes), [True, False]
    plan["foreground_intensity_properties_per_channel"]["1"] = {
        "max": 200.0, "mean": 95.0, "median": 96.0, "min": 1.0, "percentile_00_5": 40.0, "percentile_99_5": 150.0, "std": 20.0}
    dataset = {**DATASET_JSON, "channel_names": {"0": "a", "1": "b"}}
    files, label_file = anisotropic_case(tmp_path)
    manager = plans_handler.PlansManager(plan)
    expected, expected_seg, _ = oracle.DefaultPreprocessor(verbose=False).run_case(
        [str(f) for f in files], str(label_file), manager, manager.get_configuration("2d"), dataset)
    ours = NnunetPreprocessing.from_plans(plan, config)
    data, seg = preprocess_case(*read_case(files, label_file, reader), ours)
    assert data.shape == expected.shape and data.shape[2:] != (40, 36)  # cropped and resampled
    assert np.abs(data - expected).max() < 1e-4
    assert np.array_equal(seg, expected_seg[0])


@pytest.mark.parametrize("reader", ["SimpleITKIO", "NibabelIOWithReorient"])
def test_a_case_off_the_plans_grid_maps_back_onto_its_own(tmp_path, reader):
    """Cropped, resampled and fitted to the patch, then back: the labels of a model that copies
    its input's sign land on the file's own grid, where the input was positive."""
    plan = NnunetPreprocessing(reader, (0, 1, 2), (1.5, 1.5), ("NoNormalization",), (False,), {}, (24, 40))
    volume = np.full((40, 36, 3), 20.0, np.float32)
    volume[:4] = 0  # outside the body: cropped away
    volume[10:30, 8:20] = 200.0
    volume[15:25, 24:30, 1:] = 200.0
    file = tmp_path / "case_0000.nii.gz"
    nibabel.Nifti1Image(volume, np.diag([-1.2, 1.3, 8.0, 1.0])).to_filename(str(file))  # x flipped: reoriented and back
    inputs, geometry = prepare_case([file], plan)
    assert inputs.shape == (3, 1, 24, 40)  # (Y, X): 36 x 1.3 mm -> 31 px, cropped to 24; 36 x 1.2 mm -> 29, padded to 40
    logits = np.concatenate([np.zeros_like(inputs), (inputs > 100).astype(np.float32) * 10], axis=1)
    image = nibabel.load(file)
    labels = labels_on_file_grid(logits, geometry, plan, image)
    assert labels.shape == image.shape
    truth = volume > 100
    assert (labels.astype(bool) == truth).mean() > 0.97  # resampled twice: edges may move a pixel
    assert labels[25, 12, 0] == 1 and labels[5, 30, 2] == 0 and labels[0, 0, 0] == 0


# --- back into nnU-Net ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("architecture", [PLAIN, RESENC], ids=["PlainConvUNet", "ResidualEncoderUNet"])
def test_the_pruned_network_goes_back_into_nnunet(tmp_path, architecture):
    """Searched one width per stage, exported as a trained-model folder: nnunetv2's own predictor loads it
    and labels a test case as autosculpt predict and the ONNX model do (test-time mirroring off)."""
    predictor_module = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")
    folder = write_trained_folder(tmp_path / "results", plans(architecture), nnunet_network(architecture).state_dict())
    raw = write_raw_dataset(tmp_path / "raw" / "Dataset027_Heart")
    url, out, pruned = f"sqlite:///{tmp_path / 'studies.db'}", tmp_path / "best", tmp_path / "pruned"
    done = run_cli("search", "--preset", "smoke", "--model", str(folder), "--data", str(raw), "--space", "nnunet-stages",
                   "--speedup", "1.5", "--trials", "1", "--study", "nn", "--storage", url, "--out", str(out))
    assert done.returncode in FLOW, done.stderr
    done = run_cli("export", "nn", "--storage", url, "--format", "nnunet", "--out", str(pruned))
    assert done.returncode in FLOW, done.stderr
    features = json.loads((pruned / "plans.json").read_text())["configurations"]["2d"]["architecture"]["arch_kwargs"]
    assert features["features_per_stage"] != [8, 16, 32, 32]  # pruned, one width per stage
    assert {p.name for p in pruned.iterdir()} >= {"plans.json", "dataset.json", "fold_0", "model.onnx", "model.json"}

    predictor = predictor_module.nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False,
                                                 device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(pruned), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    patient = sorted(p.name.removesuffix("_0000.nii.gz") for p in (raw / "imagesTr").iterdir())[0]
    case = raw / "imagesTr" / f"{patient}_0000.nii.gz"
    (tmp_path / "nnunet").mkdir()
    predictor.predict_from_files_sequential([[str(case)]], [str(tmp_path / "nnunet" / patient)], False, True, None)
    by_nnunet = np.asarray(nibabel.load(tmp_path / "nnunet" / f"{patient}.nii.gz").dataobj)
    done = run_cli("predict", "--model", str(pruned), str(case), "--out", str(tmp_path / "ours"))
    assert done.returncode == 0, done.stderr
    by_us = np.asarray(nibabel.load(tmp_path / "ours" / f"{patient}.nii.gz").dataobj)
    assert by_us.shape == by_nnunet.shape
    # nnU-Net sums its sliding window in float16, weighted by a Gaussian that is ~0 at the patch's
    # corners: pixels where the best two logits are within 0.02 may differ; nowhere else.
    inputs, _ = prepare_case([case], NnunetPreprocessing.from_dict(json.loads((pruned / "model.json").read_text())
                                                                   ["nnunet_preprocessing"]))
    session = onnxruntime.InferenceSession(str(pruned / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {session.get_inputs()[0].name: inputs[[z]]})[0] for z in range(len(inputs))])
    top_two = np.sort(logits, axis=1)[:, -2:]
    clear = (top_two[:, 1] - top_two[:, 0] > 0.02).transpose(2, 1, 0)  # on the file's grid (plan's spacing: no resampling)
    assert np.array_equal(by_us, logits.argmax(1).transpose(2, 1, 0))  # autosculpt predict = the ONNX model
    assert np.array_equal(by_us[clear], by_nnunet[clear]) and clear.mean() > 0.5  # a barely trained net: close calls


def test_a_network_of_mixed_stage_widths_is_refused_for_nnunet(tmp_path, trained):
    folder, network = trained
    fold = nnunet_fold(str(folder))
    model = load_nnunet_model(str(folder))
    x = torch.zeros(1, 1, 32, 32)
    groups = layer_groups(model, x)
    mixed = apply_recipe(model, Recipe(keep={groups[0].name: 0.5}), x)
    with pytest.raises(UserError, match=r"stage 0 of the pruned network has layers of \[4, 8\] channels.*nnunet-stages"):
        write_nnunet_folder(fold, mixed, tmp_path / "out")
    assert SearchSpace.load("nnunet-stages")._params(groups) == {
        g.name: f"keep.stage{nnunet_stages([x.name for x in groups])[g.name]}" for g in groups}
    assert nnunet_stages(["encoder.stages.0.0.convs.0.conv", "encoder.stages.3.0.convs.1.conv",
                          "decoder.transpconvs.0", "decoder.stages.2.convs.0.conv"]) == {
        "encoder.stages.0.0.convs.0.conv": 0, "encoder.stages.3.0.convs.1.conv": 3,
        "decoder.transpconvs.0": 2, "decoder.stages.2.convs.0.conv": 0}
