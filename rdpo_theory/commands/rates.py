"""``rdpo rates``: the sample-complexity study (error vs n against the published bounds)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from ..extras import require
from ..figures import register, write_tables
from ..studies.sweep import DEFAULT_CACHE_DIR
from . import checks as C


def add_parser(sub) -> None:
    p = sub.add_parser(
        "rates",
        help="estimation-error rates vs n against Proposition 1 and Theorems 1-2",
        description="Sweep n and seeds on a finite world, fit log-log slopes with bootstrap "
        "intervals, compare with the bounds at delta, write CSV tables and figures.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="9 n in [50, 2e4], 20 seeds, 5 methods, rho 0.005 (default)",
    )
    size.add_argument(
        "--full", action="store_true", help="12 n in [50, 1e6], 20 seeds, every method, two radii"
    )
    p.add_argument(
        "--rho",
        type=float,
        nargs="+",
        default=None,
        metavar="RHO",
        help="radii of the robust methods (default 0.005; --full: 0.003 0.01)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="NAME",
        help="method names (see --list-methods)",
    )
    p.add_argument(
        "--ns", type=int, nargs="+", default=None, metavar="N", help="explicit sample sizes"
    )
    p.add_argument("--jobs", type=int, default=-1, help="parallel jobs (joblib; -1 = all)")
    p.add_argument(
        "--backend",
        default=None,
        help="joblib backend: loky (default), threading, or dask (the 'cluster' extra; "
        "uses the scheduler at DASK_SCHEDULER_ADDRESS, else a local dask cluster)",
    )
    p.add_argument("--out", type=Path, default=Path("figures"), help="output folder")
    p.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help="per-run cache folder (reused by reruns; default .cache/rdpo)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument("--list-methods", action="store_true", help="list methods and exit")
    p.set_defaults(func=run)


def add_config_arguments(p) -> None:
    """Flags generated from :class:`~rdpo_theory.studies.rates.RatesConfig`'s fields (``--world``,
    ``--world-seed``, ``--seeds``, ``--delta``, ``--solver``, ``--base-seed``, ``--n-boot``); the
    tuple fields keep their own flags (``--ns``, ``--rho``, ``--methods``)."""
    from ..studies import rates as R

    presets = {"": R.quick_config, "--full: ": R.full_config}
    names = C.config_arguments(p, R.RatesConfig, presets=presets)
    p.set_defaults(config_fields=tuple(names))


def run(args) -> int:
    from ..studies import rates as R

    if args.list_methods:
        for name, spec in R.METHODS.items():
            print(f"{name:18s} {spec.family:9s} {spec.description}")
        return 0
    C.jobs(args.jobs)
    C.joblib_backend(args.backend)
    C.output_dir(args.out)
    if not args.no_cache:
        C.output_dir(args.cache, "--cache")
    over = C.config_changes(args, args.config_fields)
    if args.rho is not None:
        over["rhos"] = tuple(args.rho)
    if args.methods is not None:
        over["methods"] = tuple(args.methods)
    if args.ns is not None:
        over["ns"] = tuple(args.ns)
    config = C.build_config(R.full_config if args.full else R.quick_config, **over)
    t0 = time.perf_counter()
    with cluster_client(args.backend):
        res = R.run_study(
            config,
            jobs=args.jobs,
            backend=args.backend,
            cache_dir=None if args.no_cache else args.cache,
        )
    paths = write_outputs(res, args.out)
    print(
        f"rates: {res.n_computed} runs computed, {res.n_cached} reused from cache, "
        f"{time.perf_counter() - t0:.1f}s"
    )
    cols = ["method", "rho", "metric", "slope", "ci_lo", "ci_hi", "n_min", "n_max", "seeds"]
    print(res.slopes[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    bad = res.bounds[res.bounds["violated"]]
    if len(bad):
        print(f"BOUND VIOLATIONS ({len(bad)} (method, rho, n) cells):")
        print(
            bad[["method", "rho", "n", "observed_quantile", "bound_certified"]].to_string(
                index=False
            )
        )
    else:
        print("no bound violated by the observed (1 - delta) quantile")
    failed = res.runs[~res.runs["ok"]]
    if len(failed):
        print(
            f"{len(failed)} runs did not solve: "
            + ", ".join(f"{k} x{v}" for k, v in failed["status"].value_counts().items())
        )
    for p in paths:
        print(f"  {p}")
    return 0


def write_outputs(res, out) -> list[Path]:
    """Write a :class:`~rdpo_theory.studies.rates.RatesResult`'s tables as CSV under ``out``
    and draw the three figures from those files."""
    from ..plots import rates as P

    return write_tables(res.tables(), out) + P.draw_all(out)


@register("rates", description="estimation error vs n (log-log), bound vs observed, slopes")
def make(
    out: Path,
    *,
    quick: bool = True,
    jobs: int = -1,
    config=None,
    cache_dir: str | Path | None = None,
) -> list[Path]:
    """Run the quick (or full) study, write its CSV tables and draw the three figures from them."""
    from ..studies import rates as R

    config = config or (R.quick_config() if quick else R.full_config())
    return write_outputs(R.run_study(config, jobs=jobs, cache_dir=cache_dir), out)


def cluster_client(backend: str | None):
    """Context manager giving ``--backend dask`` a dask client; a no-op for other backends.

    The client connects to ``DASK_SCHEDULER_ADDRESS`` (dask's ``scheduler-address`` setting)
    when it is set, else starts a ``LocalCluster`` on this machine. Needs the ``cluster`` extra.
    """
    if backend != "dask":
        return contextlib.nullcontext()
    require("cluster", what="--backend dask")
    from distributed import Client

    return Client()
