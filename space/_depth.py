"""Depth beside width: the parts of a network a search may remove whole.

Width pruning has a floor: every kept convolution costs a fixed time however narrow it
is, so past some speedup only fewer layers help. A model offers depth through two
methods (our U-Nets have them; other models are searched by width alone):

- ``droppable_levels()``: the module names of each level it can lose, deepest first
  (a U-Net's bottom resolution: its encoder stage, upsampling and decoder stage), and
  ``drop_levels(count)`` to remove the ``count`` deepest;
- ``droppable_convs()``: per stage with two convolutions, the module names of its second
  (convolution, normalisation, activation), and ``drop_convs(stages)`` to remove them.

Both remove modules in place, before width pruning, and record them in the model's
``dropped``; a recipe names them in ``removed``, so it replays exactly (:func:`drop_depth`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from torch import nn

from ..errors import UserError
from ._recipe import Recipe, is_ignored


@dataclasses.dataclass(frozen=True)
class Depth:
    """What of a model's depth can go: ``levels`` (module names per level, deepest first)
    and ``convs`` (per stage, the module names of its second convolution)."""

    levels: tuple[tuple[str, ...], ...] = ()
    convs: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def removed(self, drop: int, single: Iterable[str] = ()) -> tuple[str, ...]:
        """The modules removed by dropping ``drop`` levels and the second convolution of the
        ``single`` stages (stages inside the dropped levels have nothing left to remove)."""
        if drop > len(self.levels):
            raise UserError(f"cannot drop {drop} levels: the model can lose {len(self.levels)}")
        levels = tuple(name for level in self.levels[:drop] for name in level)
        convs = tuple(name for stage in single if stage not in levels for name in self.convs[stage])
        return levels + convs


def depth_of(model: nn.Module) -> Depth:
    """The :class:`Depth` ``model`` offers (empty for a model without those methods)."""
    levels = getattr(model, "droppable_levels", None)
    convs = getattr(model, "droppable_convs", None)
    return Depth(tuple(map(tuple, levels())) if callable(levels) else (), dict(convs()) if callable(convs) else {})


def drop_depth(model: nn.Module, recipe: Recipe) -> Recipe:
    """Remove ``recipe.removed`` from ``model`` in place, through its own ``drop_levels`` and
    ``drop_convs``; returns the recipe for what remains (keeps and ignores under removed
    modules left out). Modules that are not deepest levels and second convolutions of this
    model raise :class:`UserError`."""
    if not recipe.removed:
        return recipe
    depth, removed = depth_of(model), set(recipe.removed)
    count = 0
    while count < len(depth.levels) and set(depth.levels[count]) <= removed:
        count += 1
    single = [stage for stage, names in depth.convs.items() if set(names) <= removed]
    if set(depth.removed(count, single)) != removed:
        raise UserError(f"the recipe removes {', '.join(recipe.removed)}, which are not this model's deepest levels "
                        "and second convolutions: rebuild with the model the recipe was made for")
    if count:
        model.drop_levels(count)
    if single:
        model.drop_convs(single)
    return dataclasses.replace(recipe, keep={k: v for k, v in recipe.keep.items() if not is_ignored(k, recipe.removed)},
                               ignore=tuple(e for e in recipe.ignore if not is_ignored(e, recipe.removed)))
