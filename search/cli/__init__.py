"""The ``autosculpt`` command line: one module per command, registered in ``COMMANDS``.

Each command module defines ``register(subparsers)``, which adds its parser (with a
description holding examples) and sets ``func`` to a ``run(args) -> int`` function.
A :class:`~autosculpt.errors.UserError` raised anywhere becomes one line on
stderr and exit status 2; Ctrl-C becomes exit status 130.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import warnings

import optuna

from ...errors import UserError

# Command name -> module under autosculpt.search.cli. The one place commands are registered.
COMMANDS: dict[str, str] = {
    "data": "data",
    "baseline": "baseline",
    "latency": "latency",
    "agent": "agent",
    "search": "search",
    "resume": "resume",
    "worker": "worker",
    "studies": "studies",
    "trials": "trials",
    "export": "export",
    "predict": "predict",
    "report": "report",
    "serve": "serve",
    "env": "env",
}


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line naming the fix, not a usage dump."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``command`` alone: a run imports the module of
    its own command only (a second or two less for most commands)."""
    parser = OneLineParser(
        prog="autosculpt",
        description="Prune an over-sized segmentation model to a latency budget on a target CPU.",
        epilog="Example: autosculpt search --budget-ms 20   (then: autosculpt report NAME --out report.html)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        if command in (None, name):
            importlib.import_module(f"{__name__}.{module_name}").register(subparsers)
    return parser


def quiet_libraries() -> None:
    """Our own progress view reports trials; Optuna's per-trial log lines and its notes on
    experimental features (heartbeat, artifacts) would only bury it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``autosculpt`` console script."""
    quiet_libraries()
    # A shell starts background jobs with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: restore it, so Ctrl-C and `docker stop` (SIGINT, see
    # docker-compose.yml) always mark the running trial failed and exit cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv and argv[0] in COMMANDS else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
