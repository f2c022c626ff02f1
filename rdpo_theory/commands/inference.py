"""``rdpo inference``: coverage of the sandwich, bootstrap and empirical-likelihood intervals,
the radius-rate-coverage map, and error slopes over continuous feature laws."""

from __future__ import annotations

import time
from pathlib import Path

from ..figures import register, write_tables
from ..studies.sweep import DEFAULT_CACHE_DIR


def add_parser(sub) -> None:
    p = sub.add_parser(
        "inference",
        help="coverage of Wald/EL intervals, radius schedules, continuous feature laws",
        description="On a finite world with exact targets: coverage of the nominal Wald and "
        "empirical-likelihood intervals; error slopes and coverage for radius schedules "
        "rho_n = c n^-a; error slopes on Gaussian, Laplace and Student-t feature laws. Writes "
        "CSV tables and three figures.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="coverage at n in {500, 2000} x 200 reps, map at n <= 1e4 x 30 reps (default; "
        "about 3 minutes)",
    )
    size.add_argument(
        "--full",
        action="store_true",
        help="1000 reps at n in {500, 2000, 1e4, 1e5}, map 200 reps, laws to n = 64000",
    )
    p.add_argument(
        "--parts",
        nargs="+",
        choices=["coverage", "map", "laws"],
        default=None,
        help="which studies to run (default all three)",
    )
    p.add_argument("--jobs", type=int, default=1, help="parallel jobs (joblib; -1 = all)")
    p.add_argument("--backend", default=None, help="joblib backend: loky, threading or dask")
    p.add_argument("--out", type=Path, default=Path("figures"), help="output folder")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE_DIR, help="per-run cache folder")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..studies import inference as S
    from . import checks as C
    from .rates import cluster_client

    C.jobs(args.jobs)
    C.joblib_backend(args.backend)
    C.output_dir(args.out)
    if not args.no_cache:
        C.output_dir(args.cache, "--cache")
    over = {"parts": tuple(args.parts)} if args.parts else {}
    config = S.full_config(**over) if args.full else S.quick_config(**over)
    t0, c0 = time.perf_counter(), time.process_time()
    with cluster_client(args.backend):
        res = S.run_study(
            config,
            jobs=args.jobs,
            backend=args.backend,
            cache_dir=None if args.no_cache else args.cache,
        )
    paths = write_outputs(res, args.out)
    print(
        f"inference: {res.n_computed} runs computed, wall {time.perf_counter() - t0:.1f}s, "
        f"CPU of this process {time.process_time() - c0:.1f}s"
    )
    if "inference_coverage" in res.tables:
        cov = res["inference_coverage"]
        bad = cov[~cov["within_goal"].astype(bool)]
        print(f"coverage cells outside level +- 1.5 points: {len(bad)} of {len(cov)}")
    for p in paths:
        print(f"  {p}")
    return 0


def write_outputs(res, out) -> list[Path]:
    """Write the study's tables as CSV under ``out`` and draw the figures from those files."""
    from ..plots import inference as P

    return write_tables(res.tables, out) + P.draw_all(out)


@register(
    "inference",
    description="coverage of Wald/EL intervals, radius-rate-coverage map, feature-law slopes",
)
def make(
    out: Path,
    *,
    quick: bool = True,
    jobs: int = 1,
    config=None,
    cache_dir: str | Path | None = None,
) -> list[Path]:
    """Run the quick (or full) study, write its CSV tables and draw the figures from them."""
    from ..studies import inference as S

    config = config or (S.quick_config() if quick else S.full_config())
    return write_outputs(S.run_study(config, jobs=jobs, cache_dir=cache_dir), out)
