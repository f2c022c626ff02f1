"""``rdpo figures``: regenerate every registered figure."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import InputError
from ..extras import extra_of, install_hint
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
            needs = f" [needs the '{spec.extra}' extra]" if spec.extra else ""
            print(f"{spec.name:24s} {spec.description}{needs}")
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
    skipped: dict[str, list[str]] = {}  # extra -> figure names it would make
    for name in names:
        spec = registry[name]
        if spec.missing():
            skipped.setdefault(spec.extra, []).append(name)
            continue
        t0 = time.perf_counter()
        try:
            paths = spec.make(args.out, quick=args.quick, jobs=args.jobs)
        except ModuleNotFoundError as exc:  # an optional module imported deep inside ``make``
            extra = extra_of(exc.name)
            if extra is None:
                raise
            skipped.setdefault(extra, []).append(name)
            continue
        print(f"[{name}] {time.perf_counter() - t0:.1f}s")
        for p in paths:
            print(f"  {p}")
    for extra, figs in skipped.items():
        print(f"skipped {', '.join(figs)}: needs the '{extra}' extra; {install_hint(extra)}")
    if skipped and args.only:
        return 2  # the user asked for these figures by name and did not get them
    return 0
