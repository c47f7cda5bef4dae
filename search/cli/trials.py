"""``autosculpt trials``: list a study's trials with their measured figures."""

from __future__ import annotations

from ..study.storage import storage_url
from ..study.study import open_existing
from ._common import add_command, add_storage_option, print_rows

EXAMPLES = ["autosculpt trials unet-20ms-20261125-011200", "autosculpt trials paper-5ms --format csv > trials.csv"]

COLUMNS = ("dice", "latency_ms", "latency_p90_ms", "params", "param_ratio", "mac_ratio", "feasible", "finetuned", "repeat_of")


def register(subparsers) -> None:
    parser = add_command(subparsers, "trials", "List a study's trials: state, Dice, latency, size and compression.", EXAMPLES, run)
    parser.add_argument("name", metavar="NAME", help="study name (see: autosculpt studies)")
    add_storage_option(parser)
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")


def run(args) -> int:
    study, _ = open_existing(args.name, storage_url(args.storage))
    rows = [{"trial": t.number, "state": t.state.name, **{c: t.user_attrs.get(c) for c in COLUMNS},
             "fail_reason": t.user_attrs.get("fail_reason")} for t in study.get_trials(deepcopy=False)]
    print_rows(rows, args.format, title=f"trials of {args.name}")
    return 0
