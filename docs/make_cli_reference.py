"""Write docs/cli.md from the ``--help`` of ``autosculpt`` and of every sub-command.

Run it after changing any option or help text:

    .venv/bin/python docs/make_cli_reference.py

tests/test_docs.py fails while docs/cli.md differs from what this script writes. The parsers
are built in-process (``autosculpt.search.cli.build_parser``, the one place commands are
registered) and formatted 100 columns wide, so the page does not depend on the terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "cli.md"
COLUMNS = "100"

HEADER = """# CLI reference

Generated from the parsers' `--help` by `python docs/make_cli_reference.py`; do not edit by hand
(`tests/test_docs.py` fails while this page differs from what the script writes). Every command
also prints its own page: `autosculpt COMMAND --help`. The commands in short are in the
[README](../README.md#commands); exit statuses are under `autosculpt search` below.
"""


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """The sub-parsers of ``parser`` in the order they were registered."""
    found = []
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public accessor
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            found.extend(action.choices.items())
    return found


def _walk(parser: argparse.ArgumentParser, name: str):
    yield name, parser
    for sub_name, sub in _subcommands(parser):
        yield from _walk(sub, f"{name} {sub_name}")


def render() -> str:
    """The whole of docs/cli.md, as the parsers describe themselves now."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = COLUMNS  # argparse's formatter reads the width from here
    try:
        from autosculpt.search.cli import build_parser

        parser = build_parser()
        pages = list(_walk(parser, "autosculpt"))
        parts = [HEADER, "Commands: " + ", ".join(f"[`{name}`](#{name.replace(' ', '-')})" for name, _ in pages[1:]) + ".\n"]
        for name, sub in pages:
            text = sub.format_help().rstrip()
            parts.append(f"## {name}\n\n```text\n{text}\n```\n")
        return "\n".join(parts)
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


def main() -> int:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
