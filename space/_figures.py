"""Cheap size figures of a network: parameters, multiply-accumulates, channels per group."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from ..errors import UserError
from ._prune import layer_groups
from ._recipe import LayerGroup, is_ignored


@dataclass(frozen=True)
class Figures:
    """Size of one network for one input shape.

    ``params`` counts every parameter; ``macs`` the multiply-accumulates of one sample;
    ``channels`` the output channels of each layer group, by group name (0 for a group
    whose level the network dropped).
    """

    params: int
    macs: int
    channels: dict[str, int]

    def ratios_against(self, baseline: "Figures") -> dict[str, float]:
        """Compression relative to ``baseline``: how many times smaller this network is."""
        return {"param_ratio": baseline.params / self.params, "mac_ratio": baseline.macs / self.macs}


def figures(model: nn.Module, example_input: torch.Tensor, groups: Sequence[LayerGroup] | None = None) -> Figures:
    """The figures of ``model`` on ``example_input``; no training, ``model`` is not changed.

    ``groups`` (usually the baseline's) names the layers whose channels are reported;
    by default the model's own groups are discovered.
    """
    if groups is None:
        groups = layer_groups(model, example_input)
    # Torch-Pruning's counter visits a module reached twice (nnU-Net's decoder keeps a reference to its
    # encoder) twice, and prints a warning on stdout for each such module, every call: counted all the same.
    with contextlib.redirect_stdout(io.StringIO()):
        macs, _ = tp.utils.count_ops_and_params(model, (example_input,))
    dropped = getattr(model, "dropped", ())
    channels = {g.name: 0 if is_ignored(g.name, dropped) else _out_channels(model, g.name) for g in groups}
    return Figures(sum(p.numel() for p in model.parameters()), int(macs), channels)


def _out_channels(model: nn.Module, name: str) -> int:
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        message = f"the model has no layer {name!r}: pass the layer groups of this model or its baseline"
        raise UserError(message) from None
    return layer.out_channels if hasattr(layer, "out_channels") else layer.out_features
