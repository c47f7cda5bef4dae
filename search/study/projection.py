"""Projecting a sampled shape onto the latency budget: the widest network of that shape within it.

A trial samples a *shape*: how channels are shared among layer groups (a keep ratio per
group, relative to the widest). The projection scales the whole shape by one width and
looks for the widest network whose *measured* latency on the target is within the goal:
a :class:`LatencyModel` of the target, fitted on the study's own measurements, proposes a
width; real measurements decide. Nothing is ever returned over the goal. A channel plan
is measured once per target and input shape: :class:`LatencyCache` keeps the figures in
the study's user attributes, which every worker reads through the storage.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import optuna
import torch
from torch import nn

from ...space import LayerGroup
from ..latency import LatencyStats

CACHE_PREFIX = "latency:"
# A projection is done once a network measures within 90-98 % of the goal: trials are compared
# at nearly one latency, so a trial's score ranks its shape, not the share of the budget it got
# (at 80-98 % TPE's networks landed at 84-85 % of a 30x budget, random's at 92-93 %: docs/results.md#peers).
BAND = 0.9
# A network counts as within the goal up to EDGE of it: one measured at the goal's edge
# re-measures over it about half the time (bench/peers.py, 2026-12-06: a winner measured 0.766 ms
# in its trial for a 0.766 ms budget, 0.77 ms at export; its study then missed the budget).
EDGE = 0.98
AIM = (BAND + EDGE) / 2  # the fraction of the goal the model aims at: the band's middle, clear of the noise
MAX_PROBES = 6  # measured widths per projection (cached plans cost nothing)
FLOOR_WIDTH = 1e-3  # a width whose plan keeps every group at its floor (min_channels)
PRIOR_EXPONENT = 0.8  # latency ~ cost ** 0.8 before the study has measured enough (bench/latency.py)


@dataclass(frozen=True)
class Probe:
    """One measured width of a projection: its plan, the model's prediction and the figure."""

    width: float
    plan: dict[str, int]
    cost: float
    predicted_ms: float
    stats: LatencyStats

    def to_dict(self) -> dict:
        return {"width": self.width, "cost": self.cost, "predicted_ms": self.predicted_ms,
                "latency_ms": self.stats.median_ms, "measurements": self.stats.measurements}


def within_goal(stats: LatencyStats, goal_ms: float) -> bool:
    """Whether a figure is within ``goal_ms`` clear of its edge (see EDGE)."""
    return stats.median_ms <= EDGE * goal_ms


def chosen(probes: Sequence[Probe], goal_ms: float) -> Probe | None:
    """The widest probe that measured within ``goal_ms`` (:func:`within_goal`); None when every one was over."""
    within = [p for p in probes if within_goal(p.stats, goal_ms)]
    return max(within, key=lambda p: p.width, default=None)


class CostModel:
    """A cheap cost figure of a channel plan, from the baseline's multiply-accumulates.

    Each layer group's root layer carries its share of the baseline's convolution MACs;
    a plan keeping the fraction r of a group costs about share x r^2 there (its inputs
    shrink with the previous group). 1.0 is the baseline.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, groups: Sequence[LayerGroup]):
        macs = _layer_macs(model, example_input)
        total = sum(macs.values()) or 1.0
        self.channels = {g.name: g.channels for g in groups}
        self.shares = {g.name: macs.get(g.name, 0.0) / total for g in groups}
        self.rest = max(0.0, 1.0 - sum(self.shares.values()))

    def __call__(self, plan: dict[str, int]) -> float:
        ratios = {name: plan.get(name, channels) / channels for name, channels in self.channels.items()}
        mean_ratio = sum(ratios.values()) / len(ratios)
        return sum(share * ratios[name] ** 2 for name, share in self.shares.items()) + self.rest * mean_ratio


@dataclass(frozen=True)
class LatencyModel:
    """log(latency ms) = ``intercept`` + ``exponent`` x log(cost), fitted on measured plans."""

    intercept: float
    exponent: float

    @classmethod
    def fit(cls, points: Sequence[tuple[float, float]]) -> "LatencyModel":
        """Least squares on (cost, latency ms) points; with too few or too alike costs, the
        prior exponent through their mean. Needs at least one point."""
        x = np.log([c for c, _ in points])
        y = np.log([ms for _, ms in points])
        exponent = PRIOR_EXPONENT
        if len(points) >= 3 and np.ptp(x) > 0.5:
            exponent = float(np.clip(np.polyfit(x, y, 1)[0], 0.3, 1.5))
        return cls(float(np.mean(y - exponent * x)), exponent)

    def predict(self, cost: float) -> float:
        return math.exp(self.intercept + self.exponent * math.log(cost))

    def through(self, cost: float, latency_ms: float) -> "LatencyModel":
        """The same exponent through one measured point: the local model of one shape."""
        return LatencyModel(math.log(latency_ms) - self.exponent * math.log(cost), self.exponent)

    def between(self, low: "Probe", high: "Probe") -> "LatencyModel":
        """The line through two measured widths of one shape in log-log (regula falsi); the same
        exponent through ``low`` when the two do not rise with cost (kernels change with channels)."""
        rise = math.log(high.stats.median_ms / low.stats.median_ms)
        run = math.log(high.cost / low.cost) if high.cost > 0 and low.cost > 0 else 0.0
        if run <= 0 or rise <= 0:
            return self.through(low.cost, low.stats.median_ms)
        exponent = rise / run
        return LatencyModel(math.log(low.stats.median_ms) - exponent * math.log(low.cost), exponent)


class LatencyCache:
    """Figures of measured channel plans, per target, input shape and precision, in a study's user attributes.

    A key hashes the target (without its URL's credentials: none are stored), the input
    shape, the reference's calibrated latency, the plan and, other than fp32, the deployed
    precision; each entry is its own attribute, so concurrent workers never overwrite
    each other's entries.
    """

    def __init__(self, study: optuna.Study, target: dict, input_shape: Sequence[int], reference_ms: float | None):
        self.study = study
        self.context = {"target": target, "shape": list(input_shape), "reference_ms": reference_ms}

    def key(self, plan: dict[str, int], precision: str = "fp32") -> str:
        entry = {**self.context, "plan": plan} if precision == "fp32" else {**self.context, "plan": plan, "precision": precision}
        return CACHE_PREFIX + hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:24]

    def get(self, plan: dict[str, int], precision: str = "fp32") -> LatencyStats | None:
        entry = self.study.user_attrs.get(self.key(plan, precision))
        return None if entry is None else LatencyStats.from_dict(entry["stats"])

    def put(self, plan: dict[str, int], cost: float, stats: LatencyStats, precision: str = "fp32") -> None:
        self.study.set_user_attr(self.key(plan, precision), {"cost": cost, "stats": stats.to_dict(), "precision": precision})

    def points(self, precision: str = "fp32") -> list[tuple[float, float]]:
        """(cost, latency ms) of every plan measured in this study at ``precision``."""
        return [(entry["cost"], entry["stats"]["median_ms"]) for key, entry in self.study.user_attrs.items()
                if key.startswith(CACHE_PREFIX) and entry.get("precision", "fp32") == precision]


def project(plan_of: Callable[[float], dict[str, int]], cost_of: Callable[[dict[str, int]], float],
            measure: Callable[[float, dict[str, int]], LatencyStats], model: LatencyModel, goal_ms: float,
            max_probes: int = MAX_PROBES) -> list[Probe]:
    """Measure widths of one shape until one lands within ``BAND``-``EDGE`` of ``goal_ms``.

    ``plan_of(width)`` gives the channel plan at a width in (0, 1], ``cost_of(plan)`` its
    cost figure and ``measure(width, plan)`` its latency. The model proposes each width,
    shifted through the last measurement; widths over the goal bound the search from
    above, widths within it from below. Stops after ``max_probes`` measurements or when
    no untried plan lies between the bounds. Once one width is within the goal and one
    over it, the next width interpolates between them. When only two probes remain and
    every one so far was over the goal, the next measures the narrowest plan: where latency barely falls
    with width (fixed costs), the model creeps down in small steps, and a shape counts as
    out of reach only once its narrowest plan measured over. Returns the probes in order;
    pick the answer with :func:`chosen`.
    """
    probes: list[Probe] = []
    low, high = 0.0, 1.0 + 1e-9  # the widest width within the goal, the narrowest over it
    local = model
    within = over = None  # the probes at ``low`` and ``high``
    while len(probes) < max_probes:
        tried = [p.plan for p in probes]
        all_over_with_two_left = within is None and len(probes) == max_probes - 2 > 0
        width = ((_narrowest_width(plan_of, high, tried) if all_over_with_two_left else None)
                 or _width_for(AIM * goal_ms, local, plan_of, cost_of, low, high, tried))
        if width is None:
            break
        plan = plan_of(width)
        cost = cost_of(plan)
        stats = measure(width, plan)
        probe = Probe(width, plan, cost, model.predict(cost), stats)
        probes.append(probe)
        if within_goal(stats, goal_ms):
            low, within = width, probe
            if stats.median_ms >= BAND * goal_ms or width >= 1.0:
                break
        else:
            high, over = width, probe
        local = model.between(within, over) if within and over else model.through(cost, stats.median_ms)
    return probes


def _width_for(aim_ms: float, model: LatencyModel, plan_of, cost_of, low: float, high: float,
               tried: list[dict]) -> float | None:
    """The next width to measure, strictly between ``low`` and ``high``, whose plan is untried.

    The widest width whose plan the model predicts within ``aim_ms``; when even the next
    plan above ``low`` is predicted over it (channel counts move in steps), that next plan,
    the smallest step up; then the middle of the bounds. None when none is untried.
    """
    top = min(high, 1.0)

    def fits(width: float) -> bool:
        return model.predict(cost_of(plan_of(width))) <= aim_ms

    candidates = []
    if fits(top):
        candidates.append(top)
    else:
        a, b = low, top  # fits(a) or a is the lower bound; never fits(b)
        for _ in range(30):
            middle = (a + b) / 2
            a, b = (middle, b) if fits(middle) else (a, middle)
        if a > low:
            candidates.append(a)
    candidates += [_next_plan_above(low, top, plan_of), (low + top) / 2]
    for candidate in candidates:
        if candidate is not None and low < candidate < high and plan_of(candidate) not in tried:
            return candidate
    return None


def _narrowest_width(plan_of, high: float, tried: list[dict]) -> float | None:
    """The widest width below ``high`` whose plan is the narrowest one; None when that plan was tried or lies at ``high``."""
    narrowest = plan_of(FLOOR_WIDTH)
    if narrowest in tried:
        return None
    a, b = FLOOR_WIDTH, min(high, 1.0)  # plan_of(a) is the narrowest, plan_of(b) is not
    if plan_of(b) == narrowest:
        return None
    for _ in range(30):
        middle = (a + b) / 2
        a, b = (middle, b) if plan_of(middle) == narrowest else (a, middle)
    return a


def _next_plan_above(low: float, top: float, plan_of, factor: float = 1.01) -> float | None:
    """The smallest width above ``low`` (in 1 % steps, at most ``top``) whose plan differs from ``low``'s."""
    start = plan_of(low) if low > 0 else None
    width = max(low, FLOOR_WIDTH)
    while width < top:
        width = min(width * factor, top)
        if plan_of(width) != start:
            return width
    return None


def _layer_macs(model: nn.Module, example_input: torch.Tensor) -> dict[str, float]:
    """Multiply-accumulates of every convolution and linear layer for one input, by module name."""
    macs: dict[str, float] = {}
    handles = [module.register_forward_hook(lambda layer, inputs, output, name=name: macs.__setitem__(
                   name, float(layer.weight.numel() * _positions(layer, inputs[0], output))))
               for name, module in model.named_modules() if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return macs


def _positions(layer: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> int:
    """How many positions of one sample a layer's weight is applied at."""
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return math.prod(inputs.shape[2:])
    if isinstance(layer, nn.modules.conv._ConvNd):
        return math.prod(output.shape[2:])
    return output[0].numel() // output.shape[-1]
