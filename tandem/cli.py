"""The ``tandem`` command: one console script, one subcommand per job.

Each subcommand lives in ``tandem.commands.<name>`` and exposes ``register(subparsers)``; this
module only assembles them, so a broken optional dependency of one command (say, matplotlib for
``sim``) never stops the others from starting. ``TandemError`` becomes a one-line message and
exit status 2 — users see what is wrong, not a traceback.
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
    "transcribe",
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
        try:
            module = importlib.import_module(f"tandem.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("tandem.commands"):
                continue  # command not part of this build
            raise
        module.register(sub)
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


if __name__ == "__main__":
    sys.exit(main())
