"""``rdpo figures``: regenerate every registered figure."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import InputError
from ..figures import load_all

DEFAULT_OUT = Path("figures")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "figures",
        help="regenerate every registered figure and its table",
        description="Regenerate every registered figure (PNG) and the CSV table it is drawn from.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes (minutes on a laptop)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (figures/)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these figure groups")
    p.add_argument("--jobs", type=int, default=-1, help="parallel jobs (joblib; -1 = all cores)")
    p.add_argument("--list", action="store_true", help="list the registered figures and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    registry = load_all()
    if args.list:
        for spec in registry.values():
            print(f"{spec.name:24s} {spec.description}")
        return 0
    names = list(registry) if not args.only else args.only
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise InputError(f"--only names unknown figures {unknown}; known: {sorted(registry)}")
    from . import checks as C

    C.jobs(args.jobs)
    C.output_dir(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    if not names:
        print("no figures are registered yet")
        return 0
    for name in names:
        t0 = time.perf_counter()
        paths = registry[name].make(args.out, quick=args.quick, jobs=args.jobs)
        print(f"[{name}] {time.perf_counter() - t0:.1f}s")
        for p in paths:
            print(f"  {p}")
    return 0
