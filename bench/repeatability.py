"""Do latency figures repeat? Five back-to-back measurements of the same network, side by side.

For the dense ``unet`` and a copy pruned to about the search's budget (uniform keep 0.2,
about 2 ms on a 2.5 GHz Xeon or EPYC core), idle and with another process keeping the
other core busy (a numpy matmul loop), it measures each network five times in a row with:

- ``single window``: the old harness (30 runs or 1 s, one round);
- ``rounds``: today's harness alone, as ``autosculpt latency`` and the study's
  calibration measure (rounds over a window; the median of the runs in the half of the
  rounds least disturbed);
- ``rounds + reference``: today's harness with the search's reference network (the
  dense net pruned uniformly to about the budget) timed in the same rounds, as every
  trial and the export measure;
- ``autosculpt latency``: the command itself, run five times as a user would (a new
  process each time), timing the network against this machine's cached reference.

It prints each set's medians, their spread (max/min - 1) and the seconds one measurement
takes (export to ONNX, worker process and timing included), naming the CPU. Back-to-back
sets share the machine's state; the ``loaded`` rows show what a busy neighbour does.

    python bench/repeatability.py            # about 4 minutes
    python bench/repeatability.py --quick    # 32x32, a smoke run
"""

from __future__ import annotations

import argparse
import multiprocessing
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

import torch
from rich.console import Console
from rich.table import Table

from autosculpt.search.latency import Reference, Target, cpu_model, measure
from autosculpt.search.onnx_io import to_onnx
from autosculpt.space import Recipe, UNet, apply_recipe, preset_config

OLD = Target(min_runs=30, max_seconds=1.0, min_seconds=0.0, rounds=1)
NEW = Target()
QUICK = Target(min_runs=10, max_seconds=0.2, min_seconds=0.1)
SETS = 5
KEEP = {"unet keep 0.2": 0.2}  # the pruned network, as `autosculpt latency --keep` prunes it


def busy_loop(n: int) -> None:
    """Keep one core busy with matrix products until terminated."""
    import numpy as np

    os.environ["OMP_NUM_THREADS"] = "1"
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    while True:
        a = (a @ a) / n


@contextmanager
def neighbour(loaded: bool, n: int):
    """A process keeping the other core busy while the block runs (nothing when not ``loaded``)."""
    if not loaded:
        yield
        return
    process = multiprocessing.get_context("spawn").Process(target=busy_loop, args=(n,), daemon=True)
    process.start()
    time.sleep(1.0)
    try:
        yield
    finally:
        process.terminate()
        process.join()


def networks(size: int) -> tuple[dict[str, torch.nn.Module], Reference, tuple[int, ...]]:
    """The dense unet, its keep-0.2 copy rounded to 4 channels as the search rounds, and the
    study's reference (keep 0.18, calibrated alone)."""
    shape = (1, 1, size, size)
    example = torch.randn(*shape)
    dense = UNet(preset_config("unet", 1, 4)).eval()
    pruned = apply_recipe(dense, Recipe.uniform(KEEP["unet keep 0.2"], round_to=4), example)
    reference = apply_recipe(dense, Recipe.uniform(0.18, round_to=4), example)
    calibration = statistics.median(measure(reference, shape, NEW).median_ms for _ in range(3))
    return {"unet": dense, f"unet keep {KEEP['unet keep 0.2']}": pruned}, Reference(to_onnx(reference, shape), calibration), shape


def measure_set(net, shape, target: Target, reference: Reference | None) -> tuple[list[float], float]:
    """Medians of SETS back-to-back measurements and the median seconds one took."""
    medians, seconds = [], []
    for _ in range(SETS):
        start = time.perf_counter()
        medians.append(measure(net, shape, target, reference).median_ms)
        seconds.append(time.perf_counter() - start)
    return medians, statistics.median(seconds)


def cli_set(keep: float | None, size: int) -> tuple[list[float], float]:
    """Medians of SETS back-to-back ``autosculpt latency`` commands and the median seconds one took."""
    command = [sys.executable, "-m", "autosculpt.search.cli", "latency", "--size", str(size), "--format", "json"]
    command += ["--keep", str(keep)] if keep is not None else []
    medians, seconds = [], []
    for _ in range(SETS):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        seconds.append(time.perf_counter() - start)
        medians.append(json.loads(done.stdout)["median_ms"])
    return medians, statistics.median(seconds)


def calibrate_cli(size: int) -> None:
    """Calibrate this machine's reference for the command once, outside the timed sets."""
    command = [sys.executable, "-m", "autosculpt.search.cli", "latency", "--size", str(size), "--recalibrate"]
    subprocess.run(command, capture_output=True, text=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 32x32 and short timings")
    args = parser.parse_args()
    size, old, new = (32, QUICK, QUICK) if args.quick else (96, OLD, NEW)
    console = Console(width=160)
    started = time.perf_counter()
    nets, reference, shape = networks(size)
    calibrate_cli(size)
    harnesses = {"single window": (old, None), "rounds": (new, None), "rounds + reference": (new, reference),
                 "autosculpt latency": (None, None)}
    table = Table(title=f"{SETS} back-to-back medians at {size}x{size}, ONNX Runtime, 1 thread, on {cpu_model()} "
                        f"({os.cpu_count()} cores); reference {reference.median_ms:.3f} ms")
    for column in ("network", "machine", "harness", "medians ms", "spread", "s / measurement"):
        table.add_column(column, justify="left" if column in ("network", "harness") else "right")
    for loaded in (False, True):
        with neighbour(loaded, 256 if args.quick else 1024):
            for name, net in nets.items():
                for harness, (target, ref) in harnesses.items():
                    if target is None:
                        medians, seconds = cli_set(KEEP.get(name), size)
                    else:
                        medians, seconds = measure_set(net, shape, target, ref)
                    table.add_row(name, "other core busy" if loaded else "idle", harness,
                                  " ".join(f"{m:.3f}" for m in medians), f"{max(medians) / min(medians) - 1:.1%}",
                                  f"{seconds:.2f}")
    console.print(table)
    console.print(f"run in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
