"""Helpers shared by the command modules: parsers with examples, and common options."""

from __future__ import annotations

import argparse
import csv
import json
import sys

from rich.console import Console
from rich.table import Table

from ..study.best import UNSETTLED_FINALISTS, UNSETTLED_LOSS


def add_command(subparsers, name: str, summary: str, examples: list[str], run) -> argparse.ArgumentParser:
    """Add a sub-command whose ``--help`` ends with its examples; ``run(args)`` executes it."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=run)
    return parser


def add_storage_option(parser: argparse.ArgumentParser) -> None:
    """``--storage URL``, falling back to $AUTOSCULPT_STORAGE, then the SQLite default."""
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage URL (default: $AUTOSCULPT_STORAGE or sqlite:///studies/autosculpt.db)",
    )


def add_search_options(parser: argparse.ArgumentParser) -> None:
    """The settings a study is created with; ``resume`` accepts them too, to change them with --force.

    Every default is None so the CLI can tell what the user gave from what fell back.
    """
    parser.add_argument("--budget-ms", type=float, metavar="MS", help="latency budget on the target CPU, in milliseconds")
    parser.add_argument("--speedup", type=float, metavar="X",
                        help="or: budget = the dense model's latency on the target / X, measured in the same harness")
    parser.add_argument("--max-dice-loss", type=float, metavar="PCT",
                        help="the verdict fails a model losing more test Dice than this, in percent (default 5)")
    parser.add_argument("--trials", type=int, metavar="N", help="trials in the study, all workers together (default 12)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="time limit of the study (default: none)")
    parser.add_argument("--model", metavar="PRESET|module:Class|DIR",
                        help="unet (default), unet-paper, unet-small, unet-tiny, your class, or an nnU-Net trained-model "
                             "folder (nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__2d)")
    parser.add_argument("--fold", type=int, metavar="N", help="fold of an nnU-Net --model folder (default: its only fold, else 0)")
    parser.add_argument("--weights", metavar="FILE", help="state dict of your model (loaded with weights_only=True)")
    parser.add_argument("--data", metavar="PATH", help="ACDC folder, images/+masks/ folder or nnU-Net raw data set (default: "
                        "generated cardiac MRI; for an nnU-Net --model, $nnUNet_raw/<its data set> when nnUNet_raw is set)")
    parser.add_argument("--group-by", metavar="REGEX", help="patient of an images/ file: the regex's first group in its path (default: subfolder, or name up to the first _)")
    parser.add_argument("--size", type=int, dest="image_size", metavar="N", help="input size N x N, a multiple of 16 (default 96)")
    parser.add_argument("--space", metavar="FILE|PRESET", help="search space: per-layer (default: with per-layer-depth's depth where width alone cannot reach the budget), "
                        "per-layer-depth (also drops deepest levels and second convolutions of our U-Nets), "
                        "per-stage, nnunet-stages (one width per nnU-Net stage), uniform, or a TOML file")
    parser.add_argument("--target", metavar="URL", help="remote latency agent http://HOST:PORT (token in $AUTOSCULPT_AGENT_TOKEN)")
    parser.add_argument("--threads", type=int, metavar="N", help="threads on the target (default 1)")
    parser.add_argument("--runtime", choices=("ort", "torch"), help="deployed runtime to measure (default ort = ONNX Runtime)")
    parser.add_argument("--epochs", type=int, metavar="N",
                        help="most fine-tuning epochs of a trial; the pruner stops two in three just past half of them (default 8)")
    parser.add_argument("--crop", type=int, metavar="N", help="train (baseline and fine-tunes) on random N x N patches, "
                        "score on whole slices; 0: whole slices (default: 128 px patches for slices over 160 px, whole below)")
    parser.add_argument("--epoch-slices", type=int, metavar="N", help="a trial's fine-tune epoch draws N of the training "
                        "slices at random (default: all; the polish takes all)")
    parser.add_argument("--polish-epochs", type=int, metavar="N", help="epochs of each finalist's polish (default 2 x --epochs, up to 3 times that for "
                        "networks over 100x smaller; 0: none)")
    parser.add_argument("--finalists", type=int, metavar="K", help="polish the K best trials within budget and keep the best "
                        f"after its polish (default 1, or {UNSETTLED_FINALISTS} when the best trial scores over {UNSETTLED_LOSS * 100:g} %% below the baseline: its short "
                        "fine-tune has not settled; each costs one polish; 3 or more also measure how well trial scores rank them)")
    parser.add_argument("--seed", type=int, metavar="N", help="seed of the data, baseline and samplers (default 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"),
                        help="where to train the baseline, fine-tunes and polish (default auto: a CUDA GPU if there is "
                             "one); latency is measured on the target CPU either way")
    parser.add_argument("--distill", type=float, metavar="W", help="weight of distillation from the baseline while fine-tuning (default 0: off)")
    parser.add_argument("--precision", metavar="LIST", help="deployed precisions a trial may take: fp32 (default), int8, or "
                        "fp32,int8 (a search dimension: INT8 candidates are quantized, measured and scored as INT8)")


def print_rows(rows: list[dict], fmt: str, title: str) -> None:
    """Print ``rows`` (dicts with the same keys) as a rich table, JSON or CSV on stdout."""
    if fmt == "json":
        print(json.dumps(rows, indent=2, default=str))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    else:
        table = Table(title=title)
        for key in rows[0] if rows else ["(none)"]:
            table.add_column(key)
        for row in rows:
            table.add_row(*(_cell(v) for v in row.values()))
        console = Console()
        if not console.is_terminal:  # piped or redirected: never squeeze columns to 80
            console = Console(width=240)
        console.print(table)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
