"""``autosculpt report``: write the self-contained HTML report of a study (running or finished)."""

from __future__ import annotations

from ...reports import write_report
from ..study.storage import load_study, masked, open_storage, storage_url
from ._common import add_command, add_storage_option

EXAMPLES = [
    "autosculpt report unet-20ms-20261125-011200 --out report.html",
    "autosculpt report unet-20ms-20261125-011200 --storage postgresql://autosculpt@db/autosculpt --out report.html",
]


def register(subparsers) -> None:
    parser = add_command(subparsers, "report", "Write one HTML file with a study's results; it opens offline.", EXAMPLES, run)
    parser.add_argument("name", metavar="NAME", help="study name (see: autosculpt studies)")
    add_storage_option(parser)
    parser.add_argument("--out", required=True, metavar="FILE.html", help="where to write the report")


def run(args) -> int:
    url = storage_url(args.storage)
    study = load_study(args.name, open_storage(url))
    path = write_report(study, args.out, storage_url=url)
    print(f"report of study {args.name!r} ({masked(url)}): {path}")
    return 0
