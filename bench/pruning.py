"""How far uniform pruning compresses the U-Net presets, and how long pruning takes.

The paper compressed an off-the-shelf U-Net 1148x by hand; this shows the search space
reaches that on ``unet-paper`` (1 input channel, 4 classes, 96x96 input).

    python bench/pruning.py            # unet and unet-paper, keep 0.5 .. 0.02
    python bench/pruning.py --quick    # smoke run on unet-tiny
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from autosculpt.space import Recipe, UNet, apply_recipe, figures, layer_groups, preset_config

PAPER_RATIO = 1148
KEEPS = (0.5, 0.25, 0.1, 0.05, 0.03, 0.025, 0.02)
# The search-space presets round channels to multiples of 4: show the paper's ratio survives it.
PRESET_ROUNDING = (4, (0.05, 0.03, 0.025, 0.02))


def measure(preset: str, size: int, runs: list[tuple[int, tuple[float, ...]]]) -> list[dict]:
    """One row per (round_to, keep): figures of the uniformly pruned preset and the time to prune."""
    torch.manual_seed(0)
    baseline = UNet(preset_config(preset, 1, 4)).eval()
    x = torch.randn(1, 1, size, size)
    groups = layer_groups(baseline, x)
    base = figures(baseline, x, groups)
    rows = [_row(preset, 1.0, 1, base, base, 0.0)]
    for round_to, keeps in runs:
        for keep in keeps:
            start = time.perf_counter()
            net = apply_recipe(baseline, Recipe.uniform(keep, round_to=round_to), x)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                assert net(x).shape == baseline(x).shape
            rows.append(_row(preset, keep, round_to, figures(net, x, groups), base, seconds))
    return rows


def _row(model: str, keep: float, round_to: int, got, base, seconds: float) -> dict:
    ratios = got.ratios_against(base)
    return {"model": model, "keep": keep, "round_to": round_to, "figures": got, "ratios": ratios, "seconds": seconds}


def render(rows: list[dict], size: int) -> Table:
    table = Table(title=f"Uniform pruning, 1 input channel, 4 classes, {size}x{size} input")
    for column in ("model", "keep", "round_to", "params", "MACs", "param ratio", "MAC ratio", "prune s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        fig, ratios = row["figures"], row["ratios"]
        mark = " *" if ratios["param_ratio"] >= PAPER_RATIO else ""
        table.add_row(
            row["model"],
            f"{row['keep']:g}",
            str(row["round_to"]),
            f"{fig.params:,}",
            f"{fig.macs:,}",
            f"{ratios['param_ratio']:,.1f}x{mark}",
            f"{ratios['mac_ratio']:,.1f}x",
            f"{row['seconds']:.2f}",
        )
    return table


def first_crossing(rows: list[dict], round_to: int) -> dict | None:
    """The largest keep (rows are in decreasing keep) whose parameter ratio reaches the paper's."""
    return next((r for r in rows if r["round_to"] == round_to and r["ratios"]["param_ratio"] >= PAPER_RATIO), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: unet-tiny at 32x32, two ratios")
    args = parser.parse_args()
    console = Console(width=110)
    if args.quick:
        size, plan = 32, {"unet-tiny": [(1, (0.5, 0.05))]}
    else:
        size, plan = 96, {"unet": [(1, KEEPS)], "unet-paper": [(1, KEEPS), PRESET_ROUNDING]}
    rows = [row for preset, runs in plan.items() for row in measure(preset, size, runs)]
    console.print(render(rows, size))
    console.print(f"* reaches the paper's {PAPER_RATIO}x parameter compression")
    paper_rows = [r for r in rows if r["model"] == "unet-paper"]
    for round_to in sorted({r["round_to"] for r in paper_rows}):
        hit = first_crossing(paper_rows, round_to)
        if hit:
            ratio = hit["ratios"]["param_ratio"]
            first = f"keep {hit['keep']:g} first crosses {PAPER_RATIO}x ({ratio:,.0f}x)"
            console.print(f"unet-paper, round_to={round_to}: {first}")


if __name__ == "__main__":
    main()
