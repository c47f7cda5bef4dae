"""INT8 against fp32 at three budgets: the ``unet`` preset pruned uniformly, fine-tuned briefly.

Three keep ratios of the trained dense ``unet`` (generated data) stand in for three
latency budgets: each pruned copy is fine-tuned for a few epochs, exported to ONNX and
quantized exactly as ``autosculpt export --precision int8`` does (:mod:`autosculpt.search.quantize`).
Per network it prints:

- latency in ONNX Runtime at 1 thread with the project's harness (``measure_onnx``, one
  target): fp32 alone, then every INT8 model timed with the fp32 model as its reference
  (:class:`Reference`: the two interleaved in the same rounds), so the ratio is measured
  side by side and machine drift cancels; pooled over a few measurements;
- test Dice of fp32 and INT8 in ONNX Runtime, their change, and the share of test pixels
  whose label INT8 keeps;
- the pitfalls: the INT8 latency with ConvTranspose quantized too, and with the thin
  convolutions quantized too (what the deployed choice keeps in fp32).

    python bench/int8.py            # 96x96, 60 patients: 5.5 min on 2 quiet cores, 4 of them
                                    # training the dense baseline (cached for the next run)
    python bench/int8.py --quick    # a smoke run at 32x32: 15 s
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import onnxruntime
from rich.console import Console
from rich.table import Table

from autosculpt.search.data import SegmentationData, load_data
from autosculpt.search.latency import LatencyStats, Reference, Target, cpu_model, has_vnni, measure_onnx, pooled
from autosculpt.search.onnx_io import ort_labels, to_onnx
from autosculpt.search.quantize import calibration_slices, quantize_int8
from autosculpt.search.study.study import calibration_batch
from autosculpt.search.training.baseline import example_input, get_baseline
from autosculpt.search.training.train import finetune_schedule, split_scores, train
from autosculpt.space import Recipe, apply_recipe, count_parameters, figures


@dataclass(frozen=True)
class Plan:
    """How much to train and measure."""

    size: int
    patients: int | None  # None: the generated set's default
    baseline_epochs: int | None  # None: the preset's (cached, shared with `autosculpt search`)
    finetune_epochs: int
    keeps: tuple[float, ...]
    measurements: int
    target: Target


FULL = Plan(96, None, None, 2, (0.5, 0.25, 0.1), 3, Target())
QUICK = Plan(32, 8, 2, 1, (0.5, 0.25, 0.1), 1, Target(min_runs=10, max_seconds=0.2, warmup=2, min_seconds=0.1, rounds=4))


@dataclass(frozen=True)
class Row:
    keep: float
    params: int
    fp32: LatencyStats
    int8: LatencyStats
    int8_conv_transpose: LatencyStats
    int8_thin: LatencyStats
    fp32_dice: float
    int8_dice: float
    agreement: float
    kept_fp32: dict[str, int]


def bench_keep(keep: float, baseline, data: SegmentationData, plan: Plan, reduce_range: bool) -> Row:
    """Prune, fine-tune, quantize three ways, measure and score one network."""
    example = example_input(data)
    shape = tuple(example.shape)
    net = apply_recipe(baseline.model, Recipe.uniform(keep), example, calibration_batch(data))
    train(net, data, finetune_schedule(net, count_parameters(baseline.model), plan.finetune_epochs))  # as a trial
    fp32 = to_onnx(net, shape)
    slices = calibration_slices(data.train.images)
    int8 = quantize_int8(fp32, slices, reduce_range)
    variants = {"deployed": int8.onnx,
                "conv_transpose": quantize_int8(fp32, slices, reduce_range, conv_transpose=True).onnx,
                "thin": quantize_int8(fp32, slices, reduce_range, min_channels=1).onnx}
    fp32_stats = pooled([measure_onnx(fp32, shape, plan.target) for _ in range(plan.measurements)])
    reference = Reference(fp32, fp32_stats.median_ms)
    stats = {name: pooled([measure_onnx(model, shape, plan.target, reference) for _ in range(plan.measurements)])
             for name, model in variants.items()}
    fp32_pred, int8_pred = ort_labels(fp32, data.test.images), ort_labels(int8.onnx, data.test.images)
    return Row(keep, figures(net, example).params, fp32_stats, stats["deployed"], stats["conv_transpose"], stats["thin"],
               split_scores(fp32_pred, data.test, data.class_names).mean, split_scores(int8_pred, data.test, data.class_names).mean,
               float((fp32_pred == int8_pred).double().mean()),
               int8.kept_fp32)


def table(rows: list[Row], title: str) -> Table:
    table = Table(title=title)
    for column in ("keep", "params", "fp32 ms", "INT8 ms", "fp32 / INT8", "fp32 test Dice", "INT8 test Dice", "Δ Dice",
                   "pixels kept", "kept fp32", "INT8 ms, ConvT quantized", "INT8 ms, thin convs quantized"):
        table.add_column(column, justify="right")
    for r in rows:
        kept = ", ".join(f"{count} {kind}" for kind, count in r.kept_fp32.items())
        table.add_row(
            f"{r.keep:g}", f"{r.params:,}", f"{r.fp32.median_ms:.2f}", f"{r.int8.median_ms:.2f}",
            f"{r.fp32.median_ms / r.int8.median_ms:.2f}x", f"{r.fp32_dice:.3f}", f"{r.int8_dice:.3f}",
            f"{r.int8_dice - r.fp32_dice:+.3f} ({(r.int8_dice - r.fp32_dice) / r.fp32_dice:+.1%})", f"{r.agreement:.2%}",
            kept, f"{r.int8_conv_transpose.median_ms:.2f}", f"{r.int8_thin.median_ms:.2f}",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 32x32, few epochs, short measurements")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    console = Console(stderr=True)
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    data = load_data(None, image_size=plan.size, seed=0, patients=plan.patients)
    baseline = get_baseline("unet", data, seed=0, epochs=plan.baseline_epochs)
    console.print(f"baseline ready after {time.perf_counter() - start:.0f} s (test Dice {baseline.test.mean:.3f})")
    vnni = has_vnni()
    rows = []
    for keep in plan.keeps:
        rows.append(bench_keep(keep, baseline, data, plan, reduce_range=vnni is not True))
        console.print(f"keep {keep:g} done after {time.perf_counter() - start:.0f} s")
    title = (f"unet at {plan.size}x{plan.size}, fp32 against INT8 (ONNX Runtime {onnxruntime.__version__}, 1 thread, "
             f"{rows[0].fp32.clock} clock) on {cpu_model()}, VNNI {vnni}, reduce_range {vnni is not True}; "
             f"{plan.finetune_epochs} fine-tune epochs; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; "
             f"{time.perf_counter() - start:.0f} s")
    Console(width=250).print(table(rows, title))


if __name__ == "__main__":
    main()
