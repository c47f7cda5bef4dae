"""A study's warm start: uniform candidates that bracket the budget, each with a capped twin.

Uniform pruning (one kept fraction everywhere) is what a person tries first, and it
brackets a latency budget well. At extreme compression it is the wrong shape: it thins
the full-resolution layers that segmentation needs most as hard as the deep ones that
hold the parameters. Measured on ``unet-paper`` at 64x64 (20 fine-tune epochs), uniform
keep 0.1 (100x fewer parameters) lost the LV (mean Dice 0.53), while every layer capped
at 8 channels, at the same latency budget, kept Dice 0.93-0.94 with 2291x fewer
parameters. So each uniform candidate gets a twin that caps every layer at one channel
count, chosen so the twin costs the same multiply-accumulates: the two shapes compete at
equal cost from the first trials, and the sampler refines whichever wins.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import optuna
import torch
from torch import nn

from ._figures import figures
from ._prune import apply_recipe
from ._recipe import LayerGroup, Recipe, channel_plan
from ._space import SearchSpace


def warm_start(space: SearchSpace, model: nn.Module, example_input: torch.Tensor, groups: Sequence[LayerGroup],
               count: int, around: float | None = None) -> list[dict]:
    """Parameter dicts for ``study.enqueue_trial``: ``space.uniform_recipes(count, groups, around)``,
    each followed by its capped twin of equal MACs (see :func:`capped_twin`).

    A ``uniform`` space gets no twins; a twin that builds the same network as a point
    already listed (caps are rounded to ``round_to``) is dropped. ``model`` is only read:
    each twin costs about a dozen prunings of it.
    """
    uniform = space.uniform_recipes(count, groups, around=around)
    if space.granularity == "uniform":
        return uniform
    points, plans = [], []
    for params in uniform:
        for point in (params, capped_twin(space, model, example_input, groups, params)):
            plan = channel_plan(groups, _recipe(space, groups, point))
            if plan not in plans:
                points.append(point)
                plans.append(plan)
    return points


def capped_twin(space: SearchSpace, model: nn.Module, example_input: torch.Tensor, groups: Sequence[LayerGroup],
                params: dict) -> dict:
    """The capped point (:meth:`SearchSpace.capped_params`) whose MACs are closest to ``params``'s.

    MACs grow with the cap, so the cap is found by bisection over 1 .. the widest group;
    each cap is pruned and counted once.
    """
    @functools.cache
    def cost(cap: int) -> int:
        return _macs(space, model, example_input, groups, space.capped_params(cap, groups))

    target = _macs(space, model, example_input, groups, params)
    low, high = 1, max(g.channels for g in groups)
    while low < high:  # the smallest cap that costs at least the target
        middle = (low + high) // 2
        if cost(middle) < target:
            low = middle + 1
        else:
            high = middle
    cap = min({max(low - 1, 1), low}, key=lambda c: abs(cost(c) - target))
    return space.capped_params(cap, groups)


def _macs(space: SearchSpace, model: nn.Module, example_input: torch.Tensor, groups: Sequence[LayerGroup], params: dict) -> int:
    """Multiply-accumulates of the network a trial with these parameters would build."""
    return figures(apply_recipe(model, _recipe(space, groups, params), example_input), example_input, groups).macs


def _recipe(space: SearchSpace, groups: Sequence[LayerGroup], params: dict) -> Recipe:
    """The recipe a trial with these parameters would build."""
    return space.sample(optuna.trial.FixedTrial(params), groups)
