"""A study's warm start: the shapes every study should try first.

Every trial's network is projected onto the latency budget, so a point of the space is a
*shape*: how channels are shared among layers. Uniform (one kept fraction everywhere) is
what a person tries first. At extreme compression it is the wrong shape: it thins the
full-resolution layers that segmentation needs most as hard as the deep ones that hold
the parameters. Measured on ``unet-paper`` at 64x64 (20 fine-tune epochs), uniform keep
0.1 lost the LV (mean Dice 0.53), while every layer capped at 8 channels, at the same
cost, kept Dice 0.93-0.94 with 2291x fewer parameters. So the warm start is the uniform
shape and capped shapes (every layer at most N channels, N = 1, 2, 4 ... times the
narrowest layer), plus the first capped shape at other fractions of the budget, for the
trade-off a user is shown when the budget is hard to meet.

Where the space lists both methods ("prune" and "scale"), the first capped shape is also
tried with the other one. Fine-tuned at the learning rate its size calls for, inherited
weights are as good as fresh ones or better even at extreme compression: on ``unet`` at
96 px (8 epochs, 2 seeds), 4 channels everywhere reached val Dice 0.93 inherited against
0.91-0.92 fresh, 8 channels 0.95 against 0.94. (At a fixed 0.003 both stuck at 0.30,
which is what made fresh weights look better at 20-30x.) So the default spaces inherit,
and a space that adds "scale" gets one fresh-weights shape for the sampler to start from.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._depth import Depth
from ._recipe import LayerGroup
from ._space import SearchSpace

TRADE_OFF_FRACTIONS = (0.5, 1.5)  # 1.5, not 2: a network at twice the budget fine-tunes for over a minute


def warm_start(space: SearchSpace, groups: Sequence[LayerGroup], count: int, depth: Depth = Depth()) -> list[tuple[dict, float]]:
    """(params, budget fraction) pairs for ``study.enqueue_trial``.

    At most ``count`` shapes at the budget (fraction 1.0): uniform, then capped at 1, 2,
    4 ... times the narrowest searched group's channels (distinct points only; a
    ``uniform`` space has one shape), the last of them replaced by the first capped shape
    with the space's second method when it lists two and ``count`` is at least 3; then the
    first capped shape (or uniform) at each of :data:`TRADE_OFF_FRACTIONS`, all at the
    model's own depth. Where the space searches ``depth`` (the model's, :func:`depth_of`),
    the first capped shape is also tried at the budget at each deeper drop, and with one
    convolution in every stage. ``count`` 0 gives no point at all. ``groups`` are the
    model's, as for :meth:`SearchSpace.sample`.
    """
    if count < 1:
        return []
    shapes = space.uniform_recipes(1, groups)
    if space.granularity != "uniform":
        narrowest = min(g.channels for g in space.searched(groups))
        for doubling in range(count - 1):
            params = space.capped_params(narrowest * 2**doubling, groups)
            if params not in shapes:
                shapes.append(params)
    trade_off = shapes[min(1, len(shapes) - 1)]
    if len(space.methods) == 2 and count >= 3 and len(shapes) >= 2:
        shapes = shapes[: count - 1] + [{**trade_off, "method": space.methods[1]}]
    points = [(params, 1.0) for params in shapes[:count]] + [(trade_off, fraction) for fraction in TRADE_OFF_FRACTIONS]
    points = [({**params, **space.depth_params(depth)}, fraction) for params, fraction in points]
    shallower = [space.depth_params(depth, drop=drop) for drop in sorted(space.depth_drop) if drop > 0]
    if len(space.depth_convs) > 1:
        shallower.append(space.depth_params(depth, single=list(depth.convs)))
    return points + [({**trade_off, **params}, 1.0) for params in shallower]
