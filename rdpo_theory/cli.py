"""The ``rdpo`` command line. Each subcommand lives in ``rdpo_theory.commands.<name>`` and
defines ``add_parser(subparsers)``, which sets ``func`` on its parser."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .errors import RDPOError
from .extras import extra_of, install_hint

#: Subcommand modules, in help order.
COMMANDS = ["solve", "figures", "rates", "shift", "llm", "audit", "compare", "minibatch", "cache"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rdpo",
        description="Exact solvers, scalable algorithms and studies for robust DPO "
        "(WDPO, KLDPO) on log-linear policies and language models.",
    )
    parser.add_argument("--version", action="version", version=f"rdpo-theory {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error instead of a one-line message",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"rdpo_theory.commands.{name}").add_parser(sub)
    return parser


def _file_backend() -> None:
    """The commands only write image files: use matplotlib's ``Agg`` backend unless the user
    chose one (``MPLBACKEND``). Done here, not at import of :mod:`rdpo_theory.plots`, so the
    library never switches a user's backend. Set through the environment when matplotlib is not
    loaded yet, so a command that draws nothing does not pay for importing it."""
    if "MPLBACKEND" not in os.environ:
        if "matplotlib" in sys.modules:
            sys.modules["matplotlib"].use("Agg")
        else:
            os.environ["MPLBACKEND"] = "Agg"


def main(argv: list[str] | None = None) -> int:
    """Run ``rdpo``. Every error the package raises on purpose (:class:`RDPOError`: bad input,
    an unreadable file, a solver that could not certify its answer, a non-finite training
    step) becomes one line on stderr and exit status 2; ``--debug`` re-raises it with its
    traceback. Every command checks all of its arguments before it starts any work or writes
    any file."""
    _file_backend()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before COMMAND
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except RDPOError as exc:
        if args.debug:
            raise
        msg = " ".join(str(exc).split())  # one line
        print(f"rdpo {args.command}: error: {msg} (--debug shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"rdpo {args.command}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        extra = extra_of(exc.name)
        if extra is None or args.debug:
            raise
        print(
            f"rdpo {args.command}: error: needs the '{extra}' extra (missing: {exc.name}); "
            f"install it with: {install_hint(extra)}",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
