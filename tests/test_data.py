"""The data layer: the generated cardiac set, the ACDC and folder readers, the preview and the CLI."""

from __future__ import annotations

import json

import nibabel
import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from autosculpt.errors import UserError
from autosculpt.search.data import SegmentationData, _cardiac, load_data, save_preview
from autosculpt.search.data._files import fit

SMALL = {"image_size": 32, "patients": 8}


pytestmark = pytest.mark.usefixtures("cache")  # a fresh cache per test (conftest)


def same_tensors(a: SegmentationData, b: SegmentationData) -> bool:
    pairs = [(getattr(a, name), getattr(b, name)) for name in ("train", "val", "test")]
    return all(torch.equal(x.images, y.images) and torch.equal(x.masks, y.masks) for x, y in pairs)


# --- generated set -------------------------------------------------------------------


def test_generator_is_deterministic_and_seed_sensitive():
    first = _cardiac.generate(32, seed=3, patients=2)
    again = _cardiac.generate(32, seed=3, patients=2)
    other = _cardiac.generate(32, seed=4, patients=2)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])


def test_load_is_deterministic_across_caches(cache, tmp_path, monkeypatch):
    first = load_data(None, seed=1, **SMALL)
    monkeypatch.setenv("AUTOSCULPT_CACHE", str(tmp_path))  # a cold cache generates again
    again = load_data(None, seed=1, **SMALL)
    assert same_tensors(first, again) and first.fingerprint == again.fingerprint
    other = load_data(None, seed=2, **SMALL)
    assert not torch.equal(first.test.images, other.test.images)
    assert other.fingerprint != first.fingerprint


def test_shapes_dtypes_labels_and_normalisation():
    data = load_data(None, **SMALL)
    assert data.num_classes == 4 and data.in_channels == 1 and data.image_size == (32, 32)
    assert data.class_names == ("background", "RV", "myocardium", "LV") and data.source == "generated"
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == torch.float32 and split.images.shape[1:] == (1, 32, 32)
        assert split.masks.dtype == torch.uint8 and split.masks.shape == (len(split), 32, 32)
        assert len(split.groups) == len(split.images) == len(split.masks)
        assert 0 <= split.masks.min() and split.masks.max() < 4
        means, stds = split.images.mean(dim=(1, 2, 3)), split.images.std(dim=(1, 2, 3), unbiased=False)
        assert torch.allclose(means, torch.zeros_like(means), atol=1e-4)
        assert torch.allclose(stds, torch.ones_like(stds), atol=1e-3)


def test_every_class_present_at_smoke_size():
    masks = torch.cat([s.masks for s in (load_data(None, **SMALL).train, load_data(None, **SMALL).test)])
    present = torch.stack([(masks == c).flatten(1).any(1) for c in range(4)], 1).float().mean(0)
    assert present[2] == 1 and present[3] == 1  # myocardium and LV in every slice
    assert present[1] >= 0.7  # the RV may vanish near the apex, not before


def test_splits_are_disjoint_by_patient_70_15_15():
    data = load_data(None, image_size=32, patients=20)
    groups = [set(split.groups) for split in (data.train, data.val, data.test)]
    assert [len(g) for g in groups] == [14, 3, 3]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert data.describe()["splits"]["val"] == {"slices": 3 * _cardiac.SLICES, "groups": 3}


def test_cache_hit_returns_equal_arrays_without_generating(cache, monkeypatch):
    first = load_data(None, **SMALL)
    assert len(list(cache.glob("data/*.npz"))) == 1
    monkeypatch.setattr(_cardiac, "generate", lambda *args: pytest.fail("generated despite the cache"))
    again = load_data(None, **SMALL)
    assert same_tensors(first, again) and first.fingerprint == again.fingerprint


def test_torn_cache_file_is_regenerated(cache):
    first = load_data(None, **SMALL)
    (cached,) = cache.glob("data/*.npz")
    cached.write_bytes(b"torn")
    assert same_tensors(load_data(None, **SMALL), first)


def test_describe_is_json_safe():
    summary = load_data(None, **SMALL).describe()
    assert json.loads(json.dumps(summary)) == summary
    assert set(summary) >= {"source", "splits", "image_size", "class_names", "fingerprint"}


@pytest.mark.parametrize("size, hint", [(50, "48 or 64"), (8, "16")])
def test_image_size_must_be_a_multiple_of_16(size, hint):
    with pytest.raises(UserError, match=f"image size {size}.*use {hint}"):
        load_data(None, image_size=size)


# --- fitting to size -----------------------------------------------------------------


def test_fit_scales_the_long_side_and_pads_the_short_one():
    image = np.arange(40 * 80, dtype=np.float32).reshape(1, 1, 40, 80)
    mask = np.zeros((1, 40, 80), dtype=np.int64)
    mask[:, :, 40:] = 2
    images, masks = fit(image, mask, 32)
    assert images.shape == (1, 1, 32, 32) and masks.shape == (1, 32, 32)
    assert images.dtype == np.float32 and masks.dtype == np.uint8
    assert (masks[0, :8] == 0).all() and (masks[0, 24:] == 0).all()  # 40x80 -> 16x32, padded 8 above and below
    assert (masks[0, 8:24, 16:] == 2).all() and (masks[0, 8:24, :16] == 0).all()
    assert images[0, 0, 0, 0] == images[0, 0, 8:24].min()  # padded with the slice's minimum


# --- ACDC layout ---------------------------------------------------------------------


def write_nifti(path, array, zooms=(1.25, 1.5, 8.0)) -> None:
    nibabel.Nifti1Image(np.asarray(array), np.diag([*zooms, 1.0])).to_filename(str(path))


def make_acdc(root, patients=4, shape=(20, 24, 3), frames=(1, 12)):
    """patientNNN/patientNNN_frameFF[_gt].nii.gz with random images and labels 0-3."""
    rng = np.random.default_rng(0)
    for p in range(1, patients + 1):
        folder = root / f"patient{p:03d}"
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text("ED: 1\n")
        for f in frames:
            write_nifti(folder / f"patient{p:03d}_frame{f:02d}.nii.gz", rng.random(shape).astype(np.float32))
            write_nifti(folder / f"patient{p:03d}_frame{f:02d}_gt.nii.gz", rng.integers(0, 4, shape).astype(np.uint8))
    return root


def test_acdc_every_slice_of_every_frame_split_by_patient(tmp_path):
    data = load_data(make_acdc(tmp_path / "acdc", patients=5), image_size=32, seed=0)
    assert data.class_names == ("background", "RV", "myocardium", "LV") and data.source == str(tmp_path / "acdc")
    splits = (data.train, data.val, data.test)
    assert sum(len(s) for s in splits) == 5 * 2 * 3
    assert [len(set(s.groups)) for s in splits] == [3, 1, 1]
    assert set().union(*(set(s.groups) for s in splits)) == {f"patient{p:03d}" for p in range(1, 6)}
    assert not set(data.train.groups) & (set(data.val.groups) | set(data.test.groups))
    assert data.test.images.shape[1:] == (1, 32, 32) and data.test.masks.max() <= 3
    assert same_tensors(data, load_data(tmp_path / "acdc", image_size=32, seed=0))
    # One volume per frame; voxel size from the header, rows and columns scaled as the 20 x 24 slices were fitted.
    assert sorted(set(data.test.volumes)) == [f"{data.test.groups[0]}_frame01", f"{data.test.groups[0]}_frame12"]
    assert np.allclose(data.test.spacing, [1.25 * 20 / 27, 1.5 * 24 / 32, 8.0]) and data.spacing_unit == "mm"


def test_acdc_under_training_folder(tmp_path):
    make_acdc(tmp_path / "database" / "training", patients=3)
    assert len(load_data(tmp_path / "database", image_size=16).train) == 6


# --- images/ + masks/ layout ---------------------------------------------------------


def make_folder(root, files=4, size=(40, 30), top_label=2):
    """images/caseN.png (grey) with masks/caseN.png holding labels 0..top_label."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for n in range(files):
        pixels = rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"case{n}.png")
        labels = np.zeros((size[1], size[0]), dtype=np.uint8)
        labels[5:15, 5:15] = n % (top_label + 1)
        labels[0, 0] = top_label
        Image.fromarray(labels).save(root / "masks" / f"case{n}.png")
    return root


def test_folder_of_pngs_split_by_file(tmp_path):
    data = load_data(make_folder(tmp_path / "pngs", files=6), image_size=16)
    assert data.class_names == ("background", "class1", "class2") and data.num_classes == 3
    assert data.in_channels == 1 and data.image_size == (16, 16)
    groups = [set(s.groups) for s in (data.train, data.val, data.test)]
    assert sum(len(g) for g in groups) == 6 and not (groups[0] & groups[1] or groups[0] & groups[2])
    assert max(int(s.masks.max()) for s in (data.train, data.val, data.test)) == 2


def test_folder_class_names_from_classes_txt(tmp_path):
    root = make_folder(tmp_path / "pngs", top_label=1)
    (root / "classes.txt").write_text("background\ntumour\noedema\n")
    assert load_data(root, image_size=16).class_names == ("background", "tumour", "oedema")


def test_folder_with_only_background_has_two_classes(tmp_path):
    root = make_folder(tmp_path / "pngs", top_label=0)
    assert load_data(root, image_size=16).class_names == ("background", "class1")


def test_group_by_is_refused_where_patients_are_known(tmp_path):
    with pytest.raises(UserError, match="--group-by without --data"):
        load_data(None, group_by="p", **SMALL)
    with pytest.raises(UserError, match="ACDC"):
        load_data(make_acdc(tmp_path / "acdc", patients=3), image_size=16, group_by="p")


# --- bad input: one line naming the file, the problem and the fix --------------------


def _break_acdc(root, how):
    make_acdc(root, patients=3)
    patient = root / "patient002"
    if how == "image without mask":
        (patient / "patient002_frame12_gt.nii.gz").unlink()
        return patient / "patient002_frame12.nii.gz"
    if how == "mask without image":
        (patient / "patient002_frame01.nii.gz").unlink()
        return patient / "patient002_frame01_gt.nii.gz"
    if how == "shape":
        write_nifti(patient / "patient002_frame01_gt.nii.gz", np.zeros((20, 20, 3), np.uint8))
        return patient / "patient002_frame01_gt.nii.gz"
    if how == "label 4 outside":
        write_nifti(patient / "patient002_frame01_gt.nii.gz", np.full((20, 24, 3), 4, np.uint8))
        return patient / "patient002_frame01_gt.nii.gz"
    if how == "non-integer":
        write_nifti(patient / "patient002_frame01_gt.nii.gz", np.full((20, 24, 3), 1.5, np.float32))
        return patient / "patient002_frame01_gt.nii.gz"
    if how == "unreadable":
        (patient / "patient002_frame01.nii.gz").write_bytes(b"not a volume")
        return patient / "patient002_frame01.nii.gz"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["image without mask", "mask without image", "shape", "label 4 outside", "non-integer", "unreadable"]
)
def test_bad_acdc_names_the_file(tmp_path, how):
    bad = _break_acdc(tmp_path / "acdc", how)
    with pytest.raises(UserError, match=how.split()[0]) as caught:
        load_data(tmp_path / "acdc", image_size=16)
    assert str(bad) in str(caught.value) and ": " in str(caught.value) and "\n" not in str(caught.value)


def _break_folder(root, how):
    make_folder(root)
    if how == "image without mask":
        (root / "masks" / "case1.png").unlink()
        return root / "images" / "case1.png"
    if how == "mask without image":
        (root / "images" / "case2.png").unlink()
        return root / "masks" / "case2.png"
    if how == "size":
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "case0.png")
        return root / "masks" / "case0.png"
    if how == "label 3 outside":
        (root / "classes.txt").write_text("background\nkidney\ntumour\n")
        labels = np.zeros((30, 40), np.uint8)
        labels[3, 3] = 3
        Image.fromarray(labels).save(root / "masks" / "case3.png")
        return root / "masks" / "case3.png"
    if how == "negative":
        (root / "masks" / "case0.png").unlink()
        Image.fromarray(np.full((30, 40), -1, np.int32)).save(root / "masks" / "case0.tif")
        return root / "masks" / "case0.tif"
    if how == "non-integer":
        (root / "masks" / "case0.png").unlink()
        Image.fromarray(np.full((30, 40), 0.5, np.float32)).save(root / "masks" / "case0.tif")
        return root / "masks" / "case0.tif"
    if how == "unreadable":
        (root / "images" / "case3.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return root / "images" / "case3.png"
    if how == "JPEG mask":
        Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / "masks" / "case9.jpg")
        return root / "masks" / "case9.jpg"
    if how == "RGB mask":
        Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(root / "masks" / "case0.png")
        return root / "masks" / "case0.png"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "image without mask", "mask without image", "size", "label 3 outside", "negative",
        "non-integer", "unreadable", "JPEG mask", "RGB mask",
    ],
)
def test_bad_folder_names_the_file(tmp_path, how):
    bad = _break_folder(tmp_path / "pngs", how)
    with pytest.raises(UserError, match=how.split()[0]) as caught:
        load_data(tmp_path / "pngs", image_size=16)
    assert str(bad) in str(caught.value) and ": " in str(caught.value) and "\n" not in str(caught.value)


def test_bad_paths_name_the_folder(tmp_path):
    cases = {
        tmp_path / "missing": "no such folder",
        tmp_path / "empty": "empty folder",
        tmp_path / "other": "matches no layout",
        tmp_path / "few": "only 2 patients",
        tmp_path / "nomasks": "has no masks/ folder",
    }
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    make_folder(tmp_path / "few", files=2)
    (tmp_path / "nomasks" / "images").mkdir(parents=True)
    for path, problem in cases.items():
        with pytest.raises(UserError, match=problem) as caught:
            load_data(path, image_size=16)
        assert path.name in str(caught.value) or problem.startswith("only")


# --- preview and CLI -----------------------------------------------------------------


def test_save_preview_writes_a_grid(tmp_path):
    out = save_preview(load_data(None, **SMALL), tmp_path / "sub" / "preview.png", count=3, split="train")
    with Image.open(out) as image:
        assert image.mode == "RGB" and image.width == 4 * 192 and image.height > 2 * 192
    with pytest.raises(UserError, match="unknown split"):
        save_preview(load_data(None, **SMALL), tmp_path / "x.png", split="holdout")


def test_cli_preview_info_and_errors(tmp_path, cache):
    out = tmp_path / "preview.png"
    env = {"AUTOSCULPT_CACHE": str(cache)}
    done = run_cli("data", "preview", "--size", "32", "--seed", "1", "--out", str(out), env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(b"\x89PNG")
    done = run_cli("data", "info", "--size", "32", "--seed", "1", env=env, timeout=120)
    assert done.returncode == 0 and "myocardium" in done.stdout and "fingerprint" in done.stdout, done.stderr
    done = run_cli("data", "info", "--data", str(tmp_path / "nowhere"), env=env, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "nowhere: no such folder" in done.stderr


@pytest.mark.parametrize("args", [("data", "--help"), ("data", "preview", "--help")])
def test_cli_help_has_examples(args):
    done = run_cli(*args, timeout=120)
    assert done.returncode == 0 and "examples:" in done.stdout and "autosculpt data" in done.stdout


def test_the_default_input_size_follows_the_data(tmp_path):
    from autosculpt.search.cli.search import describe
    from autosculpt.search.data import suggested_image_size
    from autosculpt.search.study.settings import with_preset

    folder = tmp_path / "pairs"  # longer sides 200, 220 and 500: median 220
    (folder / "images").mkdir(parents=True)
    for n, (width, height) in enumerate([(200, 150), (150, 220), (500, 400)]):
        Image.fromarray(np.zeros((height, width), dtype=np.uint8)).save(folder / "images" / f"p{n}_s0.png")
    assert suggested_image_size(folder) == (224, 220)
    big = tmp_path / "big"
    (big / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((600, 700), dtype=np.uint8)).save(big / "images" / "p0_s0.png")
    assert suggested_image_size(big) == (256, 700)  # capped
    assert suggested_image_size(make_acdc(tmp_path / "acdc", patients=3)) == (32, 24)
    settings, _ = with_preset("default", {"image_size": 224, "budget_ms": 5.0})
    assert describe(settings, "image_size", 220) == "image_size=224 (the data's median slice side 220 px, to a multiple of 16, at most 256)"


def test_a_second_frame_is_the_same_patient_in_systole():
    """ACDC's two frames: same patient and volume naming by frame, the LV cavity smaller."""
    images, masks, groups, volumes = _cardiac.generate(48, seed=0, patients=2, frames=2)
    one = _cardiac.generate(48, seed=0, patients=2)
    assert images.shape == (40, 48, 48) and groups[:20] == ("patient001",) * 20
    assert volumes[::10] == ("patient001_frame1", "patient001_frame2", "patient002_frame1", "patient002_frame2")
    assert np.array_equal(images[:10], one[0][:10]) and np.array_equal(masks[:10], one[1][:10])  # frame 1 as before
    lv = (masks == _cardiac.LV).reshape(4, 10, -1).sum(-1)
    assert (lv[1] <= lv[0]).all() and lv[1].sum() < 0.8 * lv[0].sum() and lv[3].sum() < 0.8 * lv[2].sum()
