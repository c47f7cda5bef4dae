"""Per-patient figures: Dice and HD95 per structure and volume, at the volume's spacing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autosculpt.search.data import Split, load_data
from autosculpt.search.data._cardiac import FIELD_OF_VIEW_MM, SLICE_MM
from autosculpt.search.training.metrics import per_volume, summary

CLASSES = ("background", "RV", "LV")


def square(rows: slice, slices: int = 3, size: int = 30) -> np.ndarray:
    mask = np.zeros((slices, size, size), dtype=np.int64)
    mask[:, rows, 10:20] = 1
    return mask


def split_of(truth: np.ndarray, volumes: tuple[str, ...], spacing) -> Split:
    return Split(images=torch.zeros(len(truth), 1, *truth.shape[1:]), masks=torch.from_numpy(truth),
                 groups=volumes, volumes=volumes, spacing=np.tile(spacing, (len(truth), 1)))


@pytest.mark.parametrize("slices", [1, 3])  # a single slice is measured in 2D, a stack in 3D
def test_hd95_is_in_the_units_of_the_row_spacing_for_a_shift_along_rows(slices):
    truth, pred = square(slice(10, 20), slices), square(slice(13, 23), slices)  # 3 rows apart
    for spacing, expected in (([1.0, 1.0, 10.0], 3.0), ([2.0, 1.0, 10.0], 6.0), ([1.0, 5.0, 10.0], 3.0)):
        scores = per_volume(torch.from_numpy(pred), split_of(truth, ("p1",) * slices, spacing), CLASSES)
        assert scores[0].hd95["RV"] == pytest.approx(expected)
        assert scores[0].dice["RV"] == pytest.approx(0.7)


def test_missing_structures_have_no_hd95_and_the_summary_leaves_them_out():
    truth = np.concatenate([square(slice(10, 20)), square(slice(10, 20))])
    pred = truth.copy()
    pred[3:] = 0  # the second volume's RV is missed entirely
    volumes = ("p1",) * 3 + ("p2",) * 3
    scores = per_volume(torch.from_numpy(pred), split_of(truth, volumes, [1.0, 1.0, 1.0]), CLASSES)
    assert [s.volume for s in scores] == ["p1", "p2"]
    assert scores[0].dice == {"RV": 1.0, "LV": 1.0} and scores[0].hd95 == {"RV": 0.0, "LV": None}  # no LV anywhere
    assert scores[1].dice["RV"] == 0.0 and scores[1].hd95["RV"] is None
    rv = summary(scores)["RV"]
    assert rv["dice_mean"] == 0.5 and rv["dice_std"] == 0.5 and rv["hd95_mean"] == 0.0 and rv["hd95_volumes"] == 1


def test_generated_data_states_its_spacing_and_one_volume_per_patient():
    data = load_data(None, image_size=48, seed=0, patients=6)
    assert data.test.volumes == data.test.groups and data.spacing_unit == "mm"
    assert np.allclose(data.test.spacing, [FIELD_OF_VIEW_MM / 48, FIELD_OF_VIEW_MM / 48, SLICE_MM])
    assert data.describe()["spacing"] == f"{FIELD_OF_VIEW_MM / 48:.2f} x {FIELD_OF_VIEW_MM / 48:.2f} x {SLICE_MM:.1f} mm"
