"""``autosculpt worker``: join a stored study and run trials until it has enough."""

from __future__ import annotations

import random

from ..storage import storage_url
from ..study import open_existing, prepare
from ..runner import run_worker
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
    study, settings = open_existing(args.name, url)
    index = random.SystemRandom().randrange(2**31) if args.index is None else args.index
    finished = run_worker(study, prepare(settings), url, worker_index=index, quiet=args.quiet)
    print(f"worker {index}: {finished} trials finished")
    return 0
