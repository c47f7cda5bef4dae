"""``autosculpt search``: create a study and run it, then export the best model and the report."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from rich.console import Console

from ...errors import UserError
from ...space import SearchSpace, is_nnunet_folder, nnunet_fold
from ...units import ms
from ..data import suggested_image_size
from ..deploy.verdict import EXIT_VERDICT_FAILED
from ..latency import agent_info
from ..study.best import UNSETTLED_FINALISTS, UNSETTLED_LOSS
from ..study.settings import AUTO_SPACE, PRESETS, WIDTH_FLOOR_ATTR, with_preset
from ..study.storage import masked, open_storage, storage_url
from ..study.study import create_study, prepare
from ._common import add_command, add_search_options, add_storage_option
from ._session import finish_study, run_workers

EXAMPLES = [
    "autosculpt search --speedup 15                # 15x faster than the dense model on this CPU",
    "autosculpt search --budget-ms 20",
    "autosculpt search --budget-ms 5 --model unet-paper --trials 100 --study paper-5ms",
    "autosculpt search --preset smoke --budget-ms 2",
    "autosculpt search --speedup 30 --precision fp32,int8   # each trial fp32 or INT8, measured as deployed",
    "autosculpt search --budget-ms 20 --storage postgresql://user@db:5432/autosculpt --workers 4",
    "autosculpt search --budget-ms 30 --target http://hospital-pc:8765 --data /data/ACDC/training",
    "autosculpt search --speedup 10 --model nnUNet_results/Dataset027_ACDC/nnUNetTrainer__nnUNetPlans__2d --fold 0",
]


def register(subparsers) -> None:
    parser = add_command(subparsers, "search", "Search per-layer pruning ratios and width for the best model within a latency budget.", EXAMPLES, run)
    add_search_options(parser)
    add_storage_option(parser)
    parser.add_argument("--study", metavar="NAME", help="study name (default: made from model, budget and time)")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS), help="bundle of defaults; smoke = tiny and fast")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="local worker processes on this storage (default 1)")
    parser.add_argument("--out", metavar="DIR", help="where to export the best model and report (default exports/NAME)")
    parser.epilog += VERDICT_HELP


VERDICT_HELP = f"""

exit status:
  0  the exported model meets the budget (median latency, re-measured) and --max-dice-loss (test Dice)
  1  no trial within the budget: nothing exported (the last line says how fast the fastest was)
  2  bad input: a one-line error naming the problem and the fix
  {EXIT_VERDICT_FAILED}  a model was exported but misses the budget or loses more Dice than allowed:
     the last line says so and gives the trade-off the study found
  130  interrupted (Ctrl-C); resume with autosculpt resume NAME"""


def run(args) -> int:
    if (args.budget_ms is None) == (args.speedup is None):
        raise UserError("give one budget: --speedup X (X times faster than the dense model) or --budget-ms MS")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers} must be at least 1")
    console = Console(stderr=True, highlight=False)
    url = storage_url(args.storage)
    open_storage(url)  # fail on a bad URL or a target that is down before training anything
    if args.target:
        agent_info(args.target)
    given = settings_given(args)
    given["model"], given["data"] = resolved_model(args.model, args.fold, args.weights, args.data)
    sized_by_data = None
    if given["image_size"] is not None and is_nnunet_folder(given["model"] or ""):
        raise UserError("an nnU-Net model takes its plan's patch size as input: drop --size")
    if given["data"] and given["image_size"] is None and not is_nnunet_folder(given["model"] or ""):
        given["image_size"], sized_by_data = suggested_image_size(Path(given["data"]))
    settings, defaulted = with_preset(args.preset, given)
    if sized_by_data is not None:
        defaulted.append("image_size")
    if is_nnunet_folder(settings.model):  # its input is the plan's patch size
        defaulted = [name for name in defaulted if name not in ("image_size", "weights")]
    if defaulted:
        console.print("defaults used: " + ", ".join(describe(settings, name, sized_by_data) for name in defaulted),
                      soft_wrap=True)
    name = args.study or default_name(settings)
    context = prepare(settings)
    if context.survey.kept_whole:
        console.print(context.survey.describe(), soft_wrap=True)
    console.print("measuring the dense model and the latency reference on the target ...")
    space = settings.space
    study, context = create_study(name, url, settings, context)
    settings = context.settings
    if settings.space != space:
        console.print(f"width alone cannot reach {settings.budget_ms:.3g} ms here (its narrowest network measured "
                      f"{study.user_attrs[WIDTH_FLOOR_ATTR]:.3g} ms): searching depth too (--space {settings.space})",
                      soft_wrap=True)
    console.print(f"study [bold]{name}[/] on {masked(url)}: {budget_text(settings)}; "
                  f"resume with: autosculpt resume {name}{storage_flag(args.storage)}", soft_wrap=True)
    run_workers(name, url, context, args.workers, storage_flag(args.storage))
    return finish_study(name, url, args.out)


def resolved_model(model: str | None, fold: int | None, weights: str | None, data: str | None) -> tuple[str | None, str | None]:
    """(model, data) as stored: an nnU-Net folder becomes its fold's folder, and its data
    defaults to ``$nnUNet_raw/<its data set>`` where nnUNet_raw is set."""
    if model is None or not is_nnunet_folder(model):
        if fold is not None:
            raise UserError(f"--fold {fold} needs an nnU-Net trained-model folder as --model: drop --fold")
        return model, data
    if weights:
        raise UserError("an nnU-Net folder brings its own weights (fold_N/checkpoint_final.pth): drop --weights")
    chosen = nnunet_fold(model, fold)
    raw = os.environ.get("nnUNet_raw")
    if data is None and raw:
        data = str(Path(raw) / chosen.dataset_name)
    return chosen.spec, data


def settings_given(args) -> dict:
    """The settings the user gave on the command line (None = not given)."""
    space_spec = SearchSpace.load(args.space).to_dict() if args.space else None
    target = {name: value for name, value in (("url", args.target), ("threads", args.threads),
                                              ("runtime", args.runtime)) if value}
    return {
        "budget_ms": args.budget_ms, "trials": args.trials, "timeout_s": args.timeout, "model": args.model,
        "weights": args.weights, "data": args.data, "image_size": args.image_size, "space": args.space,
        "space_spec": space_spec, "target": target or None, "epochs": args.epochs,
        "seed": args.seed, "distill": args.distill, "speedup": args.speedup, "max_dice_loss": args.max_dice_loss,
        "polish_epochs": args.polish_epochs, "finalists": args.finalists, "group_by": args.group_by, "device": args.device,
        "crop": args.crop, "epoch_slices": args.epoch_slices, "precisions": [p.strip() for p in args.precision.split(",")] if args.precision else None,
    }


def describe(settings, name: str, data_median: int | None = None) -> str:
    """``name=value`` of one setting, in the words a user would type; ``data_median`` is the
    median slice side an image size was chosen from."""
    value = getattr(settings, name)
    if name == "image_size" and data_median is not None:
        return f"image_size={value} (the data's median slice side {data_median} px, to a multiple of 16, at most 256)"
    if name == "target":
        where = value["url"] or "this machine"
        return f"target={where} ({value['threads']} thread, {value['runtime']})"
    if name == "precisions":
        return f"precision={','.join(value)}"
    if name == "crop" and value is None:
        return "crop=auto (whole slices up to 160 px, patches of half the side above)"
    if name == "finalists" and value is None:
        return f"finalists=auto (1; {UNSETTLED_FINALISTS} when the best trial scores over {UNSETTLED_LOSS:.0%} below the baseline)"
    if name == "epoch_slices" and value is None:
        return "epoch_slices=all"
    if name == "space" and value == AUTO_SPACE:
        return "space=auto (per-layer; per-layer-depth where width alone cannot reach the budget)"
    if name == "data" and value is None:
        return "data=generated cardiac MRI"
    return f"{name}={'none' if value is None else value}"


def default_name(settings) -> str:
    """A readable, unique-enough study name, e.g. ``unet-20ms-20261125-011200`` or ``unet-15x-...``."""
    model_part = settings.model.split(":")[-1].lower()
    budget = f"{settings.speedup:g}x" if settings.speedup else f"{settings.budget_ms:g}ms"
    return f"{model_part}-{budget}-{datetime.now():%Y%m%d-%H%M%S}"


def budget_text(settings) -> str:
    """The budget in both the user's words and milliseconds, e.g. ``budget 2.21 ms (33.1 ms / 15)``."""
    if settings.speedup:
        return f"budget {ms(settings.budget_ms)} (the dense model's {ms(settings.budget_ms * settings.speedup)} / {settings.speedup:g})"
    return f"budget {settings.budget_ms:g} ms"


def storage_flag(cli_value: str | None) -> str:
    """`` --storage URL`` (password masked) for printed commands, when the user gave one."""
    return f" --storage {masked(cli_value)}" if cli_value else ""
