"""``autosculpt predict``: segment images and NIfTI volumes with an exported model, no code needed."""

from __future__ import annotations

from pathlib import Path

from ..deploy.card import deployed_file
from ..deploy.predict import predict_files
from ._common import add_command

EXAMPLES = [
    "autosculpt predict --model exports/unet-20ms-20261125-011200 scan.nii.gz --out labels/",
    "autosculpt predict --model exports/best scans/ --out labels/   # every .nii.gz, PNG, TIFF, JPEG in scans/",
    "autosculpt predict --model model/ slice1.png slice2.png --out masks/",
]


def register(subparsers) -> None:
    parser = add_command(subparsers, "predict", "Segment NIfTI volumes (label volumes on the same grid and header) "
                         "or PNG/TIFF/JPEG slices (mask and overlay PNGs) with an exported model.", EXAMPLES, run)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI volumes (.nii, .nii.gz; 3D or 4D cine; "
                        "a several-channel model's as CASE_0000.nii.gz, CASE_0001.nii.gz, ...), 2D images, "
                        "or folders of them")
    parser.add_argument("--model", required=True, metavar="DIR", help="folder written by autosculpt export")
    parser.add_argument("--out", default="predictions", metavar="DIR", help="output folder (default predictions/)")


def run(args) -> int:
    written = predict_files(Path(args.model), [Path(name) for name in args.inputs], Path(args.out))
    print(f"wrote {len(written)} label files to {args.out} (model {deployed_file(Path(args.model))})")
    return 0
