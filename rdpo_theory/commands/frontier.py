"""``rdpo frontier``: every robust preference objective at a grid of its parameter, on one
certified evaluation set, with the Pareto frontier and the regret test (docs/frontier.md)."""

from __future__ import annotations

import time
from pathlib import Path

from ..figures import register, write_tables
from ..options import POSITIVE_INT, check

DEFAULT_OUT = Path("figures")  # relative to the current directory, never the package


def add_parser(sub) -> None:
    p = sub.add_parser(
        "frontier",
        help="robust-objective frontier: nominal loss, certified worst-case loss and "
        "mixed-reward value of every method's fits; Pareto marks; the regret test",
        description="Fit DPO, KLDPO, WDPO, chi-square, CVaR, the baselines, DPO-PRO and chi-PO "
        "at a grid of their parameters on the shift study's worlds, score every fit on a "
        "common certified evaluation set (KL and W1 balls, shift-family extremes), write tidy "
        "CSV tables and the figure.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small grids, 5 seeds (default)")
    size.add_argument("--full", action="store_true", help="larger worlds and grids, 10 seeds")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds S")
    p.add_argument("--jobs", type=int, default=1, help="parallel jobs (joblib; -1 = all cores)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (figures/)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..studies.frontier import FrontierConfig
    from . import checks as C

    C.jobs(args.jobs)
    C.output_dir(args.out)
    changes = {}
    if args.seeds is not None:
        check("seeds", args.seeds, POSITIVE_INT, owner="rdpo frontier")
        changes["seeds"] = args.seeds
    cfg = FrontierConfig.full(**changes) if args.full else FrontierConfig.quick(**changes)
    t0 = time.perf_counter()
    paths = make(args.out, cfg=cfg, jobs=args.jobs)
    print(f"[frontier] {time.perf_counter() - t0:.1f}s")
    for p in paths:
        print(f"  {p}")
    return 0


@register(
    "frontier",
    description="robust-objective frontier: nominal vs certified worst-case loss vs "
    "mixed-reward value for every method and parameter; Pareto marks; regret test",
)
def make(out, *, quick: bool = True, jobs: int = 1, cfg=None, progress: bool = True) -> list[Path]:
    """Run the study (:func:`rdpo_theory.studies.frontier.tables`), write
    ``frontier_runs.csv``, ``frontier_summary.csv`` and ``frontier_regret.csv`` under ``out``
    and draw ``frontier.png`` from those files. Returns the written paths."""
    from ..plots import frontier as P
    from ..studies.frontier import tables

    t = tables(cfg, quick=quick, jobs=jobs, progress=progress)
    return write_tables(t, out) + P.draw_all(out)
