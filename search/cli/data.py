"""``autosculpt data``: look at the data a search trains on, before spending CPU hours on it."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..data import load_data, save_preview
from ..data._types import SPLITS
from ._common import add_command


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "data",
        "Preview or summarise a data set: the generated cardiac MRI set, or your own folder.",
        ["autosculpt data preview --out preview.png", "autosculpt data info --data ./ACDC/training"],
        None,  # each action below sets its own func
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    preview = add_command(
        actions,
        "preview",
        "Write a PNG of test slices (RGB in colour, else the first channel in grey) beside their mask overlays.",
        [
            "autosculpt data preview --out preview.png",
            "autosculpt data preview --data ./ACDC/training --count 8 --split train",
            "autosculpt data preview --size 32 --seed 1 --out smoke.png",
        ],
        _preview,
    )
    _add_data_options(preview)
    preview.add_argument("--out", type=Path, default=Path("preview.png"), help="PNG to write (default: preview.png)")
    preview.add_argument("--count", type=int, default=4, help="slices to show (default: 4)")
    preview.add_argument("--split", choices=SPLITS, default="test", help="split to show (default: test)")
    info = add_command(
        actions,
        "info",
        "Print the data set's source, split sizes, image size, classes and fingerprint.",
        ["autosculpt data info", "autosculpt data info --data ./my_slices --size 128"],
        _info,
    )
    _add_data_options(info)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", metavar="PATH", help="ACDC folder or folder with images/ and masks/ (default: the generated set)"
    )
    parser.add_argument("--size", type=int, default=96, help="image side in pixels, a multiple of 16 (default: 96)")
    parser.add_argument("--seed", type=int, default=0, help="seed of generation and splits (default: 0)")
    parser.add_argument("--group-by", metavar="REGEX",
                        help="patient of an images/ file: the regex's first group in its path (default: its subfolder, "
                             "or its name up to the first _)")


def _preview(args: argparse.Namespace) -> int:
    data = load_data(args.data, image_size=args.size, seed=args.seed, group_by=args.group_by)
    out = save_preview(data, args.out, count=args.count, split=args.split)
    print(f"wrote {out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    summary = load_data(args.data, image_size=args.size, seed=args.seed, group_by=args.group_by).describe()
    table = Table(title="data", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("source", summary["source"])
    for name, split in summary["splits"].items():
        table.add_row(name, f"{split['slices']} slices from {split['groups']} patients")
    table.add_row("image size", " x ".join(map(str, summary["image_size"])))
    table.add_row("voxel size", f"{summary['spacing']} (rows x columns x between slices, on the fitted grid)")
    table.add_row("channels", str(summary["in_channels"]))
    table.add_row("classes", ", ".join(f"{i} {name}" for i, name in enumerate(summary["class_names"])))
    table.add_row("fingerprint", summary["fingerprint"])
    Console().print(table)
    return 0
