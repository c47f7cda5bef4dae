"""Past the width floor: the narrowest networks width alone can make, against fewer layers.

Width pruning stops at a floor: every kept convolution costs a fixed time however few
channels it has. This bench builds, from the dense ``unet`` at 96 px, the narrowest network
of each depth the ``per-layer-depth`` space can reach (every group at the channel step, 4),
measures them side by side in the search's harness (ONNX Runtime, 1 thread, interleaved
over rounds so drift hits all alike) and prints the median latency, the speedup over the
dense model measured in the same run, parameters and MACs: how far past the width floor
depth can take a budget. It trains nothing (latency does not depend on the weights).

    python bench/depth.py              # unet at 96 px, 5 rounds (about a minute)
    python bench/depth.py --quick      # unet-tiny at 32 px, 1 short round (CI)
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from rich.console import Console
from rich.table import Table

from autosculpt.search.latency import Target, cpu_model, measure
from autosculpt.space import Recipe, UNet, apply_recipe, depth_of, figures, preset_config

ROUND_TO = 4  # the default spaces' channel step: the narrowest a group gets


def variants(dense: UNet) -> dict[str, Recipe]:
    """Name -> the recipe of the narrowest network at that depth."""
    depth = depth_of(dense)
    full_res = ["enc1", "dec1"]
    shapes = {"width floor (5 levels, 2 convolutions per stage)": depth.removed(0),
              "4 levels": depth.removed(1), "3 levels": depth.removed(2),
              "one convolution in the full-resolution stages": depth.removed(0, full_res),
              "one convolution per stage": depth.removed(0, list(depth.convs)),
              "3 levels, one convolution per stage": depth.removed(2, list(depth.convs))}
    return {name: Recipe.uniform(1e-6, round_to=ROUND_TO, removed=removed) for name, removed in shapes.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each network, interleaved (default 5)")
    parser.add_argument("--quick", action="store_true", help="unet-tiny at 32 px, 1 round of short measurements (CI)")
    args = parser.parse_args(argv)
    model, size, rounds = ("unet-tiny", 32, 1) if args.quick else ("unet", 96, args.rounds)
    target = Target(min_runs=5, max_seconds=0.1, warmup=1, rounds=3) if args.quick else Target()
    torch.manual_seed(0)
    example = torch.randn(1, 1, size, size)
    dense = UNet(preset_config(model, 1, 4)).eval()
    nets = {"dense": dense} | {name: apply_recipe(dense, recipe, example) for name, recipe in variants(dense).items()}
    times = {name: [] for name in nets}
    for _ in range(rounds):
        for name, net in nets.items():
            times[name].append(measure(net, tuple(example.shape), target).median_ms)
    dense_ms = statistics.median(times["dense"])
    table = Table(title=f"Narrowest networks of {model} at {size} px by depth: ONNX Runtime, 1 thread, median of {rounds} "
                        f"interleaved measurements; CPU: {cpu_model()}")
    for column in ("network", "median ms", "spread ms", "speedup", "parameters", "MMAC"):
        table.add_column(column, justify="left" if column == "network" else "right")
    for name, net in nets.items():
        ms, figs = statistics.median(times[name]), figures(net, example)
        table.add_row(name, f"{ms:.3f}", f"{max(times[name]) - min(times[name]):.3f}", f"{dense_ms / ms:.1f}x",
                      f"{figs.params:,}", f"{figs.macs / 1e6:.1f}")
    Console(width=160).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
