"""Real Optuna studies shaped exactly as the search stores them, for the report tests.

``create_study`` sets the study attributes (settings, baseline, environment);
``add_trials`` appends trials of the given kinds (per-stage keep ratios ``keep.enc2``,
a width multiplier and a method) with plausible figures from a toy latency/Dice model; ``mark_exported`` adds the ``export`` attribute. Everything is
deterministic for a given seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from autosculpt.reports import QualitativeSample
from autosculpt.search.study.best import best_feasible

STAGES = {"enc1": 32, "enc2": 64, "enc3": 128, "enc4": 256, "bottleneck": 512,
          "dec4": 256, "dec3": 128, "dec2": 64, "dec1": 32}
BASE_CHANNELS = {f"{stage}.conv{i}": width for stage, width in STAGES.items() for i in (1, 2)}
BASE_PARAMS = 7_765_892
BASE_MACS = 3_920_000_000
BASE_LATENCY_MS = 120.0
BASE_DICE = 0.905
CLASSES = ("RV", "myocardium", "LV")
KINDS = ("feasible", "infeasible", "pruned", "failed", "running")
CPU = "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"


def settings(budget_ms: float = 20.0, storage: str = "postgresql://search:s3cret@db.local:5432/studies") -> dict:
    return {
        "budget_ms": budget_ms, "model": "unet", "data": "generated", "image_size": 96,
        "space": {"keep": [0.1, 1.0], "width": [0.25, 0.5, 1.0], "round_to": 4},
        "target": {"url": None, "threads": 1, "runtime": "ort", "batch": 1},
        "seed": 0, "trials": 200, "timeout_s": None, "epochs": 6, "storage": storage,
    }


def latency_stats(median_ms: float) -> dict:
    return {"median_ms": median_ms, "p90_ms": median_ms * 1.08, "min_ms": median_ms * 0.95,
            "max_ms": median_ms * 1.3, "runs": 50, "cv": 0.04, "threads": 1, "runtime": "ort",
            "cpu_model": CPU, "input_shape": [1, 1, 96, 96]}


def baseline() -> dict:
    return {"dice": BASE_DICE, "dice_per_class": {"RV": 0.87, "myocardium": 0.88, "LV": 0.965},
            "latency": latency_stats(BASE_LATENCY_MS), "params": BASE_PARAMS, "macs": BASE_MACS,
            "channels": dict(BASE_CHANNELS), "file_size": 31_100_000}


def environment() -> dict:
    return {"python": "3.11.2", "torch": "2.13.0", "optuna": optuna.__version__, "onnxruntime": "1.22.0",
            "torch_pruning": "1.6.1", "cpu_model": CPU, "cores": 2, "platform": "Linux-6.1-x86_64"}


def create_study(storage: str, name: str = "demo", *, budget_ms: float = 20.0, with_baseline: bool = True,
                 masked_storage: str | None = None) -> optuna.Study:
    """A new study (maximise validation Dice) with the study attributes the search writes."""
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    study.set_user_attr("settings", settings(budget_ms, masked_storage or settings()["storage"]))
    study.set_user_attr("environment", environment())
    if with_baseline:
        study.set_user_attr("baseline", baseline())
    return study


def mixed_kinds(n: int, seed: int = 0) -> list[str]:
    """A realistic mix: mostly feasible, some over budget, a few pruned and failed."""
    rng = random.Random(seed)
    return rng.choices(KINDS[:4], weights=(60, 25, 10, 5), k=n)


def add_trials(study: optuna.Study, kinds: Iterable[str], *, seed: int = 0) -> None:
    """Append one trial per kind (see :data:`KINDS`), figures drawn from ``seed``."""
    rng = random.Random(seed)
    budget = study.user_attrs["settings"]["budget_ms"]
    for kind in kinds:
        study.add_trial(_trial(kind, rng, budget))


def mark_exported(study: optuna.Study) -> int:
    """Store the ``export`` attribute for the best feasible trial; returns its number."""
    best = best_feasible(study)
    latency = best.user_attrs["latency_ms"] * 0.97
    study.set_user_attr("export", {
        "trial": best.number, "dir": "exports/demo-trial", "file_size": int(31_100_000 / best.user_attrs["param_ratio"]),
        "dice": best.values[0] - 0.002, "dice_per_class": best.user_attrs["dice_per_class"],
        "latency": latency_stats(latency)})
    return best.number


def sample(seed: int = 0, size: int = 96, with_predictions: bool = True) -> QualitativeSample:
    """A synthetic short-axis slice: RV crescent, myocardium ring, LV blood pool."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2 - 5)
    truth = np.zeros((size, size), dtype=np.int64)
    truth[np.hypot(yy - size / 2, xx - size / 2 + 18) < 16] = 1
    truth[r < 20] = 2
    truth[r < 13] = 3
    image = 0.2 + 0.6 * (truth == 3) + 0.35 * (truth == 1) + 0.15 * (truth == 2) + rng.normal(0, 0.05, truth.shape)
    shifted = np.roll(truth, 2, axis=1)
    return QualitativeSample(
        image=image, truth=truth,
        baseline=truth if with_predictions else None, exported=shifted if with_predictions else None,
        dice_baseline=0.95 if with_predictions else None, dice_exported=0.91 if with_predictions else None)


def _trial(kind: str, rng: random.Random, budget: float) -> optuna.trial.FrozenTrial:
    fast = kind in ("feasible", "pruned")
    width = rng.choice([0.25, 0.5]) if fast else 1.0
    keep = {stage: round(rng.uniform(0.1, 0.7) if fast else rng.uniform(0.6, 1.0), 3) for stage in STAGES}
    channels = {layer: max(1, round(n * keep[layer.split(".")[0]] * width)) for layer, n in BASE_CHANNELS.items()}
    shrink = (sum(channels.values()) / sum(BASE_CHANNELS.values())) ** 2
    latency = BASE_LATENCY_MS * shrink + 1.5 + rng.uniform(0, 0.5)
    params = int(BASE_PARAMS * shrink)
    attrs = {"latency_ms": latency, "latency_p90_ms": latency * 1.08, "latency": latency_stats(latency),
             "params": params, "macs": int(BASE_MACS * shrink), "param_ratio": BASE_PARAMS / params,
             "mac_ratio": 1 / shrink, "channels": channels, "feasible": latency <= budget,
             "finetuned": latency <= budget, "time_measure_s": rng.uniform(2, 5)}
    params_ = {f"keep.{stage}": v for stage, v in keep.items()} | {"width": width, "method": rng.choice(["prune", "scale"])}
    dists = {f"keep.{stage}": FloatDistribution(0.1, 1.0) for stage in keep} | {
        "width": CategoricalDistribution([0.25, 0.5, 1.0]), "method": CategoricalDistribution(["prune", "scale"])}
    common = {"params": params_, "distributions": dists, "system_attrs": {"constraints:latency": latency - budget}}
    if kind == "running":
        return create_trial(state=TrialState.RUNNING, user_attrs=attrs, **common)
    if kind == "failed":
        attrs = {"fail_reason": "RuntimeError: <oom> while fine-tuning", "time_measure_s": attrs["time_measure_s"]}
        return create_trial(state=TrialState.FAIL, user_attrs=attrs, **common)
    curve = _dice_curve(rng, keep, width, epochs=2 if kind == "pruned" else 6)
    attrs |= {"dice_by_epoch": curve, "time_finetune_s": 20.0 * len(curve) * width, "time_eval_s": rng.uniform(1, 3)}
    if kind == "pruned":
        return create_trial(state=TrialState.PRUNED, user_attrs=attrs, **common)
    dice = curve[-1] if kind == "feasible" else rng.uniform(0.05, 0.4)
    if kind == "infeasible":
        attrs |= {"dice_by_epoch": [], "time_finetune_s": 0.0}
    attrs |= {"dice": dice, "dice_per_class": {c: min(1.0, dice + d) for c, d in zip(CLASSES, (-0.03, -0.02, 0.05))}}
    return create_trial(state=TrialState.COMPLETE, values=[dice], user_attrs=attrs, **common)


def _dice_curve(rng: random.Random, keep: dict, width: float, epochs: int) -> list[float]:
    capacity = sum(keep.values()) / len(keep) * width
    final = BASE_DICE - 0.12 * (1 - capacity) ** 3 + rng.gauss(0, 0.006)
    return [final - 0.3 / (e + 1) ** 1.5 for e in range(epochs)]
