"""Patients, not slices, are split: subfolders, the name up to the first ``_``, or --group-by."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from autosculpt.errors import UserError
from autosculpt.search.data import load_data

pytestmark = pytest.mark.usefixtures("cache")  # a fresh cache per test (conftest)


def make_patients(root, names):
    """images/NAME.png with masks/NAME.png for each relative NAME (folders made as needed)."""
    rng = np.random.default_rng(2)
    for name in names:
        for folder in ("images", "masks"):
            (root / folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / "images" / name)
        labels = np.zeros((20, 20), np.uint8)
        labels[4:9, 4:9] = 1
        Image.fromarray(labels).save(root / "masks" / name)
    return root


def split_groups_of(data):
    return {name: set(getattr(data, name).groups) for name in ("train", "val", "test")}


def assert_no_patient_in_two_splits(data, patients):
    """Each patient pNNN (read from the slice's group, whatever grouping made it) is in one split only."""
    splits = {name: {re.search(r"p\d{3}", group)[0] for group in groups} for name, groups in split_groups_of(data).items()}
    shared = (splits["train"] & splits["val"]) | (splits["train"] & splits["test"]) | (splits["val"] & splits["test"])
    assert not shared, f"patients in two splits: {sorted(shared)}"
    assert set().union(*split_groups_of(data).values()) == set(patients)


SIX = [f"p{n:03d}" for n in range(6)]


def test_flat_folder_groups_by_name_before_first_underscore(tmp_path):
    root = make_patients(tmp_path / "flat", [f"{p}_s{k}.png" for p in SIX for k in range(3)])
    for seed in range(4):
        data = load_data(root, image_size=16, seed=seed)
        assert_no_patient_in_two_splits(data, SIX)
        assert sum(len(getattr(data, name)) for name in ("train", "val", "test")) == 18
        assert all(data.train.groups.count(p) == 3 for p in set(data.train.groups))


def test_subfolders_are_patients(tmp_path):
    root = make_patients(tmp_path / "nested", [f"{p}/slice_{k}.png" for p in SIX for k in range(3)])
    data = load_data(root, image_size=16)
    assert_no_patient_in_two_splits(data, SIX)
    assert data.describe()["splits"]["train"]["groups"] == len(split_groups_of(data)["train"]) == 4


def test_group_by_regex_overrides_the_default(tmp_path):
    # the default would make "scan" one patient; the regex finds the patient id inside the name
    names = [f"scan_{p}_{k}.png" for p in SIX for k in range(2)]
    root = make_patients(tmp_path / "regex", names)
    with pytest.raises(UserError, match="only 1 patients"):
        load_data(root, image_size=16)
    assert_no_patient_in_two_splits(load_data(root, image_size=16, group_by=r"_(p\d+)_"), SIX)
    assert_no_patient_in_two_splits(load_data(root, image_size=16, group_by=r"p\d+"), SIX)  # no group: whole match


@pytest.mark.parametrize(
    "group_by, problem",
    [(r"_(q\d+)_", "finds no patient in 'scan_p000_0'"), (r"(p\d+", "invalid regex"), (r"(x)?p\d", "finds no patient")],
)
def test_group_by_refusals_are_one_line(tmp_path, group_by, problem):
    root = make_patients(tmp_path / "regex", [f"scan_{p}_0.png" for p in SIX])
    with pytest.raises(UserError, match=re.escape(problem)) as caught:
        load_data(root, image_size=16, group_by=group_by)
    message = str(caught.value)
    assert "\n" not in message and group_by in message and ": " in message
    if "finds no" in problem:
        assert str(root / "images" / "scan_p000_0.png") in message


def test_cli_info_counts_patients_and_takes_group_by(tmp_path, cache):
    root = make_patients(tmp_path / "flat", [f"scan_{p}_{k}.png" for p in SIX for k in range(3)])
    env = {"AUTOSCULPT_CACHE": str(cache)}
    done = run_cli("data", "info", "--data", str(root), "--size", "16", "--group-by", r"_(p\d+)_", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    counts = re.findall(r"(\d+) slices from (\d+) patients", done.stdout)
    assert sorted(counts) == [("12", "4"), ("3", "1"), ("3", "1")], done.stdout
    done = run_cli("data", "info", "--data", str(root), "--size", "16", "--group-by", "(", env=env, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "invalid regex" in done.stderr
