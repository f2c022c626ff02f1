"""Timing of the sample-complexity study (``rdpo rates``).

Prints one table row per configuration: runs, methods, n range, wall seconds, seconds per
run, peak resident memory (this process and its joblib workers), and the ratio against the
peer measured in the same invocation (the cvxpy exact path on the same grid is the peer of
the fast exact path).

Configurations:

* ``quick``        -- ``rdpo rates --quick`` (goal: < 120 s on 2 cores);
* ``quick-cvxpy``  -- the same exact methods through cvxpy (the peer), on a reduced grid;
* ``full-exact``   -- n up to 1e6 for the fast exact methods (DPO, KLDPO, WDPO), 20 seeds,
  two radii;
* ``full``         -- ``rdpo rates --full`` (every method; only with ``--full``: the
  finite-candidate WDPO and the torch Algorithms 1-2 make it long).

Usage::

    python benchmarks/rates_timing.py [--jobs 2] [--full]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def peak_mb() -> float:
    """Peak RSS (MiB) of this process. The loky workers persist (they are not waited for), so
    their memory is not in RUSAGE_CHILDREN; each holds one |Z|-sized problem at a time."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(name, config, jobs):
    from rdpo_theory.studies import rates as R

    t0 = time.perf_counter()
    res = R.run_study(config, jobs=jobs, progress=False)
    wall = time.perf_counter() - t0
    runs = len(res.runs)
    ok = int(res.runs["ok"].sum())
    return {
        "config": name,
        "runs": runs,
        "ok": ok,
        "methods": len(config.methods),
        "n": f"{min(config.ns)}..{max(config.ns)}",
        "seeds": config.seeds,
        "wall_s": wall,
        "s_per_run": wall / max(runs, 1),
        "peak_mb_main": peak_mb(),
        "result": res,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="also time rdpo rates --full")
    args = ap.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    from rdpo_theory.studies import rates as R

    rows = []
    rows.append(timed("quick", R.quick_config(), args.jobs))
    exact = ("dpo", "kldpo-exact", "wdpo-exact")
    small = {"ns": (50, 240, 1200, 5800, 20000), "seeds": 10, "methods": exact}
    fast = timed("quick-fast(exact)", R.quick_config(**small), args.jobs)
    peer = timed("quick-cvxpy(exact)", R.quick_config(**small, solver="cvxpy"), args.jobs)
    fast["ratio"] = fast["wall_s"] / peer["wall_s"]
    peer["ratio"] = 1.0
    rows += [fast, peer]
    rows.append(timed("full-exact", R.full_config(methods=exact), args.jobs))
    if args.full:
        rows.append(timed("full", R.full_config(), args.jobs))

    cols = [
        "config",
        "runs",
        "ok",
        "methods",
        "n",
        "seeds",
        "wall_s",
        "s_per_run",
        "peak_mb_main",
        "ratio",
    ]
    print(f"rates timing, jobs={args.jobs}, python {sys.version.split()[0]}")
    print(" | ".join(cols))
    for r in rows:
        vals = []
        for c in cols:
            v = r.get(c, "")
            vals.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        print(" | ".join(vals))
    if not args.full:
        print("full: not run (pass --full; it adds finite-candidate WDPO and Algorithms 1-2)")
    q = rows[0]["result"]
    print("\nquick slopes:")
    print(
        q.slopes[["method", "rho", "metric", "slope", "ci_lo", "ci_hi"]].to_string(
            index=False, float_format=lambda v: f"{v:.3f}"
        )
    )
    fe = rows[3]["result"]
    print("\nfull-exact slopes:")
    print(
        fe.slopes[["method", "rho", "metric", "slope", "ci_lo", "ci_hi"]].to_string(
            index=False, float_format=lambda v: f"{v:.3f}"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
