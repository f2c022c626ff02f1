"""The ``rdpo`` command line. Each subcommand lives in ``rdpo_theory.commands.<name>`` and
defines ``add_parser(subparsers)``, which sets ``func`` on its parser."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from . import __version__
from .errors import RDPOError
from .extras import extra_of, install_hint

#: Subcommand modules, in help order.
COMMANDS = [
    "solve",
    "figures",
    "rates",
    "shift",
    "llm",
    "audit",
    "compare",
    "minibatch",
    "cache",
    "frontier",
    "inference",
]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``rdpo`` parser. A command module may define ``add_config_arguments(parser)``, flags
    generated from a study configuration (which imports the study): they are added for
    ``command`` only (every command when ``command`` is None), so that parsing ``rdpo solve``
    never imports the studies."""
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
        module = importlib.import_module(f"rdpo_theory.commands.{name}")
        module.add_parser(sub)
        if command in (None, name) and hasattr(module, "add_config_arguments"):
            module.add_config_arguments(sub.choices[name])
    parser.set_defaults(subcommands=sub.choices)  # name -> its parser (usage, option names)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, except that an unknown option after a subcommand is
    reported by that subcommand's parser, with its usage (argparse reports it at the top level
    with the top-level usage, which does not show the options that exist)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = getattr(args, "command", None)
        target = args.subcommands.get(command, parser) if command else parser
        target.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


_KEYWORD = re.compile(r"(?<![\w-])([a-z][a-z0-9_]*)=(?=(\S?))")


def cli_spelling(message: str, subparser: argparse.ArgumentParser | None) -> str:
    """``message`` with the Python keyword spellings of the command's options (``radius=``,
    ``cvxpy_solver='SCS'``) written as its flags (``--radius``, ``--cvxpy-solver 'SCS'``).
    Only keywords that are options of ``subparser`` are rewritten."""
    if subparser is None:
        return message
    flags = set(re.findall(r"--[a-z][a-z0-9-]*", subparser.format_help()))

    def spell(m: re.Match) -> str:
        flag = "--" + m.group(1).replace("_", "-")
        if flag not in flags:
            return m.group(0)
        follows = m.group(2)
        return flag + (" " if follows and follows not in ".,;:)" else "")

    return _KEYWORD.sub(spell, message)


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away (``rdpo solve --json | head``): send what is left to
    /dev/null, so Python's final flush does not fail again, and exit like a process killed by
    SIGPIPE would (128 + 13), silently."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


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
    any file; its output folders (``--out``, ``--cache``) are checked here, for every command.
    An ``OSError`` (a permission, a full disk) is one line too; a closed stdout (``| head``)
    ends the command silently."""
    _file_backend()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before COMMAND
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser(next((a for a in argv if not a.startswith("-")), ""))
    args = parse_args(parser, argv)
    args.debug = debug
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    subparser = args.subcommands.get(args.command)

    def fail(msg: str) -> int:
        msg = cli_spelling(" ".join(str(msg).split()), subparser)  # one line, CLI spellings
        print(f"rdpo {args.command}: error: {msg} (--debug shows the traceback)", file=sys.stderr)
        return 2

    try:
        from .commands.checks import output_paths

        output_paths(args)  # --out / --cache: a folder, writable; before any work
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in Python's exit flush
        return rc
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except RDPOError as exc:
        if args.debug:
            raise
        return fail(str(exc))
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
    except OSError as exc:  # a folder made read-only or a disk filled while running
        if args.debug:
            raise
        where = f": {exc.filename!r}" if exc.filename else ""
        return fail(f"{exc.strerror or exc}{where} ({type(exc).__name__})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
