"""``autosculpt predict`` on NIfTI volumes: same name, grid and header; slices along the third axis; cine frame by frame."""

from __future__ import annotations

import json

import nibabel
import numpy as np
import onnxruntime
import pytest
import torch
from conftest import run_cli
from PIL import Image

from autosculpt.search.cli import main
from autosculpt.search.deploy.card import measured_threads
from autosculpt.search.deploy.predict import load_session, segment
from autosculpt.search.onnx_io import to_onnx
from autosculpt.space.unet import UNet, preset_config

AFFINE = np.array([[0.0, -1.5, 0.0, 10.0], [1.2, 0.0, 0.0, -5.0], [0.0, 0.0, 8.0, 3.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    (folder / "model.onnx").write_bytes(to_onnx(UNet(preset_config("unet-tiny", 1, 4)).eval(), (1, 1, 32, 32)))
    return folder


def scan(path, shape, seed=0):
    """A volume with an oblique affine, stored as scaled int16, as scanners write them."""
    volume = np.random.default_rng(seed).normal(100, 30, size=shape).astype(np.float32)
    volume[10:25, 5:20] += 200  # something for the network to see
    image = nibabel.Nifti1Image(volume, AFFINE)
    image.header.set_qform(AFFINE, code=1)
    image.header.set_sform(AFFINE, code=2)
    image.header.set_data_dtype(np.int16)
    image.header.set_slope_inter(0.5, 10.0)
    nibabel.save(image, path)
    return nibabel.load(path)


def test_a_volume_gives_a_label_volume_on_its_grid_sliced_along_the_third_axis(model_dir, tmp_path):
    given = scan(tmp_path / "patient001_frame01.nii.gz", (40, 30, 5))
    done = run_cli("predict", "--model", str(model_dir), str(tmp_path / "patient001_frame01.nii.gz"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    labels = nibabel.load(tmp_path / "out" / "patient001_frame01.nii.gz")
    assert labels.shape == given.shape and labels.get_data_dtype() == np.uint8
    assert np.allclose(labels.affine, given.affine) and labels.header.get_zooms() == given.header.get_zooms()
    assert (int(labels.header["qform_code"]), int(labels.header["sform_code"])) == (1, 2)
    session = load_session(model_dir)
    volume, predicted = given.get_fdata(dtype=np.float32), np.asarray(labels.dataobj)
    for z in range(volume.shape[2]):  # each through-plane slice is predicted as a 2D image at its own size
        assert np.array_equal(predicted[:, :, z], segment(session, volume[None, :, :, z]))


def test_a_cine_volume_is_predicted_frame_by_frame(model_dir, tmp_path):
    given = scan(tmp_path / "cine.nii", (24, 28, 3, 2))
    done = run_cli("predict", "--model", str(model_dir), str(tmp_path), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    labels = np.asarray(nibabel.load(tmp_path / "out" / "cine.nii").dataobj)
    frames = given.get_fdata(dtype=np.float32)
    assert labels.shape == (24, 28, 3, 2)
    session = load_session(model_dir)
    for t in range(2):
        assert np.array_equal(labels[:, :, 1, t], segment(session, frames[None, :, :, 1, t]))


def test_a_folder_mixes_volumes_and_images(model_dir, tmp_path):
    scan(tmp_path / "a.nii.gz", (32, 32, 2))
    Image.fromarray(np.full((20, 30), 90, dtype=np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "notes.txt").write_text("not an image")
    done = run_cli("predict", "--model", str(model_dir), str(tmp_path), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b_mask.png", "b_overlay.png"]


@pytest.mark.parametrize("name, expected", [("missing.nii.gz", "not found"), ("notes.txt", "not an image or volume"),
                                            ("broken.nii.gz", "unreadable NIfTI")])
def test_bad_inputs_are_one_line(model_dir, tmp_path, capsys, name, expected):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.nii.gz").write_bytes(b"not gzip")
    assert main(["predict", "--model", str(model_dir), str(tmp_path / name), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1


def test_inference_runs_at_the_thread_count_the_model_was_measured_at(model_dir, tmp_path):
    assert measured_threads(model_dir) == 1  # no model card
    folder = tmp_path / "measured"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((model_dir / "model.onnx").read_bytes())
    (folder / "model.json").write_text(json.dumps({"latency": {"threads": 2, "median_ms": 1.0}}))
    assert measured_threads(folder) == 2
    assert isinstance(load_session(folder), onnxruntime.InferenceSession)
