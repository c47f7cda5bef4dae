"""``autosculpt search``: create a study and run it, then export the best model and the report."""

from __future__ import annotations

from datetime import datetime

from rich.console import Console

from ...space import SearchSpace
from ..errors import UserError
from ..latency import Target, agent_info
from ..settings import PRESETS, with_preset
from ..storage import masked, open_storage, storage_url
from ..study import create_study, prepare
from ._common import add_command, add_search_options, add_storage_option
from ._session import finish_study, run_workers

EXAMPLES = [
    "autosculpt search --budget-ms 20",
    "autosculpt search --budget-ms 5 --model unet-paper --trials 100 --study paper-5ms",
    "autosculpt search --preset smoke --budget-ms 2",
    "autosculpt search --budget-ms 20 --storage postgresql://user@db:5432/autosculpt --workers 4",
    "autosculpt search --budget-ms 30 --target http://hospital-pc:8765 --data /data/ACDC/training",
]


def register(subparsers) -> None:
    parser = add_command(subparsers, "search", "Search per-layer pruning ratios and width for the best model within a latency budget.", EXAMPLES, run)
    add_search_options(parser)
    add_storage_option(parser)
    parser.add_argument("--study", metavar="NAME", help="study name (default: made from model, budget and time)")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS), help="bundle of defaults; smoke = tiny and fast")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="local worker processes on this storage (default 1)")
    parser.add_argument("--out", metavar="DIR", help="where to export the best model and report (default exports/NAME)")


def run(args) -> int:
    if args.budget_ms is None:
        raise UserError("--budget-ms is required: the latency budget on the target CPU, e.g. --budget-ms 20")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers} must be at least 1")
    console = Console(stderr=True, highlight=False)
    url = storage_url(args.storage)
    open_storage(url)  # fail on a bad URL or a target that is down before training anything
    if args.target:
        agent_info(args.target)
    settings, defaulted = with_preset(args.preset, settings_given(args))
    if defaulted:
        console.print("defaults used: " + ", ".join(describe(settings, name) for name in defaulted), soft_wrap=True)
    name = args.study or default_name(settings.model, settings.budget_ms)
    context = prepare(settings)
    create_study(name, url, settings, context)
    console.print(f"study [bold]{name}[/] on {masked(url)}; resume with: autosculpt resume {name}{storage_flag(args.storage)}")
    run_workers(name, url, context, args.workers, storage_flag(args.storage))
    return finish_study(name, url, args.out)


def settings_given(args) -> dict:
    """The settings the user gave on the command line (None = not given)."""
    space_spec = SearchSpace.load(args.space).to_dict() if args.space else None
    given_target = args.target or args.threads or args.runtime
    target = Target(url=args.target, threads=args.threads or 1, runtime=args.runtime or "ort") if given_target else None
    return {
        "budget_ms": args.budget_ms, "trials": args.trials, "timeout_s": args.timeout, "model": args.model,
        "weights": args.weights, "data": args.data, "image_size": args.image_size, "space": args.space,
        "space_spec": space_spec, "target": target.to_dict() if target else None, "epochs": args.epochs,
        "seed": args.seed, "distill": args.distill,
    }


def describe(settings, name: str) -> str:
    """``name=value`` of one setting, in the words a user would type."""
    value = getattr(settings, name)
    if name == "target":
        where = value["url"] or "this machine"
        return f"target={where} ({value['threads']} thread, {value['runtime']})"
    if name == "data" and value is None:
        return "data=generated cardiac MRI"
    return f"{name}={'none' if value is None else value}"


def default_name(model: str, budget_ms: float) -> str:
    """A readable, unique-enough study name, e.g. ``unet-20ms-20261125-0112``."""
    model_part = model.split(":")[-1].lower()
    return f"{model_part}-{budget_ms:g}ms-{datetime.now():%Y%m%d-%H%M%S}"


def storage_flag(cli_value: str | None) -> str:
    """`` --storage URL`` (password masked) for printed commands, when the user gave one."""
    return f" --storage {masked(cli_value)}" if cli_value else ""
