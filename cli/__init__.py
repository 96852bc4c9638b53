"""The ``tandem`` command: one console script, one subcommand per job.

This package is the entry point layer (DESIGN.md): it may import every component, and nothing
in ``tandem`` imports it. Each subcommand lives in ``tandem.cli.commands.<name>`` and exposes
``register(subparsers)``; this module only assembles them. Every command module is imported
unconditionally — a command missing from an install is a packaging bug, and hiding it would
ship a ``tandem`` without subcommands. Command modules import their heavy or optional
dependencies inside ``run``, so an absent extra (torch for ``export``) is a one-line
``TandemError`` when that command is used, not a failure of the others. ``TandemError``
becomes a one-line message and exit status 2 — users see what is wrong, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tandem.errors import TandemError

# Order is the order shown by ``tandem --help``.
COMMANDS = (
    "generate",
    "export",
    "profile",
    "sim",
    "emulate",
    "chaos",
    "cloud",
    "edge",
    "ask",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem",
        description="Hybrid edge-cloud inference of encoder-decoder transformers.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"tandem.cli.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level)
    from tandem.logs import configure

    configure("text")  # extra={...} fields (request ids, reasons) appear on every line
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except TandemError as exc:
        print(f"tandem {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
