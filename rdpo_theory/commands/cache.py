"""``rdpo cache``: inspect or clear the per-run cache of the studies."""

from __future__ import annotations

from pathlib import Path

from ..studies.sweep import DEFAULT_CACHE_DIR


def add_parser(sub) -> None:
    p = sub.add_parser(
        "cache",
        help="show or clear the per-run cache of the studies (default .cache/rdpo)",
        description="The studies (rdpo rates) keep one JSON file per finished run, keyed by "
        "the run's parameters, seed, the package version and a hash of the package's source, "
        "so code changes never reuse old results; each file carries a mark saying it is a cache "
        "entry. `rdpo cache info` counts the files; `rdpo cache clear` deletes the marked "
        "entries and the folders that leaves empty, and nothing else.",
    )
    p.add_argument("action", choices=["info", "clear"], help="info: count; clear: delete")
    p.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help=f"cache folder (default {DEFAULT_CACHE_DIR})",
    )
    p.set_defaults(func=run, check_paths=False)  # `info` only reads; `clear` checks below


def run(args) -> int:
    from ..errors import InputError
    from ..studies.sweep import clear_cache, code_fingerprint

    root = args.cache
    if root.exists() and not root.is_dir():
        raise InputError(f"--cache {str(root)!r} is not a directory")
    if args.action == "clear":
        from . import checks as C

        C.output_dir(root, "--cache")
        n = clear_cache(root)
        print(f"removed {n} cached runs from {root}")
        return 0
    spaces = sorted(d for d in root.glob("*") if d.is_dir()) if root.is_dir() else []
    total = 0
    for d in spaces:
        k = sum(1 for _ in d.glob("*/*.json"))
        total += k
        print(f"{d.name:40s} {k:8d} runs")
    print(f"{total} cached runs under {root}; current code fingerprint {code_fingerprint()[:16]}")
    return 0
