"""The U-Net family: a classic 4-pooling U-Net with per-stage widths, and its presets.

Module names are stable and readable (``enc1``..``enc4``, ``bottleneck``, ``up4``..``up1``,
``dec4``..``dec1``, ``head``) because the search space names its Optuna parameters after
them (``keep.enc2.conv1``) and reports show them per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild a U-Net: the architecture half of a recipe."""

    in_channels: int = 1
    num_classes: int = 4
    widths: tuple[int, ...] = (32, 64, 128, 256, 512)

    def scaled(self, multiplier: float, round_to: int = 1, min_channels: int = 1) -> "UNetConfig":
        """The same U-Net with every stage width multiplied, rounded and floored."""
        widths = tuple(round_channels(w * multiplier, round_to, min_channels) for w in self.widths)
        return UNetConfig(self.in_channels, self.num_classes, widths)

    def to_dict(self) -> dict:
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, data: dict) -> "UNetConfig":
        return cls(int(data["in_channels"]), int(data["num_classes"]), tuple(int(w) for w in data["widths"]))


def round_channels(channels: float, round_to: int = 1, min_channels: int = 1) -> int:
    """Round a channel count to the nearest multiple of ``round_to``, never below ``min_channels``."""
    rounded = int(round(channels / round_to)) * round_to
    return max(min_channels, rounded)


# Base width 32 is the ``unet`` default (7.8M parameters); base 64 is the classic
# off-the-shelf configuration (31M parameters) that the paper compressed by hand.
PRESETS: dict[str, tuple[int, ...]] = {
    "unet": (32, 64, 128, 256, 512),
    "unet-paper": (64, 128, 256, 512, 1024),
    "unet-small": (16, 32, 64, 128, 256),
    "unet-tiny": (4, 8, 16, 32, 64),
}


def preset_config(name: str, in_channels: int, num_classes: int) -> UNetConfig:
    """The configuration of a named preset for data with these channels and classes."""
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}: choose one of {', '.join(PRESETS)} or give module:Class")
    return UNetConfig(in_channels, num_classes, PRESETS[name])


class DoubleConv(nn.Sequential):
    """(3x3 conv, BatchNorm, ReLU) twice: one U-Net stage."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)


# The encoder stage of each level, full resolution first; the U-Net's depth is how many it keeps.
LEVELS = ("enc1", "enc2", "enc3", "enc4", "bottleneck")
MIN_LEVELS = 3  # a U-Net kept at least this deep (two poolings) by :meth:`UNet.drop_levels`


class UNet(nn.Module):
    """Ronneberger's U-Net: 4 max-pool downsamplings, transposed-conv upsampling, concat skips.

    Input ``(N, in_channels, H, W)`` with H and W divisible by 16; output logits
    ``(N, num_classes, H, W)``. :meth:`drop_levels` and :meth:`drop_convs` make it shallower
    (depth beside width, :mod:`._depth`).
    """

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        if len(config.widths) != 5:
            raise UserError(f"a U-Net needs 5 stage widths, got {len(config.widths)}: give e.g. 32,64,128,256,512")
        self.config = config
        self.levels = len(LEVELS)
        self.dropped: tuple[str, ...] = ()  # the modules drop_levels removed
        w1, w2, w3, w4, w5 = config.widths
        self.enc1 = DoubleConv(config.in_channels, w1, w1)
        self.enc2 = DoubleConv(w1, w2, w2)
        self.enc3 = DoubleConv(w2, w3, w3)
        self.enc4 = DoubleConv(w3, w4, w4)
        self.bottleneck = DoubleConv(w4, w5, w5)
        self.pool = nn.MaxPool2d(2)
        self.up4 = nn.ConvTranspose2d(w5, w4, 2, stride=2)
        self.dec4 = DoubleConv(2 * w4, w4, w4)
        self.up3 = nn.ConvTranspose2d(w4, w3, 2, stride=2)
        self.dec3 = DoubleConv(2 * w3, w3, w3)
        self.up2 = nn.ConvTranspose2d(w3, w2, 2, stride=2)
        self.dec2 = DoubleConv(2 * w2, w2, w2)
        self.up1 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        self.dec1 = DoubleConv(2 * w1, w1, w1)
        self.head = nn.Conv2d(w1, config.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, name in enumerate(LEVELS[: self.levels]):
            x = getattr(self, name)(x if level == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()  # the deepest kept stage is the bottom of the U
        for level in range(len(skips), 0, -1):
            x = getattr(self, f"dec{level}")(torch.cat([skips[level - 1], getattr(self, f"up{level}")(x)], dim=1))
        return self.head(x)

    def droppable_levels(self) -> list[tuple[str, ...]]:
        """The modules of each level :meth:`drop_levels` can remove, deepest first: its encoder
        stage and the upsampling and decoder stage that bring it back up."""
        return [(LEVELS[level - 1], f"up{level - 1}", f"dec{level - 1}") for level in range(self.levels, MIN_LEVELS, -1)]

    def drop_levels(self, count: int) -> None:
        """Remove the ``count`` deepest levels in place: the encoder stage above them becomes
        the bottom of the U and feeds the next upsampling directly (its channels already match).
        Every other module keeps its weights; ``dropped`` names the removed ones. More than
        :meth:`droppable_levels` raises UserError."""
        droppable = self.droppable_levels()
        if not 0 <= count <= len(droppable):
            raise UserError(f"cannot drop {count} levels of a {self.levels}-level U-Net: at most {len(droppable)}")
        for names in droppable[:count]:
            for name in names:
                delattr(self, name)
            self.dropped += names
        self.levels -= count

    def droppable_convs(self) -> dict[str, tuple[str, ...]]:
        """For each stage that still has two convolutions, the modules of its second one."""
        return {name: (f"{name}.conv2", f"{name}.bn2", f"{name}.relu2")
                for name, stage in self.named_children() if isinstance(stage, DoubleConv) and hasattr(stage, "conv2")}

    def drop_convs(self, stages: list[str]) -> None:
        """Remove the second convolution (and its norm and activation) of each of ``stages`` in
        place: the stage's first one then feeds its consumers (a stage's two convolutions have
        the same width before pruning). ``dropped`` names the removed modules."""
        droppable = self.droppable_convs()
        for stage in stages:
            if stage not in droppable:
                raise UserError(f"stage {stage!r} has no second convolution to drop: choose from {', '.join(droppable)}")
            for name in droppable[stage]:
                delattr(self.get_submodule(stage), name.split(".")[1])
            self.dropped += droppable[stage]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
