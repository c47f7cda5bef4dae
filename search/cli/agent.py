"""``autosculpt agent``: serve latency measurements of this CPU to searches elsewhere."""

from __future__ import annotations

import os
import sys

from ...errors import UserError
from ..latency import TOKEN_ENV
from ..servers.agent import MAX_ELEMENTS, MAX_MEMORY_MB, serve
from ._common import add_command

EXAMPLES = [
    "AUTOSCULPT_AGENT_TOKEN=$(openssl rand -hex 16) autosculpt agent --host 0.0.0.0 --port 8765",
    "autosculpt agent --port 0 --max-mb 50              # any free port on 127.0.0.1",
    "autosculpt agent --max-elements 67108864 --max-memory-mb 16000  # 8192 x 8192 inputs, 16 GB to measure",
    "then, on the search machine, with the same token:  autosculpt search --target http://HOST:8765",
]


def register(subparsers) -> None:
    parser = add_command(subparsers, "agent", "Measure models sent over HTTP on this machine's CPU.", EXAMPLES, run)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--token", help=f"shared secret clients must send (default ${TOKEN_ENV}, which keeps it out of ps)")
    parser.add_argument("--max-mb", type=float, default=200.0, metavar="MB", help="largest model accepted (default 200)")
    parser.add_argument("--max-elements", type=int, default=MAX_ELEMENTS, metavar="N",
                        help=f"largest input accepted, in elements of its shape (default {MAX_ELEMENTS}: 4096 x 4096)")
    parser.add_argument("--max-memory-mb", type=int, default=MAX_MEMORY_MB, metavar="MB",
                        help=f"memory cap of the process that measures a model (default {MAX_MEMORY_MB}); "
                             "a model that needs more is refused with 400")


def run(args) -> int:
    for option, value in (("--max-mb", args.max_mb), ("--max-elements", args.max_elements),
                          ("--max-memory-mb", args.max_memory_mb)):
        if value <= 0:
            raise UserError(f"{option} {value} must be positive")
    token = args.token or os.environ.get(TOKEN_ENV)
    try:
        serve(args.host, args.port, token, args.max_mb, announce=lambda line: print(line, flush=True),
              max_elements=args.max_elements, memory_mb=args.max_memory_mb)
    except OSError as error:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({error.strerror}): choose another --port") from None
    except KeyboardInterrupt:
        print("agent stopped", file=sys.stderr)
    return 0
