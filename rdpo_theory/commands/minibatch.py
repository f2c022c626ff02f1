"""``rdpo minibatch``: what Algorithms 1 and 2 optimise at the batch sizes and layouts of
language-model training, and the running normalisers that remove the dependence
(docs/minibatch.md)."""

from __future__ import annotations

import time
from pathlib import Path

from ..figures import register, write_tables
from . import checks as C

DEFAULT_OUT = Path("figures")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "minibatch",
        help="minibatch fixed points of KLDPO/WDPO vs the exact robust path",
        description="Compute the fixed point theta_B of each approximate estimator (KLDPO "
        "normalized/clipped, WDPO sqrt-mean/per-pair; batch or running normaliser) for a grid "
        "of normalisation group sizes B, its effective radius on the exact path, its robust gap, "
        "the LLM layouts and an SGD check; write minibatch_runs.csv, minibatch_layouts.csv, "
        "minibatch_sgd.csv and the figures.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one radius per family (default)")
    size.add_argument("--full", action="store_true", help="three radii, nine B, longer SGD")
    p.add_argument("--jobs", type=int, default=-1, help="parallel jobs (joblib; -1 = all cores)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (figures/)")
    p.set_defaults(func=run)


def add_config_arguments(p) -> None:
    """Flags generated from :class:`~rdpo_theory.studies.minibatch.MinibatchConfig`'s
    command-line fields (``--n``, ``--batches``, ``--sets``, ``--decay``, ``--sgd-steps``, ...)."""
    from ..studies.minibatch import MinibatchConfig

    presets = {"": MinibatchConfig.quick, "--full: ": MinibatchConfig.full}
    p.set_defaults(config_fields=tuple(C.config_arguments(p, MinibatchConfig, presets=presets)))


def run(args) -> int:
    from ..studies.minibatch import MinibatchConfig

    C.jobs(args.jobs)
    changes = C.config_changes(args, args.config_fields)
    cfg = C.build_config(MinibatchConfig.full if args.full else MinibatchConfig.quick, **changes)
    t0 = time.perf_counter()
    paths = make(args.out, cfg=cfg, jobs=args.jobs)
    print(f"[minibatch] {time.perf_counter() - t0:.1f}s")
    for p in paths:
        print(f"  {p}")
    print(summary(args.out))
    return 0


def summary(out) -> str:
    """A few lines from the written ``minibatch_runs.csv``: the effective / intended radius
    of each estimator at each group size."""
    import pandas as pd

    runs = pd.read_csv(Path(out) / "minibatch_runs.csv")
    runs = runs[runs["batch"] != "full"]
    tab = runs.pivot_table(
        index=["variant", "normalizer"], columns="B", values="effective_ratio", aggfunc="first"
    )
    return "effective / intended radius by group size B:\n" + tab.round(3).to_string()


@register(
    "minibatch",
    description="Minibatch fixed points: effective radius vs B, distance to the exact path vs "
    "B, LLM layouts side by side (batch and running normalisers)",
)
def make(out, *, quick: bool = True, jobs: int = -1, cfg=None, progress: bool = True) -> list[Path]:
    """Run the study (:func:`rdpo_theory.studies.minibatch.tables`), write its tables under
    ``out`` and draw the figures from them. Returns the written paths."""
    from ..plots import minibatch as P
    from ..studies.minibatch import tables

    t = tables(cfg, quick=quick, jobs=jobs, progress=progress)
    return write_tables(t, out) + P.draw_all(out)
