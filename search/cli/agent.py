"""``autosculpt agent``: serve latency measurements of this CPU to searches elsewhere."""

from __future__ import annotations

import os
import sys

from ..agent import serve
from ...errors import UserError
from ..latency import TOKEN_ENV
from ._common import add_command

EXAMPLES = [
    "AUTOSCULPT_AGENT_TOKEN=$(openssl rand -hex 16) autosculpt agent --host 0.0.0.0 --port 8765",
    "autosculpt agent --port 0 --max-mb 50              # any free port on 127.0.0.1",
    "then, on the search machine, with the same token:  autosculpt search --target http://HOST:8765",
]


def register(subparsers) -> None:
    parser = add_command(subparsers, "agent", "Measure models sent over HTTP on this machine's CPU.", EXAMPLES, run)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--token", help=f"shared secret clients must send (default ${TOKEN_ENV}, which keeps it out of ps)")
    parser.add_argument("--max-mb", type=float, default=200.0, metavar="MB", help="largest model accepted (default 200)")


def run(args) -> int:
    if args.max_mb <= 0:
        raise UserError(f"--max-mb {args.max_mb} must be positive")
    token = args.token or os.environ.get(TOKEN_ENV)
    try:
        serve(args.host, args.port, token, args.max_mb, announce=lambda line: print(line, flush=True))
    except OSError as error:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({error.strerror}): choose another --port") from None
    except KeyboardInterrupt:
        print("agent stopped", file=sys.stderr)
    return 0
