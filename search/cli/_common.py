"""Helpers shared by the command modules: parsers with examples, and common options."""

from __future__ import annotations

import argparse


def add_command(subparsers, name: str, summary: str, examples: list[str], run) -> argparse.ArgumentParser:
    """Add a sub-command whose ``--help`` ends with its examples; ``run(args)`` executes it."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=run)
    return parser
