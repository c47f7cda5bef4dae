"""``autosculpt env``: what a bug report needs (versions, CPU, storage with password masked)."""

from __future__ import annotations

from ..study.storage import masked, storage_url
from ..study.study import environment
from ._common import add_command, add_storage_option, print_rows

EXAMPLES = ["autosculpt env", "autosculpt env --format json"]


def register(subparsers) -> None:
    parser = add_command(subparsers, "env", "Print versions, CPU and storage for a bug report.", EXAMPLES, run)
    add_storage_option(parser)
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")


def run(args) -> int:
    facts = {**environment(), "storage": masked(storage_url(args.storage))}
    print_rows([{"key": k, "value": v} for k, v in facts.items()], args.format, title="autosculpt environment")
    return 0
