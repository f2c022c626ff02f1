"""``rdpo compare``: the scalable algorithms (Algorithms 1 and 2) against the exact minimax
solution (robust gap, tau vs implied radius, theta paths)."""

from __future__ import annotations

import time
from pathlib import Path

from ..figures import register, write_tables
from . import checks as C

DEFAULT_OUT = Path("figures")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="approximate WDPO/KLDPO (Algorithms 1-2) vs the exact minimax solution",
        description="For a grid of radii and sample sizes, solve KLDPO and continuous-W2 WDPO "
        "exactly, train normalized/clipped KLDPO with tau = lam*(rho) and sqrt-mean/per-pair "
        "WDPO with a grid of rho0, and write the tidy tables (approx_runs.csv, "
        "approx_summary.csv) and figures.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one n, one seed (default; < 2 min)")
    size.add_argument("--full", action="store_true", help="three n, three seeds, finer grids")
    p.add_argument("--jobs", type=int, default=-1, help="parallel jobs (joblib; -1 = all cores)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (figures/)")
    p.set_defaults(func=run)


def add_config_arguments(p) -> None:
    """Flags generated from :class:`~rdpo_theory.studies.approx_vs_exact.ApproxConfig`'s
    command-line fields (``--seeds``, ``--max-steps``, ``--learning-rate``, ...)."""
    from ..studies.approx_vs_exact import ApproxConfig

    presets = {"": ApproxConfig.quick, "--full: ": ApproxConfig.full}
    p.set_defaults(config_fields=tuple(C.config_arguments(p, ApproxConfig, presets=presets)))


def run(args) -> int:
    from ..studies.approx_vs_exact import ApproxConfig

    C.jobs(args.jobs)
    C.output_dir(args.out)
    changes = C.config_changes(args, args.config_fields)
    cfg = C.build_config(ApproxConfig.full if args.full else ApproxConfig.quick, **changes)
    t0 = time.perf_counter()
    paths = make(args.out, cfg=cfg, jobs=args.jobs)
    print(f"[compare] {time.perf_counter() - t0:.1f}s")
    for p in paths:
        print(f"  {p}")
    summary = [p for p in paths if Path(p).name == "approx_summary.csv"]
    if summary:
        print_summary(summary[0])
    return 0


def print_summary(path) -> None:
    """The study's result in a few lines, read from its table ``approx_summary.csv``: per
    family and method, the largest parameter distance to the exact minimax solution and the
    largest robust gap (nats) over the radii."""
    import pandas as pd

    t = pd.read_csv(path)
    t = t[~t["method"].str.endswith("-exact")]
    worst = t.groupby(["family", "method"], sort=False)[["param_dist", "robust_gap"]].max()
    print(f"largest over the radii ({Path(path).name}): distance to the exact optimum, robust gap")
    print(worst.to_string(float_format=lambda v: f"{v:.3g}"))


@register(
    "approx",
    description="Algorithms 1-2 vs the exact minimax solution: robust gap vs radius, "
    "tau vs implied rho, theta paths (KLDPO Alg. 2/clipped, WDPO Alg. 1/per-pair)",
)
def make(out, *, quick: bool = True, jobs: int = -1, cfg=None, progress: bool = True) -> list[Path]:
    """Run the study (:func:`rdpo_theory.studies.approx_vs_exact.tables`), write
    ``approx_runs.csv`` and ``approx_summary.csv`` under ``out`` and draw the figures from those
    tables. Returns the written paths."""
    from ..plots import approx as P
    from ..studies.approx_vs_exact import tables

    t = tables(cfg, quick=quick, jobs=jobs, progress=progress)
    return write_tables(t, out) + P.draw_all(out)
