"""``rdpo shift``: the distribution-shift study (the paper's Figures 2 and 3, exact, with
intervals and baselines)."""

from __future__ import annotations

import time
from pathlib import Path

from ..figures import register, write_tables
from . import checks as C

DEFAULT_OUT = Path("figures")  # relative to the current directory, never the package


def add_parser(sub) -> None:
    p = sub.add_parser(
        "shift",
        help="distribution shift: DPO, WDPO, KLDPO and baselines under preference, context, "
        "behaviour and objective shift",
        description="Train every method at alpha0 on finite log-linear worlds, evaluate exact "
        "rewards across the shift families, select parameters by validation and by oracle, "
        "write tidy CSV tables and figures.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small grids, 5 seeds (default)")
    size.add_argument("--full", action="store_true", help="larger worlds and grids, 10 seeds")
    p.add_argument("--jobs", type=int, default=-1, help="parallel jobs (joblib; -1 = all cores)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (figures/)")
    p.add_argument(
        "--groups",
        "--cover-groups",
        action="store_true",
        help="run the group-shift family instead (contexts as groups, evaluation on each group "
        "alone): the coverage rule (rho from the smallest group share) vs validation "
        "selection, DPO and group-robust DPO",
    )
    p.set_defaults(func=run)


def add_config_arguments(p) -> None:
    """Flags generated from :class:`~rdpo_theory.studies.shift.ShiftConfig`'s command-line
    fields (``--seeds``, ``--n``, ``--alpha0``, ``--steps``, ...); with ``--groups`` those that
    :class:`~rdpo_theory.studies.group_shift.GroupShiftConfig` shares apply to it."""
    from ..studies.shift import ShiftConfig

    presets = {"": ShiftConfig.quick, "--full: ": ShiftConfig.full}
    p.set_defaults(config_fields=tuple(C.config_arguments(p, ShiftConfig, presets=presets)))


def run(args) -> int:
    from ..studies.shift import ShiftConfig

    C.jobs(args.jobs)
    C.output_dir(args.out)
    changes = C.config_changes(args, args.config_fields)
    if args.groups:
        return _run_groups(args, changes)
    cfg = C.build_config(ShiftConfig.full if args.full else ShiftConfig.quick, **changes)
    t0 = time.perf_counter()
    paths = make(args.out, cfg=cfg, jobs=args.jobs)
    print(f"[shift] {time.perf_counter() - t0:.1f}s")
    for p in paths:
        print(f"  {p}")
    return 0


@register(
    "shift",
    description="distribution shift (paper Fig. 2/3): rewards vs alpha, "
    "trade-off, multi-objective radars, context/behaviour shift; DPO, WDPO, KLDPO, baselines",
)
def make(out, *, quick: bool = True, jobs: int = -1, cfg=None, progress: bool = True) -> list[Path]:
    """Run the study (:func:`rdpo_theory.studies.shift.tables`), write ``shift_runs.csv``,
    ``shift_summary.csv`` and ``shift_tradeoff.csv`` under ``out`` and draw the figures from
    those files. Returns the written paths."""
    from ..plots import shift as P
    from ..studies.shift import tables

    t = tables(cfg, quick=quick, jobs=jobs, progress=progress)
    return write_tables(t, out) + P.draw_all(out)


def _run_groups(args, changes) -> int:
    import dataclasses

    from ..studies.group_shift import GroupShiftConfig

    shared = {f.name for f in dataclasses.fields(GroupShiftConfig)}
    C.not_applicable(
        args,
        {k: "--" + k.replace("_", "-") for k in changes if k not in shared},
        "to --groups (they set the shift families)",
    )
    preset = {"seeds": 10, "n": 2000, "n_val": 2000} if args.full else {}
    cfg = C.build_config(GroupShiftConfig, **{**preset, **changes})
    t0 = time.perf_counter()
    paths = make_groups(args.out, cfg=cfg, jobs=args.jobs)
    print(f"[shift --groups] {time.perf_counter() - t0:.1f}s")
    for p in paths:
        print(f"  {p}")
    return 0


@register(
    "shift-groups",
    description="group shift (contexts as groups): worst-group log-loss of the coverage rule "
    "vs validation selection, DPO and group-robust DPO",
)
def make_groups(out, *, quick: bool = True, jobs: int = -1, cfg=None) -> list[Path]:
    """Run the group-shift family (:func:`rdpo_theory.studies.group_shift.tables`), write
    ``shift_groups_runs.csv``, ``shift_groups_summary.csv`` and ``shift_groups_config.json``
    under ``out`` and draw ``shift_groups.png`` from the summary file."""
    import dataclasses

    import pandas as pd

    from ..plots.group_shift import plot_group_shift
    from ..studies.group_shift import GroupShiftConfig, tables

    if cfg is None:
        cfg = GroupShiftConfig() if quick else GroupShiftConfig(seeds=10, n=2000, n_val=2000)
    paths = write_tables(tables(cfg, jobs=jobs), out)
    cj = Path(out) / "shift_groups_config.json"
    cj.write_text(pd.Series(dataclasses.asdict(cfg)).to_json(indent=2))
    return paths + [plot_group_shift(paths[1], Path(out) / "shift_groups.png"), cj]
