"""``autosculpt latency``: the CPU latency of a preset (optionally pruned) or an exported model."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import UserError
from ..latency import Target, measure, measure_onnx
from ._common import add_command, print_rows

EXAMPLES = [
    "autosculpt latency                        # unet, 96x96, ONNX Runtime, 1 thread",
    "autosculpt latency --model unet-paper --keep 0.25 --threads 2",
    "autosculpt latency --runtime torch --format json",
    "autosculpt latency --model exports/best   # a folder holding model.onnx",
    "AUTOSCULPT_AGENT_TOKEN=... autosculpt latency --target http://10.0.0.7:8765",
]


def register(subparsers) -> None:
    parser = add_command(subparsers, "latency", "Measure the CPU latency of a model.", EXAMPLES, run)
    parser.add_argument("--model", default="unet", metavar="PRESET|DIR",
                        help="unet (default), unet-paper, unet-small, unet-tiny, or a folder holding model.onnx")
    parser.add_argument("--keep", type=float, metavar="RATIO", help="prune every layer uniformly to this fraction of channels")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="threads (default 1: the steadiest figures)")
    parser.add_argument("--runtime", choices=("ort", "torch"), default="ort", help="ort = ONNX Runtime (default), torch = eager PyTorch")
    parser.add_argument("--target", metavar="URL", help="remote latency agent http://HOST:PORT (token in $AUTOSCULPT_AGENT_TOKEN)")
    parser.add_argument("--size", type=int, default=96, metavar="N", help="input size N x N, a multiple of 16 (default 96)")
    parser.add_argument("--classes", type=int, default=4, metavar="N", help="output classes of a preset (default 4)")
    parser.add_argument("--format", choices=("table", "json"), default="table")


def run(args) -> int:
    target = Target(url=args.target, threads=args.threads, runtime=args.runtime)
    folder = Path(args.model)
    stats = _measure_folder(folder, args, target) if folder.is_dir() else _measure_preset(args, target)
    if args.format == "json":
        print(json.dumps(stats.to_dict(), indent=2))
    else:
        rows = [{"field": key, "value": value} for key, value in {"model": _label(args), **stats.to_dict()}.items()]
        print_rows(rows, "table", title="latency")
    return 0


def _measure_folder(folder: Path, args, target: Target):
    """An exported model: its model.onnx at its own fixed input shape."""
    from ..onnx_io import onnx_input_shape

    path = folder / "model.onnx"
    if not path.is_file():
        raise UserError(f"{folder} holds no model.onnx: give a preset name or a folder written by `autosculpt export`")
    if args.keep is not None or args.runtime != "ort":
        raise UserError("an exported model is measured as it is, in ONNX Runtime: drop --keep and --runtime")
    onnx_bytes = path.read_bytes()
    try:
        shape = onnx_input_shape(onnx_bytes)
    except Exception as error:  # noqa: BLE001 - onnx raises several types for a bad file
        raise UserError(f"{path} is not a usable ONNX model ({error}): export it again") from None
    return measure_onnx(onnx_bytes, shape, target)


def _measure_preset(args, target: Target):
    """A preset U-Net with fresh weights (latency does not depend on them), pruned if asked."""
    import torch

    from ...space.unet import UNet, preset_config

    if args.size < 16 or args.size % 16:
        raise UserError(f"--size {args.size} is not a multiple of 16: give e.g. --size 96")
    if args.keep is not None and not 0 < args.keep <= 1:
        raise UserError(f"--keep {args.keep} is not a fraction: give a ratio in (0, 1], e.g. --keep 0.5")
    shape = (1, 1, args.size, args.size)
    model = UNet(preset_config(args.model, 1, args.classes)).eval()
    if args.keep is not None:
        from ...space import Recipe, apply_recipe

        model = apply_recipe(model, Recipe.uniform(args.keep), torch.randn(*shape))
    return measure(model, shape, target)


def _label(args) -> str:
    return args.model if args.keep is None else f"{args.model} keep {args.keep:g}"
