"""``autosculpt studies``: list the studies a storage holds."""

from __future__ import annotations

import optuna

from ..study.storage import open_storage, storage_url
from ._common import add_command, add_storage_option, print_rows

EXAMPLES = ["autosculpt studies", "autosculpt studies --storage postgresql://autosculpt@db/autosculpt --format json"]


def register(subparsers) -> None:
    parser = add_command(subparsers, "studies", "List the studies in a storage with their budget and trial counts.", EXAMPLES, run)
    add_storage_option(parser)
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")


def run(args) -> int:
    storage = open_storage(storage_url(args.storage))
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        settings = summary.user_attrs.get("settings", {})
        rows.append({"study": summary.study_name, "model": settings.get("model"), "budget_ms": settings.get("budget_ms"),
                     "trials": summary.n_trials, "started": summary.datetime_start.isoformat(timespec="seconds") if summary.datetime_start else None})
    print_rows(rows, args.format, title="studies")
    return 0
