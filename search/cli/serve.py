"""``autosculpt serve``: serve a folder of reports read-only over HTTP."""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from ..servers.serve import ReportServer
from ._common import add_command

EXAMPLES = [
    "autosculpt serve exports                      # then open http://127.0.0.1:8000/",
    "autosculpt serve /data/exports --host 0.0.0.0 --port 8000   # in a container",
]


def register(subparsers) -> None:
    parser = add_command(subparsers, "serve", "Serve a folder of reports read-only over HTTP (GET and HEAD, nothing outside the folder).", EXAMPLES, run)
    parser.add_argument("folder", metavar="DIR", help="folder to serve, e.g. exports (each study's report.html is in exports/NAME)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 = every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0 = any free port)")


def run(args) -> int:
    """Serve until interrupted. The first line on stdout gives the address actually bound."""
    folder = Path(args.folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: pass the folder holding the reports, e.g. autosculpt serve exports")
    try:
        server = ReportServer(folder, (args.host, args.port))
    except OSError as error:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({error.strerror}): choose another --port or --host") from None
    host, port = server.server_address[:2]
    print(f"serving {folder} read-only at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    with server:
        server.serve_forever()
    return 0
