"""Small repairs of Torch-Pruning 1.6.1's traced graph, from what is seen while tracing.

1. Channel counts at concatenations (VainF/Torch-Pruning#387). Torch-Pruning maps channel
   indices through a ``torch.cat`` once it knows how many channels each input contributes.
   It learns them by walking the graph back to a layer that declares its channels; through
   an operation with several inputs it keeps the answer of the *last* input, which is
   ``None`` when that input is a parameter (the single slope of MONAI's ``PReLU``) or a
   view. ``update_concat_index_mapping`` then sums a ``None`` and fails ("unsupported operand
   type(s) for +: 'int' and 'NoneType'") on MONAI's ``UNet`` and others. Repair: the patched
   ``update_concat_index_mapping`` takes the counts from the tensors seen while tracing and
   hands them to Torch-Pruning as the concat's ``concat_sizes``, the field its own code reads
   first when set and keeps up to date while channels are pruned. A concatenation along
   another dimension couples its inputs' channels one to one: it gets no index mapping.
   Only image tensors (4-D or 5-D) count as joined along channels at dimension 1; for a
   3-D tensor that is a transformer's token dimension. Torch-Pruning also switches index
   mapping off at every concatenation computed from a 3-D parameter (its special case for
   a ViT's class token): in MONAI's ``UNETR`` every skip concatenation of the decoder, whose
   inputs had lost their offsets and were pruned as one. A concatenation of image tensors
   along channels keeps its mapping on.
2. Broadcasts. Torch-Pruning couples the channels of every input of an element-wise
   operation; ``x * gate`` with a one-channel ``gate`` (MONAI's ``AttentionUnet``) would then
   prune the gate's single channel along with ``x``'s. Repair: :func:`decouple_broadcasts`
   cuts the dependencies between such an operation and its inputs broadcast along channels.

3. In-place additions to a view. ``out += residual`` (nnU-Net's residual blocks, MONAI's
   ``UnetResBlock``) adds in place to a norm's output. An ``InstanceNorm``'s output is a
   view (of its batch-norm reshape), and autograd rebases an in-place change of a view onto
   a copy of its base: the node Torch-Pruning recorded for the norm drops out of the graph,
   and the norm keeps its full width when its channels go ("expected input's size at dim=1
   to match num_features"). Repair: while tracing, a module's output that is a view is
   replaced by a copy, so in-place changes land after the recorded node, as they do for a
   BatchNorm's output. Only the trace sees the copies; the model is unchanged.

While :func:`recording_shapes` is active, each such operation notes what it saw in its
autograd node (``grad_fn.metadata``); graphs traced without it are left to Torch-Pruning
alone. :func:`install` runs on import and refuses any Torch-Pruning but the pinned one, or
one whose functions the repairs rely on changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_pruning as tp
from torch.overrides import TorchFunctionMode
from torch_pruning.dependency import index_mapping

PINNED_VERSION = "1.6.1"
# sha256 of the source of the functions the repairs rely on, in the pinned version.
_SOURCE_DIGESTS = {
    index_mapping.update_index_mapping: "dbadfad5a25ee1566c8af018ed4491310484d04cb295bf903f8f4687c327dd41",
    index_mapping.update_concat_index_mapping: "85d0106aa53f5783d57a4d5f4c724591d6361d4e9e08a08dacbd26ada5ca7185",
    tp.DependencyGraph._build_dependency: "7ed483a82bd3e21987c727c920febb9ee9f2b95fc49f1c7a3294da0895ae2e9b",
}
_CONCAT_KEY = "autosculpt.concat"
_BROADCAST_KEY = "autosculpt.broadcast"
_CONCATS = (torch.cat, torch.concat, torch.concatenate)
_TORCH_DIR = str(Path(torch.__file__).parent)


class UntracedConcatInput(Exception):
    """A concatenation along channels joins a tensor that no traced operation produced."""


@dataclass(frozen=True)
class _Concat:
    """One concatenation seen while tracing: its inputs' sizes along the joined dimension."""

    sizes: tuple[int, ...]
    channels: bool  # image tensors (4-D or 5-D) joined along dimension 1
    where: str  # file:line of the call, for messages


class _Recorder(TorchFunctionMode):
    """Notes in each output's autograd node what the repairs need: concat sizes, broadcast inputs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not (isinstance(out, torch.Tensor) and out.grad_fn is not None and out.dim() >= 2):
            return out
        if func in _CONCATS:
            _note_concat(out, args, kwargs)
        else:
            broadcast = tuple(t.grad_fn for t in args if _broadcast_on_channels(t, out))
            if broadcast:
                out.grad_fn.metadata[_BROADCAST_KEY] = broadcast
        return out


@contextlib.contextmanager
def recording_shapes():
    """Within the block, concatenations and broadcasts record what the repairs need, and
    modules' outputs that are views are copies."""
    handle = torch.nn.modules.module.register_module_forward_hook(_copy_view)
    try:
        with _Recorder():
            yield
    finally:
        handle.remove()


def _copy_view(module, args, output):
    """A copy of ``output`` when it is a view that requires grad; None (keep it) otherwise.

    Global forward hooks run before a module's own, so Torch-Pruning records the copy.
    """
    if isinstance(output, torch.Tensor) and output._is_view() and output.requires_grad:
        return output.clone()
    return None


def decouple_broadcasts(graph: tp.DependencyGraph) -> None:
    """Cut the dependencies between element-wise operations and their inputs broadcast on channels."""
    for node in graph.module2node.values():
        broadcast = node.grad_fn.metadata.get(_BROADCAST_KEY, ()) if node.type == tp.ops.OPTYPE.ELEMENTWISE else ()
        for source in [n for n in node.inputs if any(n.grad_fn is g for g in broadcast)]:
            node.dependencies = [dep for dep in node.dependencies if dep.target is not source]
            source.dependencies = [dep for dep in source.dependencies if dep.target is not node]


def check_pinned() -> None:
    """Raise ImportError unless torch-pruning is :data:`PINNED_VERSION` with the sources the repairs rely on.

    The version is the installed distribution's: the 1.6.1 wheel's ``torch_pruning.__version__`` says 1.6.0.
    """
    version = importlib.metadata.version("torch-pruning")
    if version != PINNED_VERSION:
        pin = f"torch-pruning=={PINNED_VERSION}"
        raise ImportError(f"autosculpt needs {pin}, found {version}: pip install {pin}")
    for function, digest in _SOURCE_DIGESTS.items():
        if hashlib.sha256(inspect.getsource(function).encode()).hexdigest() != digest:
            message = f"torch_pruning's {function.__qualname__} differs from version {PINNED_VERSION}'s"
            raise ImportError(f"{message}: reinstall torch-pruning=={PINNED_VERSION}")


def install() -> None:
    """After :func:`check_pinned`, patch ``update_concat_index_mapping``; a second call does nothing."""
    if hasattr(index_mapping.update_concat_index_mapping, "original"):
        return
    check_pinned()
    original = index_mapping.update_concat_index_mapping

    def update_concat_index_mapping(graph, cat_node):
        seen = cat_node.grad_fn.metadata.get(_CONCAT_KEY)
        if seen is None:
            return original(graph, cat_node)
        if not seen.channels:
            return None
        if len(cat_node.inputs) != len(seen.sizes):
            raise UntracedConcatInput(f"torch.cat at {seen.where} joins, along channels, a tensor no layer produced")
        if cat_node.module.concat_sizes is None:
            cat_node.module.concat_sizes = list(seen.sizes)
        cat_node.enable_index_mapping = True
        return original(graph, cat_node)

    update_concat_index_mapping.original = original
    index_mapping.update_concat_index_mapping = update_concat_index_mapping


def _note_concat(out: torch.Tensor, args: tuple, kwargs: dict) -> None:
    tensors = args[0] if args else kwargs["tensors"]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
    if isinstance(dim, int):
        dim %= out.dim()
        sizes = tuple(t.shape[dim] for t in tensors)
        out.grad_fn.metadata[_CONCAT_KEY] = _Concat(sizes, dim == 1 and out.dim() >= 4, _caller())


def _broadcast_on_channels(t, out: torch.Tensor) -> bool:
    """Whether ``t`` is a traced input that ``out`` repeats along its channels (dimension 1)."""
    if not isinstance(t, torch.Tensor) or t.grad_fn is None or out.shape[1] == 1:
        return False
    channel_dim = t.dim() - out.dim() + 1  # dimensions align from the right
    return channel_dim < 0 or t.shape[channel_dim] == 1


def _caller() -> str:
    """file:line of the innermost frame outside torch and this module: the model's own code."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith((_TORCH_DIR, __file__)):
        frame = frame.f_back
    return f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}" if frame is not None else "an unknown place"


install()
