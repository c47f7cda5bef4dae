"""What autosculpt prunes in the segmentation networks users bring, and how small they get.

For each architecture at its usual width (1 input channel, 4 classes, 96x96 input): how
many layer groups the search prunes and how many it keeps whole (and which kinds), the
dense network's parameters and latency, and the narrowest network the default space can
make (every prunable group at 4 channels, what ``channels.round_to = 4`` allows at the
least) beside it. Latency is ONNX Runtime at 1 thread on this CPU, each network measured
alone with the search's harness, dense and narrow alternating, the median of 3.

    python bench/architectures.py            # every architecture (about 10 minutes on 2 cores)
    python bench/architectures.py --quick    # ours and nnU-Net's ResEnc at 32x32, no latency
    python bench/architectures.py --only unetr,swinunetr

nnU-Net's networks need ``pip install --no-deps dynamic-network-architectures==0.4.4``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from autosculpt.search.latency import Target, cpu_model, measure
from autosculpt.space import Recipe, UNet, apply_recipe, count_parameters, figures, preset_config, survey_groups

CLASSES = 4
FLOOR = 4  # the default space's channel rounding: the fewest channels a group keeps
MEASUREMENTS = 3


def _ours() -> nn.Module:
    return UNet(preset_config("unet", 1, CLASSES))


def _monai(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from monai.networks import nets
        return getattr(nets, name)(**kwargs)
    return build


def _nnunet(name: str, blocks: tuple[int, ...] | int) -> Callable[[], nn.Module]:
    """nnU-Net's 2D network as its plans configure one for a 96x96 patch: 5 stages, 32-512 features."""
    def build() -> nn.Module:
        from dynamic_network_architectures.architectures import unet
        return getattr(unet, name)(1, 5, (32, 64, 128, 256, 512), nn.Conv2d, 3, (1, 2, 2, 2, 2), blocks, CLASSES,
                                   (1, 1, 1, 1) if name == "ResidualEncoderUNet" else 2, True, nn.InstanceNorm2d,
                                   {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU, {"inplace": True})
    return build


# name: (kind, builder); MONAI's at their documented defaults, 2D
ARCHITECTURES: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "unet (ours)": ("plain", _ours),
    "basicunet": ("plain", _monai("BasicUNet", spatial_dims=2, in_channels=1, out_channels=CLASSES)),
    "nnunet-plain": ("plain", _nnunet("PlainConvUNet", 2)),
    "nnunet-resenc": ("residual", _nnunet("ResidualEncoderUNet", (1, 3, 4, 6, 6))),
    "dynunet-res": ("residual", _monai("DynUNet", spatial_dims=2, in_channels=1, out_channels=CLASSES,
                                       kernel_size=[3] * 5, strides=[1, 2, 2, 2, 2], upsample_kernel_size=[2] * 4,
                                       res_block=True)),
    "monai-unet-res": ("residual", _monai("UNet", spatial_dims=2, in_channels=1, out_channels=CLASSES,
                                          channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)),
    "unetplusplus": ("nested", _monai("BasicUNetPlusPlus", spatial_dims=2, in_channels=1, out_channels=CLASSES)),
    "unetr": ("transformer", _monai("UNETR", in_channels=1, out_channels=CLASSES, img_size=(96, 96), spatial_dims=2)),
    "swinunetr": ("transformer", _monai("SwinUNETR", in_channels=1, out_channels=CLASSES, feature_size=24,
                                        spatial_dims=2)),
}
QUICK = ("unet (ours)", "nnunet-resenc")


class _FirstOutput(nn.Module):
    """A network whose forward returns a list (UNet++), seen through its first output."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        out = self.net(x)
        return out[0] if isinstance(out, (list, tuple)) else out


def row(name: str, size: int, timed: bool) -> dict:
    kind, build = ARCHITECTURES[name]
    torch.manual_seed(0)
    dense = _FirstOutput(build()).eval()
    x = torch.randn(1, 1, size, size)
    start = time.perf_counter()
    survey = survey_groups(dense, x)
    seconds = time.perf_counter() - start
    narrow = apply_recipe(dense, Recipe.uniform(FLOOR / 10**6, round_to=FLOOR, ignore=survey.ignore()), x)
    dense_ms, narrow_ms = _latencies(dense, narrow, tuple(x.shape)) if timed else (None, None)
    return {"name": name, "kind": kind, "groups": len(survey.groups), "kept_whole": survey.kept_whole,
            "params": count_parameters(dense), "narrow_params": count_parameters(narrow),
            "macs": figures(dense, x, survey.groups).macs, "narrow_macs": figures(narrow, x, survey.groups).macs,
            "dense_ms": dense_ms, "narrow_ms": narrow_ms, "survey_s": seconds}


def _latencies(dense: nn.Module, narrow: nn.Module, shape: tuple[int, ...]) -> tuple[float, float]:
    """Median latency of each network over MEASUREMENTS measurements, taken alternately."""
    target, dense_ms, narrow_ms = Target(), [], []
    for _ in range(MEASUREMENTS):
        dense_ms.append(measure(dense, shape, target).median_ms)
        narrow_ms.append(measure(narrow, shape, target).median_ms)
    return statistics.median(dense_ms), statistics.median(narrow_ms)


def kept_kinds(kept_whole: dict[str, str]) -> str:
    """What the kept-whole groups are, by the last part of their names ('qkv', 'patch_embeddings')."""
    if not kept_whole:
        return "-"
    counts: dict[str, int] = {}
    for name in kept_whole:
        counts[name.rsplit(".", 1)[-1]] = counts.get(name.rsplit(".", 1)[-1], 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


def render(rows: list[dict], size: int) -> Table:
    table = Table(title=f"Architectures at {size}x{size}, 1 channel in, {CLASSES} classes; narrowest = every "
                        f"prunable group at {FLOOR} channels; {cpu_model()}, ONNX Runtime 1 thread")
    for column in ("network", "kind", "pruned groups", "kept whole", "params", "narrowest params", "param ratio",
                   "MAC ratio", "dense ms", "narrowest ms", "speedup", "survey s"):
        table.add_column(column, justify="left" if column in ("network", "kind", "kept whole") else "right")
    for r in rows:
        timed = r["dense_ms"] is not None
        table.add_row(
            r["name"], r["kind"], str(r["groups"]), kept_kinds(r["kept_whole"]), f"{r['params']:,}",
            f"{r['narrow_params']:,}", f"{r['params'] / r['narrow_params']:,.0f}x", f"{r['macs'] / r['narrow_macs']:,.0f}x",
            f"{r['dense_ms']:.2f}" if timed else "-", f"{r['narrow_ms']:.3f}" if timed else "-",
            f"{r['dense_ms'] / r['narrow_ms']:.1f}x" if timed else "-", f"{r['survey_s']:.1f}",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="examples:\n  python bench/architectures.py\n  python bench/architectures.py --quick",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ours and nnU-Net's ResEnc at 32x32, no latency")
    parser.add_argument("--only", help=f"comma-separated names of {', '.join(ARCHITECTURES)}")
    args = parser.parse_args()
    names = QUICK if args.quick else (args.only.split(",") if args.only else list(ARCHITECTURES))
    unknown = [n for n in names if n not in ARCHITECTURES]
    if unknown:
        parser.error(f"unknown architecture(s) {', '.join(unknown)}: choose from {', '.join(ARCHITECTURES)}")
    size = 32 if args.quick else 96
    console = Console(width=200)
    rows = []
    for name in names:
        console.print(f"{name} ...")
        rows.append(row(name, size, timed=not args.quick))
    console.print(render(rows, size))
    for r in rows:
        if r["kept_whole"]:
            console.print(f"{r['name']}: {len(r['kept_whole'])} groups kept whole: {', '.join(r['kept_whole'])}",
                          soft_wrap=True)


if __name__ == "__main__":
    main()
