"""Timing of the distribution-shift study.

1. Seconds per fit of every method on one training sample of the quick configuration
   (median of ``--repeats``), with the ratio to exact DPO measured in the same run.
2. End to end: ``rdpo shift --quick`` as a subprocess (wall seconds, peak RSS of the process
   tree), against the issue's 3-minute goal.

Usage: python benchmarks/shift_timing.py [--repeats 3] [--jobs -1] [--out DIR] [--skip-cli]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))


def per_method(repeats: int) -> list[dict]:
    from rdpo_theory.studies.shift import (
        ShiftConfig,
        base_world,
        draw,
        fit_method,
        reward_parameters,
    )
    from rdpo_theory.worlds import preference_shift

    cfg = ShiftConfig.quick()
    world = base_world(cfg, [1, 2, 3, 4])
    t1, t2 = reward_parameters(world, 2, norm=cfg.theta_norm, cosine=0.0, seed=0)
    tw = preference_shift(world, t1, t2, cfg.alpha0)
    data, groups = draw(tw, cfg.n, 0)
    rows = []
    for method, grid in cfg.methods.items():
        param = grid[0]
        secs = []
        for _ in range(repeats):
            tracemalloc.start()
            t0 = time.perf_counter()
            fit_method(
                method, param, data, beta=cfg.beta, radius=world.B, groups=groups, steps=cfg.steps
            )
            secs.append(time.perf_counter() - t0)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        rows.append(
            {
                "method": method,
                "param": param,
                "seconds": float(np.median(secs)),
                "peak_MiB": peak / 2**20,
            }
        )
    base = next(r["seconds"] for r in rows if r["method"] == "dpo")
    for r in rows:
        r["ratio_vs_dpo"] = r["seconds"] / base
    return rows, data.n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=-1)
    ap.add_argument("--out", default=None, help="output folder of the CLI run (default: temp)")
    ap.add_argument("--skip-cli", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    rows, n_support = per_method(args.repeats)
    print(
        f"Per-fit time, quick configuration (support rows = {n_support}), median of {args.repeats}"
    )
    print(f"{'method':<13}{'param':>8}{'seconds':>10}{'peak MiB':>10}{'x DPO':>8}")
    for r in rows:
        print(
            f"{r['method']:<13}{str(r['param']):>8}{r['seconds']:>10.4f}"
            f"{r['peak_MiB']:>10.2f}{r['ratio_vs_dpo']:>8.1f}"
        )
    if args.skip_cli:
        return
    out = args.out or tempfile.mkdtemp(prefix="shift-bench-")
    cmd = [
        sys.executable,
        "-m",
        "rdpo_theory.cli",
        "shift",
        "--quick",
        "--jobs",
        str(args.jobs),
        "--out",
        out,
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print()
    print(f"{'command':<40}{'seconds':>9}{'peak RSS MiB':>14}{'goal s':>8}{'x goal':>8}")
    print(
        f"{'rdpo shift --quick --jobs ' + str(args.jobs):<40}{wall:>9.1f}{peak:>14.0f}"
        f"{180:>8}{wall / 180:>8.2f}"
    )
    print(f"(outputs in {out})")


if __name__ == "__main__":
    main()
