"""Torch-Pruning's dependency graph of a model: traced in eval mode, out of place, with every
layer the forward computes (also those whose outputs it drops), repaired by :mod:`._tp_patch`."""

from __future__ import annotations

import contextlib

import torch
import torch_pruning as tp
from torch import nn

from ..errors import UserError
from ._errors import brief
from ._tp_patch import UntracedConcatInput, decouple_broadcasts, recording_shapes


def dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model``, traced in eval mode.

    While tracing, in-place activations run out of place (an in-place activation on a norm's
    output would hide that norm from the trace), and concatenations and broadcasts record
    what :mod:`._tp_patch` needs to repair the graph.
    """
    with eval_mode(model), _out_of_place(model), recording_shapes(), torch.enable_grad():
        try:
            graph = tp.DependencyGraph().build_dependency(model, example_input, forward_fn=_traced_call, verbose=False)
        except _ForwardFailed as failure:
            err = failure.__cause__
            shape = tuple(example_input.shape)
            message = f"the model failed on an example input of shape {shape} ({brief(err)})"
            raise UserError(f"{message}: check the input channels and size") from err
        except UntracedConcatInput as err:
            message = f"cannot prune: {err} (the input image or a constant)"
            raise UserError(f"{message}: concatenate only layer outputs along channels") from err
        except Exception as err:  # Torch-Pruning's analysis may raise anything
            message = f"Torch-Pruning cannot analyse the model ({type(err).__name__}: {brief(err)})"
            raise UserError(f"{message}: report the model to us with this line") from err
    decouple_broadcasts(graph)
    return graph


class _ForwardFailed(Exception):
    """The model itself raised while being traced."""


def _traced_call(model: nn.Module, example_input: torch.Tensor) -> tuple:
    """:func:`call_all_outputs`'s outputs, then those of layers whose results the model computes and drops.

    A layer the forward calls but whose output reaches no output (UNet++'s deep-supervision
    heads when it returns one map) is invisible to a trace that starts from the outputs:
    its input channels would not follow their producer's. Returning what it computed makes
    it part of the graph, as a head. The model's own errors are told apart from Torch-Pruning's.
    """
    computed = []
    leaves = [module for module in model.modules() if next(module.children(), None) is None]
    hooks = [leaf.register_forward_hook(lambda _, __, out: computed.append(out)) for leaf in leaves]
    try:
        outputs = call_all_outputs(model, example_input)
    except Exception as err:
        raise _ForwardFailed from err
    finally:
        for hook in hooks:
            hook.remove()
    return outputs, *_dropped(tp.utils.flatten_as_list(outputs), computed)


def _dropped(outputs: list, computed: list) -> list[torch.Tensor]:
    """The last tensors of ``computed`` (in call order) from which no tensor of ``outputs`` derives."""
    reached = _ancestors(t.grad_fn for t in outputs if isinstance(t, torch.Tensor))
    dropped = []
    for tensor in reversed(computed):
        if isinstance(tensor, torch.Tensor) and tensor.grad_fn is not None and tensor.grad_fn not in reached:
            dropped.append(tensor)
            reached |= _ancestors([tensor.grad_fn])
    return dropped


def _ancestors(nodes) -> set:
    """Every autograd node the given ones were computed from, themselves included."""
    seen, stack = set(), [node for node in nodes if node is not None]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(parent for parent, _ in node.next_functions if parent is not None)
    return seen


def call_all_outputs(model: nn.Module, example_input: torch.Tensor):
    """Every output of ``model`` on the one input tensor, as Torch-Pruning traces it.

    A model with an ``all_outputs`` method (see :func:`load_user_model`) is called through it,
    so outputs its forward drops, such as deep-supervision heads, stay consistent when pruned.
    """
    return getattr(model, "all_outputs", model)(example_input)


@contextlib.contextmanager
def _out_of_place(model: nn.Module):
    """Run the block with every module's ``inplace`` flag off, then restore each flag."""
    flags = [(module, module.inplace) for module in model.modules() if isinstance(getattr(module, "inplace", None), bool)]
    for module, _ in flags:
        module.inplace = False
    try:
        yield model
    finally:
        for module, inplace in flags:
            module.inplace = inplace


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run the block with ``model`` in eval mode, then restore every module's own mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
