"""Benchmark of the latency harness: the ``unet`` baseline and uniformly pruned copies.

For each runtime (ort, torch) and thread count (1, 2) it prints the median and p90 latency,
the speedup over the baseline in the same runtime and threads, the run-to-run spread of
the median over repeats (interleaved across models so drift hits all alike), and the
achieved GFLOP/s (2 * MACs / median) against the same runtime's fp32 matmul rate on this
CPU (2048^3: ``torch.mm`` for torch, MLAS MatMul for ort, measured in the same run). A
second table measures each net several times in a row at 1 thread: how far apart
back-to-back medians are.

    python bench/latency.py            # the full run, a few minutes
    python bench/latency.py --quick    # a smoke run at 32x32
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, replace

import torch
from rich.console import Console
from rich.table import Table

from autosculpt.search.latency import Target, measure
from autosculpt.space import Recipe, UNet, apply_recipe, figures, preset_config

RUNTIMES = ("ort", "torch")
THREADS = (1, 2)


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    size: int
    keeps: tuple[float, ...]
    repeats: int
    in_a_row: int
    matmul_n: int
    target: Target


FULL = Plan(96, (1.0, 0.5, 0.25, 0.1), 3, 5, 2048, Target())
QUICK = Plan(32, (1.0, 0.25), 2, 3, 512, Target(min_runs=10, max_seconds=0.2, warmup=2))


def nets(shape: tuple[int, ...], keeps) -> dict[float, tuple[torch.nn.Module, int]]:
    """keep ratio -> (network, MACs of one sample): the baseline and its uniform prunings."""
    example = torch.randn(*shape)
    baseline = UNet(preset_config("unet", shape[1], 4)).eval()
    models = {keep: baseline if keep == 1.0 else apply_recipe(baseline, Recipe.uniform(keep), example) for keep in keeps}
    return {keep: (model, figures(model, example).macs) for keep, model in models.items()}


class MatMul(torch.nn.Module):
    """``a @ b`` with a fixed n x n ``b``: the CPU's fp32 GEMM rate, measured by the harness."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("b", torch.randn(n, n))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a @ self.b


def matmul_gflops(runtime: str, threads: int, n: int) -> float:
    """The fp32 rate of an n^3 matmul in ``runtime`` (torch: ``torch.mm``; ort: MLAS MatMul)."""
    stats = measure(MatMul(n), (1, n, n), Target(runtime=runtime, threads=threads, min_runs=5, warmup=2))
    return 2 * n**3 / (stats.median_ms / 1e3) / 1e9


def sweep(models, shape, plan: Plan) -> dict:
    """(runtime, threads, keep) -> the LatencyStats of each repeat, repeats outermost."""
    results: dict = {}
    for _ in range(plan.repeats):
        for runtime in RUNTIMES:
            for threads in THREADS:
                target = replace(plan.target, runtime=runtime, threads=threads)
                for keep, (model, _) in models.items():
                    results.setdefault((runtime, threads, keep), []).append(measure(model, shape, target))
    return results


def in_a_row(models, shape, plan: Plan) -> dict:
    """(runtime, keep) -> medians of back-to-back measurements at 1 thread."""
    return {
        (runtime, keep): [measure(model, shape, replace(plan.target, runtime=runtime)).median_ms
                          for _ in range(plan.in_a_row)]
        for runtime in RUNTIMES for keep, (model, _) in models.items()
    }


def sweep_table(models, results, peak: dict, shape) -> Table:
    repeats = len(next(iter(results.values())))
    table = Table(title=f"unet at {'x'.join(map(str, shape))}: median of {repeats} interleaved repeats")
    for column in ("runtime", "threads", "keep", "GMACs", "median ms", "p90 ms", "speedup", "spread",
                   "GFLOP/s", "% of matmul"):
        table.add_column(column, justify="right")
    for (runtime, threads, keep), stats in results.items():
        medians = [s.median_ms for s in stats]
        median = statistics.median(medians)
        baseline = statistics.median(s.median_ms for s in results[(runtime, threads, 1.0)])
        gflops = 2 * models[keep][1] / (median / 1e3) / 1e9
        table.add_row(
            runtime, str(threads), f"{keep:g}", f"{models[keep][1] / 1e9:.3f}", f"{median:.2f}",
            f"{statistics.median(s.p90_ms for s in stats):.2f}", f"{baseline / median:.1f}x",
            f"{(max(medians) - min(medians)) / median:.1%}", f"{gflops:.0f}", f"{gflops / peak[(runtime, threads)]:.0%}",
        )
    return table


def stability_table(rows: dict) -> Table:
    count = len(next(iter(rows.values())))
    table = Table(title=f"the same net measured {count} times in a row, 1 thread")
    for column in ("runtime", "keep", "medians ms", "max/min - 1", "worst off the median"):
        table.add_column(column, justify="right")
    for (runtime, keep), medians in rows.items():
        middle = statistics.median(medians)
        table.add_row(
            runtime, f"{keep:g}", " ".join(f"{m:.3f}" for m in medians), f"{max(medians) / min(medians) - 1:.1%}",
            f"{max(abs(m / middle - 1) for m in medians):.1%}",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 32x32, 2 nets, short timings")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    shape = (1, 1, plan.size, plan.size)
    console = Console(width=140)
    started = time.perf_counter()
    peak = {(runtime, threads): matmul_gflops(runtime, threads, plan.matmul_n) for runtime in RUNTIMES for threads in THREADS}
    console.print(f"fp32 {plan.matmul_n}^3 matmul, GFLOP/s: " + ", ".join(
        f"{runtime} {threads} thread{'s' * (threads > 1)} {rate:.0f}" for (runtime, threads), rate in peak.items()))
    models = nets(shape, plan.keeps)
    console.print(sweep_table(models, sweep(models, shape, plan), peak, shape))
    console.print(stability_table(in_a_row(models, shape, plan)))
    console.print(f"run in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
