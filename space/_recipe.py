"""Recipes: the JSON-safe description of how a baseline becomes a smaller network.

A recipe plus the baseline's state dict rebuilds the pruned architecture exactly, so
pruned modules are never pickled: only their state dicts are saved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

from ..errors import UserError
from .unet import round_channels

METHODS = ("prune", "scale")
IMPORTANCES = ("l1", "bn", "taylor")


@dataclass(frozen=True)
class LayerGroup:
    """Channels that must be removed together, named after the layer whose outputs they are.

    ``name`` is the module path of that layer (``"enc2.conv1"``, ``"up3"``); when a group
    couples several layers (a residual addition), it is the first of them in the model's
    module order. ``stage`` is the first component of ``name``; ``channels`` is the
    group's output channels in the unpruned model; ``step`` divides every channel count
    the group may keep (the group count of a GroupNorm it feeds; 1 for most layers).
    """

    name: str
    stage: str
    channels: int
    step: int = 1


@dataclass(frozen=True)
class Recipe:
    """How to shrink a network, independent of its weights.

    ``method`` "prune" removes channels from the trained baseline (the survivors keep their
    weights); "scale" builds the same narrower architecture with fresh weights. A group's
    kept fraction is ``keep.get(name, 1.0) * width``; see :func:`channel_plan` for rounding.
    ``ignore`` names groups (or module prefixes) left at full width, untouched by ``width``.
    ``removed`` names the modules the network loses whole (depth: a model's
    deepest levels and second convolutions, :mod:`._depth`); their groups keep 0 channels.
    Invalid values raise :class:`UserError` on construction.
    """

    method: str = "prune"
    keep: dict[str, float] = field(default_factory=dict)
    width: float = 1.0
    round_to: int = 1
    min_channels: int = 1
    importance: str = "l1"
    ignore: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __post_init__(self):
        _check_choice("method", self.method, METHODS)
        _check_choice("importance", self.importance, IMPORTANCES)
        _check_ratio("width", self.width)
        for name, ratio in self.keep.items():
            _check_ratio(f"keep[{name!r}]", ratio)
        _check_count("round_to", self.round_to)
        _check_count("min_channels", self.min_channels)
        object.__setattr__(self, "keep", {str(k): float(v) for k, v in self.keep.items()})
        object.__setattr__(self, "width", float(self.width))
        object.__setattr__(self, "ignore", tuple(str(name) for name in self.ignore))
        object.__setattr__(self, "removed", tuple(str(name) for name in self.removed))

    def to_dict(self) -> dict:
        """A JSON-safe dict; ``Recipe.from_dict(r.to_dict()) == r``."""
        data = asdict(self)
        data["ignore"], data["removed"] = list(self.ignore), list(self.removed)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        """The recipe stored by :meth:`to_dict`; unknown keys raise :class:`UserError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown recipe key(s) {', '.join(unknown)}: use only {', '.join(sorted(known))}")
        return cls(**{**data, "keep": dict(data.get("keep", {})), "ignore": tuple(data.get("ignore", ())),
                      "removed": tuple(data.get("removed", ()))})

    @classmethod
    def uniform(cls, keep: float, **kwargs) -> "Recipe":
        """One ratio for every layer group: ``width=keep`` and no per-group ratios."""
        return cls(width=keep, keep={}, **kwargs)


def kept_channels(channels: int, ratio: float, round_to: int = 1, min_channels: int = 1) -> int:
    """Channels a group of ``channels`` keeps at ``ratio``.

    Rounded to the nearest multiple of ``round_to``; never below ``min_channels`` nor below
    ``round_to`` (a layer cannot have zero channels); never above ``channels``.
    """
    return min(channels, round_channels(channels * ratio, round_to, max(min_channels, round_to)))


def channel_plan(groups: Sequence[LayerGroup], recipe: Recipe) -> dict[str, int]:
    """Kept channels per group name: exactly what :func:`apply_recipe` will produce.

    Counts are rounded to multiples of both ``recipe.round_to`` and the group's ``step``;
    a group the recipe ``removed`` keeps 0.

    A name in ``recipe.keep`` that is not one of ``groups`` raises :class:`UserError`.
    """
    names = [g.name for g in groups]
    unknown = sorted(set(recipe.keep) - set(names))
    if unknown:
        raise UserError(
            f"recipe names unknown layer group(s) {', '.join(unknown)}: "
            f"use names from layer_groups(), e.g. {', '.join(names[:4])}"
        )
    ratios = {g.name: recipe.keep.get(g.name, 1.0) * recipe.width for g in groups}
    return {g.name: 0 if is_ignored(g.name, recipe.removed) else
            kept_channels(g.channels, ratios[g.name], math.lcm(recipe.round_to, g.step), recipe.min_channels)
            for g in groups}


def without_ignored(groups: Sequence[LayerGroup], ignore: Sequence[str]) -> list[LayerGroup]:
    """``groups`` less those named by ``ignore``: a group name or a module prefix ("enc1").

    An entry matching no group raises :class:`UserError`, so a typo never passes silently.
    """
    for entry in ignore:
        if not any(is_ignored(g.name, (entry,)) for g in groups):
            names = ", ".join(g.name for g in groups[:6])
            raise UserError(f"ignore entry {entry!r} names no layer group: use a name or prefix of {names}, ...")
    return [g for g in groups if not is_ignored(g.name, ignore)]


def is_ignored(name: str, ignore: Sequence[str]) -> bool:
    """Whether group ``name`` equals an ``ignore`` entry or lies under one ("enc1" covers "enc1.conv2")."""
    return any(name == entry or name.startswith(entry + ".") for entry in ignore)


def _check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UserError(f"{key} {value!r} is not supported: choose one of {', '.join(choices)}")


def _check_ratio(key: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise UserError(f"{key} = {value!r} is not a ratio in (0, 1]: give e.g. 0.5")


def _check_count(key: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{key} = {value!r} must be a whole number >= 1")
