"""``autosculpt baseline``: train (once, cached) and score the dense model."""

from __future__ import annotations

from ..data import load_data
from ..training.baseline import get_baseline
from ._common import add_command, print_rows

EXAMPLES = [
    "autosculpt baseline",
    "autosculpt baseline --model unet-paper",
    "autosculpt baseline --data /data/ACDC/training --size 128",
]


def register(subparsers) -> None:
    parser = add_command(subparsers, "baseline", "Train the dense model once per (model, data, seed), cache it, and print its Dice per class.", EXAMPLES, run)
    parser.add_argument("--model", default="unet", metavar="PRESET|module:Class", help="model preset or your class (default unet)")
    parser.add_argument("--weights", metavar="FILE", help="state dict of your model: scored, not trained")
    parser.add_argument("--data", metavar="PATH", help="ACDC folder or images/+masks/ folder (default: generated cardiac MRI)")
    parser.add_argument("--size", type=int, default=96, metavar="N", help="input size N x N (default 96)")
    parser.add_argument("--epochs", type=int, metavar="N", help="training epochs (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, metavar="N")


def run(args) -> int:
    data = load_data(args.data, image_size=args.size, seed=args.seed)
    baseline = get_baseline(args.model, data, seed=args.seed, epochs=args.epochs, weights=args.weights)
    rows = [{"class": name, "val Dice": baseline.val.per_class[name], "test Dice": baseline.test.per_class[name]}
            for name in baseline.test.per_class]
    rows.append({"class": "mean (foreground)", "val Dice": baseline.val.mean, "test Dice": baseline.test.mean})
    print_rows(rows, "table", title=f"baseline {args.model} ({baseline.state_path.parent})")
    return 0
