"""Several input channels: RGB image folders and nnU-Net's one-NIfTI-file-per-channel cases,
from the data set through the baseline to predict, and one-line errors where channels differ."""

from __future__ import annotations

import json

import nibabel
import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from autosculpt.errors import UserError
from autosculpt.search.cli import main
from autosculpt.search.data import load_data, normalise, save_preview
from autosculpt.search.deploy.predict import load_session, predict_files, segment
from autosculpt.search.onnx_io import to_onnx
from autosculpt.search.training.baseline import baseline_key, example_input, get_baseline
from autosculpt.space.unet import UNet, preset_config

AFFINE = np.array([[0.0, -1.5, 0.0, 10.0], [1.2, 0.0, 0.0, -5.0], [0.0, 0.0, 8.0, 3.0], [0.0, 0.0, 0.0, 1.0]])

pytestmark = pytest.mark.usefixtures("cache")  # a fresh cache per test (conftest)


def rgb_image(seed: int, shape=(32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """A colour slice whose square differs from the background in hue only, and its mask."""
    rng = np.random.default_rng(seed)
    pixels = np.empty((*shape, 3), dtype=np.uint8)
    pixels[:] = (200, 60, 60) + rng.integers(0, 20, (*shape, 3))
    top, left = rng.integers(4, min(shape) - 16, 2)
    pixels[top : top + 12, left : left + 12] = (60, 140, 200)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[top : top + 12, left : left + 12] = 1
    return pixels, labels


def rgb_folder(root, patients=4, slices=3, mode="RGB"):
    """images/pN_sM.png in ``mode`` (RGB or RGBA) with masks/pN_sM.png."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for p in range(patients):
        for s in range(slices):
            pixels, labels = rgb_image(10 * p + s)
            Image.fromarray(pixels).convert(mode).save(root / "images" / f"p{p}_s{s}.png")
            Image.fromarray(labels).save(root / "masks" / f"p{p}_s{s}.png")
    return root


def write_nifti(path, volume, affine=AFFINE):
    nibabel.Nifti1Image(np.asarray(volume, dtype=np.float32), affine).to_filename(str(path))


def channel_case(folder, case, shape=(32, 32, 2), channels=2, seed=0):
    """nnU-Net's layout: folder/CASE_0000.nii.gz, CASE_0001.nii.gz, ... (channel c holds c + noise,
    so the order shows), and the raw channels as (C, X, Y, Z)."""
    rng = np.random.default_rng(seed)
    volumes = np.stack([c * 100 + rng.normal(0, 1 + c, shape) for c in range(channels)]).astype(np.float32)
    for c, volume in enumerate(volumes):
        write_nifti(folder / f"{case}_{c:04d}.nii.gz", volume)
    return volumes


def nnunet_folder(root, cases=4, shape=(32, 32, 2), folders=("images", "masks")):
    """images/caseN_0000.nii.gz, caseN_0001.nii.gz with masks/caseN.nii.gz (labels 0-2);
    ``folders`` ("imagesTr", "labelsTr") for nnU-Net's raw data set."""
    images, masks = (root / folder for folder in folders)
    images.mkdir(parents=True)
    masks.mkdir()
    raw = {}
    for n in range(cases):
        raw[f"case{n}"] = channel_case(images, f"case{n}", shape, seed=n)
        labels = np.zeros(shape, dtype=np.uint8)
        labels[8:20, 8:20] = 1 + n % 2
        write_nifti(masks / f"case{n}.nii.gz", labels)
    return root, raw


def model_dir(folder, net, channels, size=32):
    """A folder holding ``net`` as model.onnx for (1, channels, size, size) inputs, as export writes it."""
    folder.mkdir()
    (folder / "model.onnx").write_bytes(to_onnx(net.eval(), (1, channels, size, size)))
    return folder


def one_line_error(capsys, *argv) -> str:
    capsys.readouterr()  # what ran before
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# --- RGB -----------------------------------------------------------------------------


def test_rgb_folder_trains_a_three_channel_baseline_and_predicts(tmp_path, capsys):
    data = load_data(rgb_folder(tmp_path / "rgb"), image_size=32)
    assert data.in_channels == 3 and data.test.images.shape[1:] == (3, 32, 32)
    rgba = load_data(rgb_folder(tmp_path / "rgba", mode="RGBA"), image_size=32)
    assert rgba.fingerprint == data.fingerprint  # alpha dropped
    planes = data.train.images.flatten(2)  # each channel of each image normalised on its own
    assert torch.allclose(planes.mean(2), torch.zeros(1), atol=1e-4)
    assert torch.allclose(planes.std(2, unbiased=False), torch.ones(1), atol=1e-3)
    assert example_input(data).shape == (1, 3, 32, 32)
    grey = _grey_copy(tmp_path / "rgb", tmp_path / "grey")
    assert baseline_key("unet-tiny", data, 0, 1, None) != baseline_key("unet-tiny", grey, 0, 1, None)

    baseline = get_baseline("unet-tiny", data, epochs=1)
    assert baseline.model.enc1.conv1.in_channels == 3
    model = model_dir(tmp_path / "model", baseline.model, 3)
    written = predict_files(model, [tmp_path / "rgb" / "images" / "p0_s0.png"], tmp_path / "out", quiet=True)
    mask = np.asarray(Image.open(written[0]))
    assert written == [tmp_path / "out" / "p0_s0_mask.png"] and mask.shape == (32, 32) and mask.max() <= 1
    assert Image.open(tmp_path / "out" / "p0_s0_overlay.png").mode == "RGB"
    save_preview(data, tmp_path / "preview.png", count=2)  # a colour tile beside its overlay

    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "scan.png")
    err = one_line_error(capsys, "predict", "--model", str(model), str(tmp_path / "scan.png"), "--out", str(tmp_path / "o"))
    assert "model expects 3 channel(s), scan.png has 1" in err and not (tmp_path / "o").exists()


def _grey_copy(source, root):
    """The data set of ``source``'s slices saved as grey in ``root``."""
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
        for file in (source / folder).iterdir():
            Image.open(file).convert("L").save(root / folder / file.name)
    data = load_data(root, image_size=32)
    assert data.in_channels == 1
    return data


def test_a_grey_model_reads_colour_images_as_grey(tmp_path):
    torch.manual_seed(0)
    model = model_dir(tmp_path / "model", UNet(preset_config("unet-tiny", 1, 2)), 1)
    pixels, _ = rgb_image(0, (24, 28))
    Image.fromarray(pixels).save(tmp_path / "colour.png")
    Image.fromarray(pixels).convert("L").save(tmp_path / "grey.png")
    colour, grey = predict_files(model, [tmp_path / "colour.png", tmp_path / "grey.png"], tmp_path / "out", quiet=True)
    assert np.array_equal(np.asarray(Image.open(colour)), np.asarray(Image.open(grey)))


def test_grey_and_colour_images_in_one_data_set_are_one_line(tmp_path, capsys):
    root = rgb_folder(tmp_path / "mixed")
    Image.open(root / "images" / "p2_s1.png").convert("L").save(root / "images" / "p2_s1.png")
    with pytest.raises(UserError, match="1 channel.*p0_s0.png has 3: give every image the same channels") as caught:
        load_data(root, image_size=32)
    assert str(root / "images" / "p2_s1.png") in str(caught.value) and "\n" not in str(caught.value)
    assert "p2_s1.png: 1 channel(s)" in one_line_error(capsys, "data", "info", "--data", str(root), "--size", "32")


def test_data_info_shows_the_channels(tmp_path):
    done = run_cli("data", "info", "--data", str(rgb_folder(tmp_path / "rgb")), "--size", "32", timeout=120)
    assert done.returncode == 0, done.stderr
    (row,) = [line for line in done.stdout.splitlines() if "channels" in line]
    assert row.replace("│", " ").split() == ["channels", "3"]


# --- nnU-Net channel files -----------------------------------------------------------


@pytest.mark.parametrize("labels", [{"background": 0, "RV": 1, "LV": 2}, {"0": "background", "1": "RV", "2": "LV"}])
def test_nnunet_raw_data_set_loads_with_its_label_names(tmp_path, labels):
    root, _ = nnunet_folder(tmp_path / "Dataset001_Heart", folders=("imagesTr", "labelsTr"))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "cine", "1": "t2"}, "labels": labels,
                                                   "numTraining": 4, "file_ending": ".nii.gz"}))
    data = load_data(root, image_size=32)
    assert data.in_channels == 2 and data.class_names == ("background", "RV", "LV")


def test_nnunet_region_labels_are_one_line(tmp_path, capsys):
    root, _ = nnunet_folder(tmp_path / "regions", folders=("imagesTr", "labelsTr"))
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "whole": [1, 2], "core": 2}}))
    err = one_line_error(capsys, "data", "info", "--data", str(root), "--size", "32")
    assert "region-based labels are not supported" in err and "classes.txt" in err


def test_nnunet_channel_files_load_as_channels_in_order(tmp_path):
    root, raw = nnunet_folder(tmp_path / "nnunet")
    data = load_data(root, image_size=32)
    assert data.in_channels == 2 and data.spacing_unit == "mm" and data.num_classes == 3
    assert sorted({*data.train.volumes, *data.val.volumes, *data.test.volumes}) == [f"case{n}" for n in range(4)]
    case, z = data.test.volumes[0], 0
    assert torch.allclose(data.test.images[0], torch.from_numpy(normalise(raw[case][:, :, :, z])), atol=1e-5)
    assert np.allclose(data.test.spacing[0], [1.2, 1.5, 8.0])  # the voxel size of the header


@pytest.mark.parametrize("how, expected", [
    ("channels differ", "case2_0000.nii.gz: 1 channel(s), but case0_0000.nii.gz has 2"),
    ("gap", "case1_0002.nii.gz: no case1_0001 beside it"),
    ("4D image", "4D volume: give one 3D volume per frame (no time axis), and channels as CASE_0000.nii.gz"),
    ("grid", "case3.nii.gz: shape (32, 32, 2) differs from case3_0001.nii.gz (30, 32, 2)"),
])
def test_bad_channel_files_are_one_line(tmp_path, how, expected):
    root, _ = nnunet_folder(tmp_path / "nnunet")
    images = root / "images"
    if how == "channels differ":
        (images / "case2_0001.nii.gz").unlink()
    elif how == "gap":
        (images / "case1_0001.nii.gz").rename(images / "case1_0002.nii.gz")
    elif how == "4D image":
        write_nifti(images / "case1_0001.nii.gz", np.zeros((32, 32, 2, 3)))
    else:
        write_nifti(images / "case3_0001.nii.gz", np.zeros((30, 32, 2)))
    with pytest.raises(UserError) as caught:
        load_data(root, image_size=32)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_predict_writes_one_label_volume_per_case_on_the_reference_grid(tmp_path, capsys):
    torch.manual_seed(0)
    model = model_dir(tmp_path / "model", UNet(preset_config("unet-tiny", 2, 3)), 2)
    scans = tmp_path / "scans"
    scans.mkdir()
    raw = channel_case(scans, "brain", shape=(40, 30, 3))
    (written,) = predict_files(model, [scans], tmp_path / "out", quiet=True)
    labels, reference = nibabel.load(written), nibabel.load(scans / "brain_0000.nii.gz")
    assert written == tmp_path / "out" / "brain.nii.gz" and labels.shape == reference.shape == (40, 30, 3)
    assert np.allclose(labels.affine, AFFINE) and labels.get_data_dtype() == np.uint8
    session = load_session(model)
    assert np.array_equal(np.asarray(labels.dataobj)[:, :, 1], segment(session, raw[:, :, :, 1]))

    write_nifti(tmp_path / "scan.nii.gz", raw[0])
    err = one_line_error(capsys, "predict", "--model", str(model), str(tmp_path / "scan.nii.gz"), "--out", str(tmp_path / "o"))
    assert "model expects 2 channel(s), scan.nii.gz has 1: give each case's channels as CASE_0000.nii.gz" in err
    channel_case(scans, "brain", shape=(40, 30, 3), channels=3)
    err = one_line_error(capsys, "predict", "--model", str(model), str(scans), "--out", str(tmp_path / "o"))
    assert "model expects 2 channel(s), brain has 3: give brain_0000 to brain_0001" in err
