"""``autosculpt worker``: join a stored study and run trials until it has enough."""

from __future__ import annotations

import random
import sys

from ...errors import UserError
from ..study.runner import run_worker, wait_for_storage
from ..study.storage import STORAGE_PATIENCE_SECONDS, is_storage_failure, storage_url
from ..study.study import open_existing, prepare_study
from ._common import add_command, add_storage_option

EXAMPLES = [
    "autosculpt worker unet-20ms-20261125-011200 --storage postgresql://autosculpt@db:5432/autosculpt",
    "AUTOSCULPT_STORAGE=postgresql://autosculpt@db/autosculpt autosculpt worker paper-5ms --index 3",
]


def register(subparsers) -> None:
    parser = add_command(subparsers, "worker", "Join a stored study and run trials until its trial count or time limit is reached.", EXAMPLES, run)
    parser.add_argument("name", metavar="NAME", help="study name (see: autosculpt studies)")
    add_storage_option(parser)
    parser.add_argument("--index", type=int, metavar="I", help="worker number; seeds the sampler apart from other workers (default: random, so scaled replicas differ)")
    parser.add_argument("--quiet", action="store_true", help="one line per finished trial instead of the live view")


def run(args) -> int:
    url = storage_url(args.storage)
    try:
        study, settings = open_existing(args.name, url)
    except UserError as error:  # a worker may start before its database server is up
        if not is_storage_failure(error):
            raise
        print(f"{error}; retrying for up to {STORAGE_PATIENCE_SECONDS:g} s", file=sys.stderr)
        study, settings = wait_for_storage(lambda: open_existing(args.name, url), url, args.name)
    index = random.SystemRandom().randrange(2**31) if args.index is None else args.index
    finished = run_worker(study, prepare_study(study, url, settings), url, worker_index=index, quiet=args.quiet)
    print(f"worker {index}: {finished} trials finished")
    return 0
