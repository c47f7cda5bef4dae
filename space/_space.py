"""The search space: a declarative TOML file turned into Optuna suggestions and recipes."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ._nnunet import nnunet_stages
from ._depth import Depth
from ._recipe import IMPORTANCES, METHODS, LayerGroup, Recipe, is_ignored

if TYPE_CHECKING:
    import optuna

GRANULARITIES = ("per-layer", "per-stage", "nnunet-stages", "uniform")
PRESETS_DIR = Path(__file__).with_name("presets")
_KEYS = {
    "": {"granularity", "methods", "keep", "width", "channels", "importance", "ignore", "depth"},
    "keep": {"low", "high", "step", "log"},
    "width": {"choices"},
    "channels": {"round_to", "min_channels"},
    "depth": {"drop", "convs"},
}


@dataclass(frozen=True)
class SearchSpace:
    """Which recipes a study may try, as an Optuna trial samples them.

    Optuna parameters: ``keep.<group name>`` (per-layer), ``keep.<stage>`` (per-stage),
    ``keep.stage<N>`` (nnunet-stages: nnU-Net's stage N, its encoder stage and the decoder
    stage at its resolution, so every network is one nnU-Net's plans describe) or ``keep`` (uniform), each a float in [keep_low, keep_high]; ``width`` from
    ``width_choices`` and ``method`` from ``methods``, each only when there is more than one
    choice. A group's kept fraction is its keep times the width. Groups named by ``ignore``
    stay at full width. Depth (:mod:`._depth`), where the model offers it: ``depth.drop``
    (from ``depth_drop``) is how many of its deepest levels the network loses (0: its own
    depth), ``convs.<stage>`` (from ``depth_convs``) how many convolutions a stage keeps (2
    or 1), each a parameter only when it has more than one choice; :meth:`for_depth` limits
    both to what a model offers. Impossible settings raise :class:`UserError` naming the TOML key.
    The defaults are the ``per-layer`` preset.
    """

    granularity: str = "per-layer"
    methods: tuple[str, ...] = ("prune",)
    keep_low: float = 0.05
    keep_high: float = 1.0
    keep_step: float | None = 0.05
    keep_log: bool = False
    width_choices: tuple[float, ...] = (1.0,)
    round_to: int = 4
    min_channels: int = 1
    importance: str = "l1"
    ignore: tuple[str, ...] = ()
    depth_drop: tuple[int, ...] = (0,)
    depth_convs: tuple[int, ...] = (2,)

    def __post_init__(self):
        methods, choices = list(self.methods), list(self.width_choices)
        _check(self.granularity in GRANULARITIES, "granularity", self.granularity, f"one of {_one_of(GRANULARITIES)}")
        known = _distinct(methods) and set(methods) <= set(METHODS)
        _check(known, "methods", methods, 'a list of distinct methods, e.g. ["prune", "scale"]')
        _check(self.importance in IMPORTANCES, "importance", self.importance, f"one of {_one_of(IMPORTANCES)}")
        _check(_is_ratio(self.keep_low), "keep.low", self.keep_low, "a ratio in (0, 1]")
        _check(_is_ratio(self.keep_high), "keep.high", self.keep_high, "a ratio in (0, 1]")
        _check(self.keep_low <= self.keep_high, "keep.low", self.keep_low, f"at most keep.high = {self.keep_high}")
        _check(isinstance(self.keep_log, bool), "keep.log", self.keep_log, "true or false")
        _check_step(self.keep_low, self.keep_high, self.keep_step, self.keep_log)
        ratios = _distinct(choices) and all(map(_is_ratio, choices))
        _check(ratios, "width.choices", choices, "a list of distinct ratios in (0, 1]")
        _check(_is_count(self.round_to), "channels.round_to", self.round_to, "a whole number >= 1")
        _check(_is_count(self.min_channels), "channels.min_channels", self.min_channels, "a whole number >= 1")
        drops = list(self.depth_drop)
        _check(_distinct(drops) and all(map(_is_whole, drops)), "depth.drop", drops,
               "a list of distinct whole numbers >= 0 (levels dropped), e.g. [0, 1, 2]")
        object.__setattr__(self, "depth_drop", tuple(drops))
        convs = list(self.depth_convs)
        _check(_distinct(convs) and set(convs) <= {1, 2}, "depth.convs", convs, "[2], [1] or [2, 1] (convolutions per stage)")
        object.__setattr__(self, "depth_convs", tuple(convs))
        object.__setattr__(self, "methods", tuple(methods))
        object.__setattr__(self, "width_choices", tuple(map(float, choices)))
        object.__setattr__(self, "keep_low", float(self.keep_low))
        object.__setattr__(self, "keep_high", float(self.keep_high))
        object.__setattr__(self, "ignore", tuple(self.ignore))

    @classmethod
    def load(cls, spec: str | Path = "per-layer") -> "SearchSpace":
        """A preset by name (``per-layer``, ``per-stage``, ``uniform``) or a ``.toml`` file.

        A missing key takes the default of :class:`SearchSpace` (no ``keep.step`` when
        ``keep.log`` is true); an unreadable file, an unknown key or an impossible value
        raises :class:`UserError` naming the file and the key.
        """
        path = Path(spec)
        if path.suffix != ".toml":
            path = PRESETS_DIR / f"{spec}.toml"
            if not path.is_file():
                names = ", ".join(presets())
                raise UserError(f"unknown search space {str(spec)!r}: give a preset ({names}) or a .toml file")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise UserError(f"cannot read search space file {path}: {err.strerror}: check the path") from None
        except tomllib.TOMLDecodeError as err:
            raise UserError(f"{path}: invalid TOML ({err}): fix the syntax") from None
        try:
            return cls.from_dict(data)
        except UserError as err:
            raise UserError(f"{path}: {err}") from None

    def to_dict(self) -> dict:
        """The space as nested plain data, shaped like its TOML file; JSON-safe."""
        keep = {"low": self.keep_low, "high": self.keep_high, "log": self.keep_log}
        if self.keep_step is not None:
            keep["step"] = self.keep_step
        return {
            "granularity": self.granularity,
            "methods": list(self.methods),
            "keep": keep,
            "width": {"choices": list(self.width_choices)},
            "channels": {"round_to": self.round_to, "min_channels": self.min_channels},
            "importance": self.importance,
            "ignore": list(self.ignore),
            "depth": {"drop": list(self.depth_drop), "convs": list(self.depth_convs)},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SearchSpace":
        """The space described by ``data`` (a parsed TOML file or :meth:`to_dict`)."""
        _reject_unknown(data, "")
        keep, width, channels, depth = (_table(data, key) for key in ("keep", "width", "channels", "depth"))
        default = cls()
        return cls(
            granularity=data.get("granularity", default.granularity),
            methods=_strings(data, "methods", default.methods),
            keep_low=keep.get("low", default.keep_low),
            keep_high=keep.get("high", default.keep_high),
            keep_step=keep.get("step", None if keep.get("log") else default.keep_step),
            keep_log=keep.get("log", default.keep_log),
            width_choices=tuple(width.get("choices", default.width_choices)),
            round_to=channels.get("round_to", default.round_to),
            min_channels=channels.get("min_channels", default.min_channels),
            importance=data.get("importance", default.importance),
            ignore=_strings(data, "ignore", default.ignore),
            depth_drop=tuple(depth.get("drop", default.depth_drop)),
            depth_convs=tuple(depth.get("convs", default.depth_convs)),
        )

    def for_depth(self, depth: Depth) -> "SearchSpace":
        """This space for a model that offers ``depth``: drops deeper than its levels left out
        (0 when none is left), two convolutions per stage when it has no stage to thin."""
        drops = tuple(d for d in self.depth_drop if d <= len(depth.levels)) or (0,)
        return replace(self, depth_drop=drops, depth_convs=self.depth_convs if depth.convs else (2,))

    def depth_params(self, depth: Depth, drop: int = 0, single: Sequence[str] = ()) -> dict:
        """The parameters of the point at ``depth`` that drops ``drop`` levels and keeps one
        convolution in the ``single`` stages (others two), for ``enqueue_trial``; only those
        this space samples."""
        params = {"depth.drop": drop} if len(self.depth_drop) > 1 else {}
        if len(self.depth_convs) > 1:
            params |= {f"convs.{stage}": 1 if stage in single else 2 for stage in depth.convs}
        return params

    def sample(self, trial: "optuna.Trial", groups: Sequence[LayerGroup], depth: Depth = Depth()) -> Recipe:
        """The recipe ``trial`` suggests for a model with these layer groups.

        ``groups`` come from :func:`layer_groups`, with or without this space's ``ignore``
        applied (``layer_groups(model, x, space.ignore)`` is what checks the names); the
        recipe carries ``ignore`` so that :func:`apply_recipe` leaves those layers whole.
        ``depth`` is what of its depth the model offers (:func:`depth_of`); every group's keep
        is suggested whatever the depth (a fixed space for the sampler), those of removed
        modules are left out of the recipe.
        """
        searched = self.searched(groups)
        method = _choose(trial, "method", self.methods)
        width = _choose(trial, "width", self.width_choices)
        drop = _choose(trial, "depth.drop", self.depth_drop)
        single = [stage for stage in depth.convs if _choose(trial, f"convs.{stage}", self.depth_convs) == 1]
        removed = depth.removed(drop, single)
        low, high, step, log = self.keep_low, self.keep_high, self.keep_step, self.keep_log
        params = self._params(searched)
        keep = {g.name: trial.suggest_float(params[g.name], low, high, step=step, log=log) for g in searched}
        return Recipe(
            method=method,
            keep={name: ratio for name, ratio in keep.items() if not is_ignored(name, removed)},
            removed=removed,
            width=width,
            round_to=self.round_to,
            min_channels=self.min_channels,
            importance=self.importance,
            ignore=self.ignore,
        )

    def uniform_recipes(self, count: int, groups: Sequence[LayerGroup], around: float | None = None) -> list[dict]:
        """Up to ``count`` parameter dicts for ``study.enqueue_trial``: a warm start.

        ``groups`` are the model's, as for :meth:`sample` (per-layer parameters are named
        after them).

        Each sets every group to one kept fraction, snapped onto the space's distributions
        (duplicates after snapping are dropped). Without ``around`` the fractions run
        geometrically from the space's largest to its smallest; with ``around`` (the
        fraction expected to just meet a latency budget) they run from ``around * sqrt(2)``
        to ``around / sqrt(2)``: cost falls with the square of the fraction, so they
        bracket the budget from about twice to half of it.
        """
        if count < 1:
            raise UserError(f"warm-start count {count} must be at least 1")
        names = sorted(set(self._params(self.searched(groups)).values()))
        largest = self.keep_high * max(self.width_choices)
        smallest = self.keep_low * min(self.width_choices)
        if around is not None:
            largest, smallest = min(around * 2**0.5, largest), max(around / 2**0.5, smallest)
        points = []
        for i in range(count):
            fraction = largest * (smallest / largest) ** (i / max(count - 1, 1))
            params = self._uniform_params(fraction, names)
            if params not in points:
                points.append(params)
        return points

    def capped_params(self, cap: int, groups: Sequence[LayerGroup]) -> dict:
        """Params that keep at most ``cap`` channels in every group (narrower groups stay whole).

        For ``enqueue_trial``. The width choice is the one that needs the least clipping of
        keeps into the space's range; what remains clipped makes the result the nearest
        point the space can suggest. A ``uniform`` space has one keep for every group and
        cannot express a cap: it raises :class:`UserError`.
        """
        if self.granularity == "uniform":
            raise UserError("a uniform space has one keep ratio for every layer: caps need per-layer or per-stage")
        widest: dict[str, int] = {}
        searched = self.searched(groups)
        for g, param in zip(searched, self._params(searched).values()):
            widest[param] = max(widest.get(param, 0), g.channels)
        wanted = {name: min(1.0, cap / channels) for name, channels in widest.items()}

        def clipping(width: float) -> float:
            return sum(abs(math.log(self._snap(fraction / width) * width / fraction)) for fraction in wanted.values())

        width = min(self.width_choices, key=clipping)
        params = {name: self._snap(fraction / width) for name, fraction in wanted.items()}
        if len(self.width_choices) > 1:
            params["width"] = width
        return params | self._first_method()

    def _uniform_params(self, fraction: float, names: list[str]) -> dict:
        """Params for ``fraction`` of every group: the widest width whose keep stays in range."""
        widths = sorted(self.width_choices, reverse=True)
        width = next((w for w in widths if fraction / w >= self.keep_low * (1 - 1e-9)), widths[-1])
        params = dict.fromkeys(names, self._snap(fraction / width))
        if len(self.width_choices) > 1:
            params["width"] = width
        return params | self._first_method()

    def _first_method(self) -> dict:
        return {"method": self.methods[0]} if len(self.methods) > 1 else {}

    def _snap(self, keep: float) -> float:
        """The nearest keep the space can suggest."""
        keep = min(max(keep, self.keep_low), self.keep_high)
        if self.keep_step is None:
            return keep
        steps = min(round((keep - self.keep_low) / self.keep_step), _whole_steps(self))
        return round(self.keep_low + steps * self.keep_step, 12)

    def searched(self, groups: Sequence[LayerGroup]) -> list[LayerGroup]:
        """``groups`` less the ignored ones (callers may have left them out already)."""
        searched = [g for g in groups if not is_ignored(g.name, self.ignore)]
        if not searched:
            raise UserError(f"ignore = {list(self.ignore)} leaves no layer group to search: ignore fewer layers")
        return searched

    def _params(self, groups: Sequence[LayerGroup]) -> dict[str, str]:
        """The Optuna parameter of each group, by group name (in the order of ``groups``)."""
        if self.granularity == "per-layer":
            return {g.name: f"keep.{g.name}" for g in groups}
        if self.granularity == "per-stage":
            return {g.name: f"keep.{g.stage}" for g in groups}
        if self.granularity == "nnunet-stages":
            stages = nnunet_stages([g.name for g in groups])
            return {g.name: f"keep.stage{stages[g.name]}" for g in groups}
        return {g.name: "keep" for g in groups}


def presets() -> list[str]:
    """Names of the bundled search spaces."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def _choose(trial, name: str, choices: Sequence):
    return trial.suggest_categorical(name, list(choices)) if len(choices) > 1 else choices[0]


def _whole_steps(space: SearchSpace) -> int:
    return round((space.keep_high - space.keep_low) / space.keep_step)


def _check_step(low: float, high: float, step: float | None, log: bool) -> None:
    if step is None:
        return
    _check(not log, "keep.log", log, "false when keep.step is set (Optuna cannot combine them)")
    _check(_is_number(step) and step > 0, "keep.step", step, "a number > 0")
    steps = (high - low) / step
    whole = math.isclose(steps, round(steps), abs_tol=1e-9)
    _check(whole, "keep.step", step, f"a divisor of keep.high - keep.low = {high - low:g}")


def _table(data: dict, key: str) -> dict:
    table = data.get(key, {})
    _check(isinstance(table, dict), key, table, f"a table [{key}]")
    _reject_unknown(table, key)
    return table


def _strings(data: dict, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = data.get(key, default)
    ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    _check(ok, key, value, 'a list of strings, e.g. ["prune"]')
    return tuple(value)


def _reject_unknown(data: dict, table: str) -> None:
    for key in data:
        if key not in _KEYS[table]:
            where = f"[{table}] " if table else ""
            raise UserError(f"unknown key {where}{key!r}: use one of {', '.join(sorted(_KEYS[table]))}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_count(value) -> bool:
    return _is_whole(value) and value >= 1


def _distinct(values: list) -> bool:
    return len(values) > 0 and len(set(values)) == len(values)


def _one_of(choices: Sequence[str]) -> str:
    return f"{', '.join(choices[:-1])} or {choices[-1]}"


def _is_ratio(value) -> bool:
    return _is_number(value) and 0 < value <= 1


def _check(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise UserError(f"{key} = {value!r} is invalid: it must be {expected}")
