"""A study's baseline belongs to the study: workers and export use its stored state dict, bit for bit.
So does its space, where the study chose it (depth past the width floor)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from autosculpt.errors import UserError
from autosculpt.reports import get_report_data, render_report
from autosculpt.search.cache import write_atomically
from autosculpt.search.data import load_data
from autosculpt.search.latency import machine_reference
from autosculpt.search.study.anchors import ANCHOR_KEEPS, anchor_onnx
from autosculpt.search.study.settings import with_preset
from autosculpt.search.study.study import create_study, prepare, study_baseline
from autosculpt.search.training.baseline import baseline_key, build_model


def test_workers_use_the_study_baseline_not_their_own_cache(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    settings, _ = with_preset("smoke", {"budget_ms": 50.0, "trials": 1})
    creator = prepare(settings)
    study, creator = create_study("own-baseline", url, settings, creator)
    settings = creator.settings
    stored = {k: v.clone() for k, v in creator.baseline.model.state_dict().items()}
    # Another worker's cache holds other weights (another torch, a torn write, another run).
    state_path = creator.baseline.state_path
    original = state_path.read_bytes()
    try:
        torch.save({k: v + 1.0 if v.is_floating_point() else v for k, v in stored.items()}, state_path)
        assert not torch.equal(prepare(settings).baseline.model.state_dict()[next(iter(stored))], next(iter(stored.values())))
        worker = prepare(settings, study_baseline(study, url))
    finally:
        state_path.write_bytes(original)
    assert all(torch.equal(worker.baseline.model.state_dict()[k], v) for k, v in stored.items())
    assert worker.baseline.state_path is None


def test_a_study_calibrates_against_this_machines_anchors(tmp_path):
    """The baseline's figure (so the --speedup budget) and the study reference's calibration
    are timed against the nearest anchor, cached per machine: studies on one machine share
    one scale instead of the state the machine was in while each was created."""
    settings, _ = with_preset("smoke", {"speedup": 1.5, "trials": 1})
    context = prepare(settings)
    study, context = create_study("anchored", f"sqlite:///{tmp_path / 'studies.db'}", settings, context)
    settings = context.settings
    shape = tuple(context.example.shape)
    anchors = {machine_reference(anchor_onnx(keep, shape), shape, context.target)[0].median_ms for keep in ANCHOR_KEEPS}
    baseline, reference = study.user_attrs["baseline"]["latency"], study.user_attrs["latency_reference"]["stats"]
    assert baseline["reference_ms"] in anchors and reference["reference_ms"] in anchors
    assert baseline["measurements"] == reference["measurements"] == 3
    assert settings.budget_ms == pytest.approx(baseline["median_ms"] / 1.5)


def test_the_cache_key_names_the_torch_version(monkeypatch):
    data = load_data(None, image_size=32, seed=0, patients=6)
    key = baseline_key("unet-tiny", data, 0, 1, None)
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert baseline_key("unet-tiny", data, 0, 1, None) != key


def test_a_failed_cache_write_keeps_the_old_file_and_leaves_no_partial_one(tmp_path):
    path = tmp_path / "state.pt"
    path.write_bytes(b"whole old file")

    def torn(partial):
        partial.write_bytes(b"half a")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomically(path, torn)
    assert path.read_bytes() == b"whole old file"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    write_atomically(path, lambda partial: partial.write_bytes(b"new"))
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_a_preset_given_weights_starts_from_them(tmp_path):
    """--weights with a preset (a baseline trained elsewhere, e.g. on a GPU) is loaded, not ignored."""
    data = load_data(None, image_size=32, seed=0, patients=6)
    trained = build_model("unet-tiny", data)
    torch.nn.init.constant_(next(trained.parameters()), 0.25)
    torch.save(trained.state_dict(), tmp_path / "tiny.pt")
    loaded = build_model("unet-tiny", data, str(tmp_path / "tiny.pt"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), trained.state_dict().values()))
    torch.save(build_model("unet-small", data).state_dict(), tmp_path / "small.pt")
    with pytest.raises(UserError, match="does not fit the unet-tiny preset"):
        build_model("unet-tiny", data, str(tmp_path / "small.pt"))


def test_the_default_space_adds_depth_only_past_the_width_floor(tmp_path):
    """Width alone cannot reach a budget below its narrowest network: the default space then
    searches depth too (stored, so workers and resume do); within it, or with a space the
    user chose, the space stays as given."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    settings, _ = with_preset("smoke", {"budget_ms": 50.0, "trials": 1})
    context = prepare(settings)
    study, roomy = create_study("roomy", url, settings, context)
    assert roomy.space == context.space and roomy.settings.space == "auto"
    assert 0 < study.user_attrs["width_floor_ms"] < 50.0

    study, tight = create_study("tight", url, replace(settings, budget_ms=study.user_attrs["width_floor_ms"] / 4), context)
    assert tight.settings.space == "per-layer-depth" and tight.space.depth_drop == (0, 1, 2)
    assert study.user_attrs["settings"]["space_spec"]["depth"] == {"drop": [0, 1, 2], "convs": [2, 1]}
    assert any("depth.drop" in t.system_attrs.get("fixed_params", {}) for t in study.trials)  # the warm start's
    assert "the search also dropped levels" in render_report(get_report_data(study))

    chosen = replace(settings, budget_ms=0.001, space="per-layer")
    study, kept = create_study("chosen", url, chosen, replace(context, settings=chosen))
    assert kept.space == context.space and "width_floor_ms" not in study.user_attrs
