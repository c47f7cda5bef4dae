"""``autosculpt latency``: the CPU latency of a preset (optionally pruned) or an exported model.

Locally in ONNX Runtime the model is timed in the same rounds as the nearest of this
machine's anchor networks (see :mod:`~autosculpt.search.study.anchors`), so back-to-back runs
agree although the machine's speed drifts, and agree with the figures of the studies on
this machine; ``--alone`` times it by itself. The figure pools MEASUREMENTS measurements
(the median of their figures).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from ...errors import UserError
from ..latency import Reference, Target, measure, measure_onnx, pooled
from ..onnx_io import to_onnx
from ..study.anchors import can_anchor, nearest_anchor
from ..training.train import resolve_device
from ._common import add_command, print_rows

MEASUREMENTS = 3  # pooled (their medians): one window in a slow state of the machine does not move the figure

EXAMPLES = [
    "autosculpt latency                        # unet, 96x96, ONNX Runtime, 1 thread",
    "autosculpt latency --model unet-paper --keep 0.25 --threads 2",
    "autosculpt latency --runtime torch --format json",
    "autosculpt latency --model exports/best   # an exported folder: the file its model card deploys",
    "autosculpt latency --model unet --channels 3 --size 128",
    "autosculpt latency --alone                # timed by itself, as the machine runs it this second",
    "autosculpt latency --recalibrate          # measure this machine's anchor networks again",
    "autosculpt latency --runtime torch --device cuda   # the dense model on this machine's GPU, for comparison",
    "AUTOSCULPT_AGENT_TOKEN=... autosculpt latency --target http://10.0.0.7:8765",
]


def register(subparsers) -> None:
    parser = add_command(subparsers, "latency", "Measure the CPU latency of a model.", EXAMPLES, run)
    parser.add_argument("--model", default="unet", metavar="PRESET|DIR",
                        help="unet (default), unet-paper, unet-small, unet-tiny, or a folder holding model.onnx")
    parser.add_argument("--keep", type=float, metavar="RATIO", help="prune every layer uniformly to this fraction of channels, "
                        "rounded to a multiple of 4 as the search rounds")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="threads (default 1: the steadiest figures)")
    parser.add_argument("--runtime", choices=("ort", "torch"), default="ort", help="ort = ONNX Runtime (default), torch = eager PyTorch")
    parser.add_argument("--target", metavar="URL", help="remote latency agent http://HOST:PORT (token in $AUTOSCULPT_AGENT_TOKEN)")
    parser.add_argument("--size", type=int, default=96, metavar="N", help="input size N x N, a multiple of 16 (default 96)")
    parser.add_argument("--classes", type=int, default=4, metavar="N", help="output classes of a preset (default 4)")
    parser.add_argument("--channels", type=int, default=1, metavar="N",
                        help="input channels of a preset (default 1; 3 for RGB, or one per MRI sequence)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: time eager PyTorch (--runtime torch) on this machine's GPU, wall clock (default cpu)")
    parser.add_argument("--alone", action="store_true",
                        help="time the model by itself instead of against this machine's nearest anchor network")
    parser.add_argument("--recalibrate", action="store_true",
                        help="measure the anchors' own latency again (cached per CPU, threads, runtime and size)")
    parser.add_argument("--format", choices=("table", "json"), default="table")


def run(args) -> int:
    target = Target(url=args.target, threads=args.threads, runtime=args.runtime, device=args.device)
    if args.device == "cuda":
        resolve_device("cuda")  # one line, not a worker's traceback, on a machine without a GPU
    folder = Path(args.model)
    model, shape = _folder_model(folder, args) if folder.is_dir() else _preset(args)
    if target.runtime == "ort" and not isinstance(model, bytes):
        model = to_onnx(model, shape)  # once, not once per measurement
    reference, calibration = _reference(model, shape, target, args)
    timer = measure_onnx if isinstance(model, bytes) else measure
    stats = pooled([timer(model, shape, target, reference) for _ in range(MEASUREMENTS)])
    if args.format == "json":
        print(json.dumps({**stats.to_dict(), "reference": calibration}, indent=2))
    else:
        rows = [{"field": key, "value": value} for key, value in {"model": _label(args), **stats.to_dict()}.items()]
        print_rows(rows, "table", title="latency")
        print(_caption(calibration))
    return 0


def _reference(model, shape: tuple[int, ...], target: Target, args) -> tuple[Reference | None, dict | None]:
    """This machine's anchor nearest ``model`` (its ONNX bytes; see :mod:`..anchors`), or
    (None, None) when the model is timed alone: ``--alone``, a remote agent (it times models
    alone), eager PyTorch, or a shape the anchor U-Net cannot take."""
    if args.alone or not can_anchor(shape, target):
        return None, None
    return nearest_anchor(model, shape, target, recalibrate=args.recalibrate, classes=args.classes)


def _caption(calibration: dict | None) -> str:
    if calibration is None:
        return "median_ms: timed alone (raw_median_ms is the median of its rounds)"
    when = datetime.fromtimestamp(calibration["calibrated_at"]).strftime("%Y-%m-%d %H:%M")
    return (f"median_ms: relative to this machine's anchor ({calibration['network']}, {calibration['median_ms']:.3f} ms "
            f"as calibrated {when}), timed in the same rounds; raw_median_ms: as timed now. "
            "--alone times the model by itself; --recalibrate measures the anchors again.")


def _folder_model(folder: Path, args) -> tuple[bytes, tuple[int, ...]]:
    """An exported model: the file its model card deploys (model.onnx without a card) at its own fixed input shape."""
    from ..deploy.card import deployed_file
    from ..onnx_io import onnx_input_shape

    path = folder / deployed_file(folder)
    if not path.is_file():
        raise UserError(f"{folder} holds no {path.name}: give a preset name or a folder written by `autosculpt export`")
    if args.keep is not None or args.runtime != "ort":
        raise UserError("an exported model is measured as it is, in ONNX Runtime: drop --keep and --runtime")
    onnx_bytes = path.read_bytes()
    try:
        return onnx_bytes, onnx_input_shape(onnx_bytes)
    except Exception as error:  # noqa: BLE001 - onnx raises several types for a bad file
        raise UserError(f"{path} is not a usable ONNX model ({error}): export it again") from None


def _preset(args) -> tuple[object, tuple[int, ...]]:
    """A preset U-Net with fresh weights (latency does not depend on them), pruned if asked, and its input shape."""
    import torch

    from ...space import Recipe, SearchSpace, UNet, apply_recipe, preset_config

    if args.size < 16 or args.size % 16:
        raise UserError(f"--size {args.size} is not a multiple of 16: give e.g. --size 96")
    if args.keep is not None and not 0 < args.keep <= 1:
        raise UserError(f"--keep {args.keep} is not a fraction: give a ratio in (0, 1], e.g. --keep 0.5")
    if args.channels < 1:
        raise UserError(f"--channels {args.channels} must be at least 1: e.g. --channels 3 for RGB")
    shape = (1, args.channels, args.size, args.size)
    model = UNet(preset_config(args.model, args.channels, args.classes)).eval()
    if args.keep is not None:  # rounded as the search rounds: odd channel counts run slower and less steadily
        space = SearchSpace()
        recipe = Recipe.uniform(args.keep, round_to=space.round_to, min_channels=space.min_channels)
        model = apply_recipe(model, recipe, torch.randn(*shape))
    return model, shape


def _label(args) -> str:
    return args.model if args.keep is None else f"{args.model} keep {args.keep:g}"
