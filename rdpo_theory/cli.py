"""The ``rdpo`` command line. Each subcommand lives in ``rdpo_theory.commands.<name>`` and
defines ``add_parser(subparsers)``, which sets ``func`` on its parser."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import RDPOError

#: Subcommand modules, in help order.
COMMANDS = ["solve", "figures", "rates", "shift", "llm", "compare", "cache"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rdpo",
        description="Exact solvers, scalable algorithms and studies for robust DPO "
        "(WDPO, KLDPO) on log-linear policies and language models.",
    )
    parser.add_argument("--version", action="version", version=f"rdpo-theory {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"rdpo_theory.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except RDPOError as exc:
        print(f"rdpo {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
