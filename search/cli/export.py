"""``autosculpt export``: write the best feasible (or a chosen) trial as a deployable model."""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from ..deploy.export import export_trial, no_feasible_message
from ..deploy.verdict import EXIT_VERDICT_FAILED
from ..quantize import INT8_FILE
from ..study.best import answer
from ..study.settings import PRECISIONS
from ..study.storage import storage_url
from ..study.study import open_existing
from ._common import add_command, add_storage_option

EXAMPLES = [
    "autosculpt export unet-20ms-20261125-011200 --out model/",
    "autosculpt export unet-20ms-20261125-011200 --budget-ms 10 --out model-10ms/   # best within another budget",
    "autosculpt export unet-20ms-20261125-011200 --trial 17 --out trial17/",
    f"autosculpt export unet-20ms-20261125-011200 --precision int8 --out model/   # also {INT8_FILE}, measured against fp32",
    "autosculpt export heart-nnunet --format nnunet --out pruned_nnunet/   # a trained-model folder nnU-Net loads",
]


def register(subparsers) -> None:
    parser = add_command(subparsers, "export", "Export a trial as model.onnx, model.pt2 and model.json (checked against PyTorch, latency re-measured, judged).", EXAMPLES, run)
    parser.add_argument("name", metavar="NAME", help="study name (see: autosculpt studies)")
    add_storage_option(parser)
    parser.add_argument("--trial", type=int, metavar="N", help="trial number (default: best feasible)")
    parser.add_argument("--budget-ms", type=float, metavar="MS", help="pick the best trial within this budget instead of the study's")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help=f"int8: also write {INT8_FILE} (static QDQ quantization calibrated on training slices) with "
                             "its own test Dice and latency in model.json; model.onnx stays fp32 (default fp32)")
    parser.add_argument("--format", choices=("onnx", "nnunet"), default="onnx",
                        help="nnunet: also make --out an nnU-Net trained-model folder (plans.json, dataset.json, "
                             "fold_N/checkpoint_final.pth) for a study of an nnU-Net searched with --space nnunet-stages "
                             "(default onnx)")
    parser.epilog += (f"\n\nexit status: 0 when the model meets the budget and the study's --max-dice-loss; "
                      f"{EXIT_VERDICT_FAILED} when it was\nwritten but misses either (the last line says which); 2 on bad input.")


def run(args) -> int:
    url = storage_url(args.storage)
    study, settings = open_existing(args.name, url)
    if args.trial is not None:
        numbers = {t.number: t for t in study.get_trials(deepcopy=False)}
        if args.trial not in numbers:
            raise UserError(f"study {args.name!r} has no trial {args.trial} (trials 0-{len(numbers) - 1}): see autosculpt trials {args.name}")
        trial = numbers[args.trial]
    else:
        trial = answer(study, args.budget_ms)
        if trial is None:
            raise UserError(no_feasible_message(study, args.budget_ms or settings.budget_ms))
    exported = export_trial(study, trial, Path(args.out), url, budget_ms=args.budget_ms, precision=args.precision,
                            nnunet_folder=args.format == "nnunet")
    card = exported.card
    print(f"exported trial {trial.number} to {args.out}: test Dice {card['dice']:.3f}, "
          f"{card['latency']['median_ms']:.2f} ms median ({card['latency']['runtime']}, {card['latency']['threads']} thread), "
          f"{card['param_ratio']:.0f}x fewer parameters; ONNX vs PyTorch max difference {card['onnx_max_abs_diff']:.2e}")
    if "int8" in card:
        print(f"{card['int8']['summary']}; deploy {card['deploy']}")
    print(exported.verdict.line())
    return 0 if exported.verdict.ok else EXIT_VERDICT_FAILED
