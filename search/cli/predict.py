"""``autosculpt predict``: segment images with an exported model, no code needed."""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from ..predict import predict_files
from ._common import add_command

EXAMPLES = [
    "autosculpt predict --model exports/unet-20ms-20261125-011200 slice1.png slice2.png",
    "autosculpt predict --model model/ scans/*.png --out masks/",
]


def register(subparsers) -> None:
    parser = add_command(subparsers, "predict", "Segment PNG/TIFF/JPEG slices with an exported model (mask and overlay PNGs).", EXAMPLES, run)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="2D image files")
    parser.add_argument("--model", required=True, metavar="DIR", help="folder written by autosculpt export")
    parser.add_argument("--out", default="predictions", metavar="DIR", help="output folder (default predictions/)")


def run(args) -> int:
    missing = [name for name in args.images if not Path(name).is_file()]
    if missing:
        raise UserError(f"image {missing[0]} not found: give existing PNG, TIFF or JPEG files")
    written = predict_files(Path(args.model), [Path(name) for name in args.images], Path(args.out))
    print(f"wrote {len(written)} masks and overlays to {args.out}")
    return 0
