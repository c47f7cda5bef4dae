"""Structural pruning: one small adapter over Torch-Pruning's dependency graph.

Torch-Pruning traces any ``nn.Module`` into groups of coupled channels (a conv's outputs,
its BatchNorm, the inputs of every consumer, both sides of a concat or a residual sum).
We name each group after its layer, decide how many channels it keeps from the recipe
alone (:func:`channel_plan`), rank its channels by an importance criterion and remove the
rest. Only state dicts are ever saved; :func:`rebuild` replays the recipe to get the
architecture back.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from ._depth import drop_depth
from ._errors import brief, shorten
from ._graph import call_all_outputs, dependency_graph, eval_mode
from ._recipe import LayerGroup, Recipe, channel_plan, is_ignored, without_ignored

_ROOT_TYPES = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)
_L1 = tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
_IMPORTANCE = {
    "l1": _L1,
    "bn": tp.importance.BNScaleImportance(normalizer=None),
    "taylor": tp.importance.GroupTaylorImportance(normalizer=None),
}
# "scale" re-initialises with this seed, so a recipe always gives the same fresh network.
_SCALE_SEED = 0


@dataclasses.dataclass(frozen=True)
class GroupSurvey:
    """What of a model can be pruned: its prunable layer groups, and those kept whole.

    ``kept_whole`` maps each group that cannot lose channels safely to why (the error a
    pruned copy raised, or how its outputs changed); a recipe must carry these names in
    its ``ignore`` (:attr:`ignore`) so that :func:`apply_recipe` leaves them whole.
    """

    groups: list[LayerGroup]
    kept_whole: dict[str, str]

    def ignore(self, ignore: Sequence[str] = ()) -> tuple[str, ...]:
        """``ignore`` plus the names of the groups kept whole."""
        return tuple(ignore) + tuple(name for name in self.kept_whole if not is_ignored(name, ignore))

    def describe(self, most: int = 6) -> str:
        """One line: "kept whole: N groups: a, b, ... because pruning them breaks the model (...)";
        for a survey that keeps something whole."""
        names = list(self.kept_whole)
        shown = ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")
        reasons = "; ".join(dict.fromkeys(self.kept_whole.values()))
        plural = "s" if len(names) > 1 else ""
        return f"kept whole: {len(names)} group{plural}: {shown}, because pruning {'them' if plural else 'it'} " \
               f"breaks the model ({shorten(reasons, 300)})"


def survey_groups(model: nn.Module, example_input: torch.Tensor, ignore: Sequence[str] = (),
                  kept_whole: dict[str, str] | None = None) -> GroupSurvey:
    """The prunable layer groups of any model, in module order, and those kept whole.

    A group whose removal would change the model's output (the logits layer, or anything
    summed into it) is never listed; groups named by ``ignore`` (names or module prefixes)
    are left out. ``model`` is traced with ``example_input``; its weights, BatchNorm
    statistics and train/eval modes are left as they were.

    The groups are then tried on copies of the model that lose one channel in each group (or
    as many as its GroupNorm has groups): a copy must run, keep its output shapes and have
    exactly those channels. A group that breaks this alone, or together with the others,
    is kept whole (:attr:`GroupSurvey.kept_whole`); the rest are searched. A model that
    cannot be traced, or of which no group can be pruned, raises :class:`UserError`, so the
    failure comes before any fine-tuning. ``kept_whole`` given (an earlier survey of the same
    model, as a study stores it) is taken as it is, without trying the groups again: one
    trace of the model instead of up to one per group.
    """
    graph = dependency_graph(model, example_input)
    groups = without_ignored(_list_groups(graph), ignore)
    if kept_whole is None:
        steps = {name: _channel_step(group) for name, _, group in _named_groups(graph)}
        kept_whole = _unsafe_groups(model, groups, steps, example_input)
    survey = GroupSurvey([g for g in groups if g.name not in kept_whole], kept_whole)
    if groups and not survey.groups:
        raise UserError(f"nothing in the model can be pruned ({survey.describe()}): report the model to us")
    return survey


def layer_groups(model: nn.Module, example_input: torch.Tensor, ignore: Sequence[str] = ()) -> list[LayerGroup]:
    """The prunable layer groups of :func:`survey_groups`; a recipe for them must also
    ignore the groups kept whole (:meth:`GroupSurvey.ignore`)."""
    return survey_groups(model, example_input, ignore).groups


def apply_recipe(
    model: nn.Module,
    recipe: Recipe,
    example_input: torch.Tensor,
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> nn.Module:
    """A smaller copy of ``model`` shaped by ``recipe``; ``model`` itself is never changed.

    "prune" keeps in each group the channels the recipe's importance ranks highest, with
    their trained weights; "taylor" needs ``calibration`` = (images, masks), masks holding
    class indices (or float targets shaped like the logits). "scale" builds the same
    architecture, then re-initialises every module that has ``reset_parameters()`` (BatchNorm
    statistics included) from a fixed seed. Either way the result is deterministic, in eval
    mode, and its output shape equals the baseline's.
    """
    net = copy.deepcopy(model)
    recipe = drop_depth(net, recipe)
    if recipe.method == "scale":
        prune_in_place(net, dataclasses.replace(recipe, importance="l1"), example_input)
        _reinitialise(net)
    else:
        prune_in_place(net, recipe, example_input, calibration)
    return net.eval()


def rebuild(baseline: nn.Module, recipe: Recipe, example_input: torch.Tensor, state_dict: dict) -> nn.Module:
    """The deployable network: the recipe's architecture carrying ``state_dict``'s weights.

    ``state_dict`` is that of the pruned (and usually fine-tuned) network, loaded with
    ``torch.load(..., weights_only=True)``. Which channels the importance picked does not
    matter here, so no calibration is needed. A state dict of another architecture raises
    :class:`UserError`.
    """
    net = copy.deepcopy(baseline)
    prune_in_place(net, dataclasses.replace(drop_depth(net, recipe), importance="l1"), example_input)
    try:
        net.load_state_dict(state_dict)
    except RuntimeError as err:
        message = f"the weights do not fit the recipe's network ({brief(err)}): rebuild with their own recipe"
        raise UserError(message) from err
    return net.eval()


def prune_in_place(
    model: nn.Module,
    recipe: Recipe,
    example_input: torch.Tensor,
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, list[int]]:
    """Remove channels from ``model`` itself; return the kept channel indices of each group.

    Indices are in the unpruned model's numbering (each group is pruned exactly once).
    """
    graph = dependency_graph(model, example_input)
    plan = channel_plan(without_ignored(_list_groups(graph), recipe.ignore), recipe)
    if recipe.importance == "bn" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise UserError("importance 'bn' needs BatchNorm layers, and this model has none: "
                        "use importance 'l1' (weight magnitude) or 'taylor'")
    if recipe.importance == "taylor":
        _backpropagate(model, calibration)
    importance = _IMPORTANCE[recipe.importance]
    kept = {}
    for name, root, group in _named_groups(graph):
        if name in plan:
            kept[name] = _prune_group(group, importance, plan[name], graph.get_out_channels(root))
    model.zero_grad(set_to_none=True)
    return kept


def _channel_step(group) -> int:
    """The group's channel counts must be multiples of this: the GroupNorms' group counts."""
    norms = [dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.GroupNorm)]
    return math.lcm(1, *(norm.num_groups for norm in norms))


def _prune_group(group, importance, keep: int, channels: int) -> list[int]:
    """Remove all but the ``keep`` most important of the ``channels`` of ``group``; return the kept ones.

    A group that keeps every channel is left as it is, unscored. A group "bn" cannot score
    (no BatchNorm, e.g. a transposed convolution's) is ranked by weight magnitude, as the
    space's documentation of "bn" says.
    """
    if keep >= channels:
        return list(range(channels))
    scores = importance(group)
    if scores is None:
        scores = _L1(group)
    ranked = torch.argsort(scores, descending=True, stable=True).tolist()
    if len(ranked) > keep:
        group.prune(sorted(ranked[keep:]))
    return sorted(ranked[:keep])


def _list_groups(graph: tp.DependencyGraph) -> list[LayerGroup]:
    """Every group of the graph's model as a :class:`LayerGroup`, in module order."""
    order = {name: i for i, (name, _) in enumerate(graph.model.named_modules())}
    groups = [
        LayerGroup(name, name.split(".")[0], graph.get_out_channels(root), _channel_step(group))
        for name, root, group in _named_groups(graph)
    ]
    return sorted(groups, key=lambda g: order[g.name])


def _named_groups(graph: tp.DependencyGraph) -> Iterator[tuple[str, nn.Module, object]]:
    """(name, root layer, group) for every group that leaves the output shape alone.

    Groups are produced lazily from the current model, so each may be pruned before the
    next is built. A group is named after its first layer in module order.
    """
    names = {module: name for name, module in graph.model.named_modules()}
    order = {module: i for i, module in enumerate(names)}
    for group in graph.get_all_groups(root_module_types=_ROOT_TYPES):
        outputs = [dep.target for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)]
        if any(not node.outputs for node in outputs):  # a sink of the traced graph: the model's output
            continue
        layers = [node.module for node in outputs if isinstance(node.module, _ROOT_TYPES)]
        root = min(layers, key=order.__getitem__)
        yield names[root], root, group


def _unsafe_groups(model: nn.Module, groups: Sequence[LayerGroup], steps: dict[str, int], example_input) -> dict[str, str]:
    """The groups of ``model`` that cannot lose channels safely, each with why.

    Each group loses one channel, or its ``steps`` (GroupNorm's group count); the pruned
    copy must run, keep its output shapes and have exactly the planned channels. All groups
    are tried together first (the common case: one trace); on failure each alone, then the
    survivors are added one by one, so a group that breaks only beside others is found too.
    """
    channels = {g.name: g.channels for g in groups}
    fewer = {name: n - steps[name] for name, n in channels.items() if n > steps[name]}
    with eval_mode(model), torch.no_grad():
        expected = call_all_outputs(model, example_input)

    def breaks(keep: dict[str, int]) -> str | None:
        return _breaks(model, keep, channels, example_input, expected)

    if breaks(fewer) is None:
        return {}
    unsafe = {name: error for name, keep in fewer.items() if (error := breaks({name: keep})) is not None}
    safe = {name: keep for name, keep in fewer.items() if name not in unsafe}
    if safe and breaks(safe) is not None:
        safe = {}
        for name, keep in fewer.items():
            if name not in unsafe and (error := breaks({**safe, name: keep})) is None:
                safe[name] = keep
            elif name not in unsafe:
                unsafe[name] = f"together with others: {error}"
    return {name: unsafe[name] for name in channels if name in unsafe}


def _breaks(model: nn.Module, keep: dict[str, int], channels: dict[str, int], example_input, expected) -> str | None:
    """What goes wrong when ``model``'s groups keep ``keep`` channels; None if nothing does."""
    try:
        net = apply_recipe(model, Recipe(keep={name: n / channels[name] for name, n in keep.items()}), example_input)
        with torch.no_grad():
            got = call_all_outputs(net, example_input)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        return brief(err)
    shapes = [tuple(t.shape) for t in tp.utils.flatten_as_list(got)]
    if shapes != [tuple(t.shape) for t in tp.utils.flatten_as_list(expected)]:
        return f"its outputs became {shapes}"
    widths = {name: _width(net.get_submodule(name)) for name in keep}
    wrong = [f"{name} kept {widths[name]} channels instead of {n}" for name, n in keep.items() if widths[name] != n]
    return wrong[0] if wrong else None


def _width(layer: nn.Module) -> int:
    """Output channels of a convolution, transposed convolution or linear layer, read from its weight."""
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return layer.weight.shape[1] * layer.groups
    return layer.weight.shape[0]


def _backpropagate(model: nn.Module, calibration) -> None:
    """Leave the calibration loss's gradients in ``model`` for Taylor importance.

    The loss is on the model's output; parameters it does not reach (the heads of outputs
    the forward drops) get zero gradients.
    """
    if calibration is None:
        raise UserError("importance 'taylor' needs a calibration batch (images, masks): pass one or use 'l1'")
    images, masks = calibration
    with eval_mode(model), torch.enable_grad():
        model.zero_grad(set_to_none=True)
        logits = model(images)
        if masks.is_floating_point():
            loss = F.binary_cross_entropy_with_logits(logits, masks)
        else:
            loss = F.cross_entropy(logits, masks)
        loss.backward()
    for parameter in model.parameters():
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)


def _reinitialise(model: nn.Module) -> None:
    """Fresh weights from a fixed seed, leaving the global random state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SCALE_SEED)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
