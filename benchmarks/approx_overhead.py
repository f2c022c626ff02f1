"""Time per epoch of each approximate robust variant against plain DPO on the same data.

Log-linear pairs from ``worlds.gaussian_preferences`` (default n = 1e5, d = 32), float64,
Adam, trained by :func:`rdpo_theory.approx.fit` exactly as users call it. One epoch is one
pass over the n rows: ``ceil(n / B)`` minibatch steps, or one full-batch step (timed as runs of
10 steps). Times are the CPU time of the training loop's thread (``extras["cpu_seconds"]``):
on a shared machine wall time doubles whenever another process takes the core, CPU time does
not (the median wall time is printed too). Each method lives in its own spawned worker
process with one torch thread (clean peak RSS, no allocator or cache state shared between
methods); the workers take turns, one epoch each per round, so every round times all methods
under the same machine load. Reported:
the minimum and median seconds per epoch over the rounds (after one warm-up round), and the
ratio to DPO as the median over rounds of the paired ratio (robust to load that changes
between rounds; the minima ratio is printed too). The ratio is the overhead users pay for
robustness. Goals (issue 7): normalized KLDPO <= 1.2x DPO, WDPO <= 3x DPO. WDPO is timed with
the autograd penalty (double backward, what language models need) and with the log-linear
closed form (tested equal in tests/test_approx.py).

    python benchmarks/approx_overhead.py [--n 100000] [--d 32] [--batch 1024] [--rounds 9]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp

import numpy as np
import pandas as pd

METHODS = [
    ("dpo", "dpo", {}),
    ("kldpo-alg2", "kldpo", {"tau": 1.0, "variant": "normalized"}),
    ("kldpo-clipped", "kldpo", {"tau": 1.0, "variant": "clipped"}),
    ("wdpo-alg1 (autograd)", "wdpo", {"rho0": 0.1, "variant": "sqrt-mean"}),
    ("wdpo-per-pair (autograd)", "wdpo", {"rho0": 0.1, "variant": "per-pair"}),
    (
        "wdpo-alg1 (closed form)",
        "wdpo",
        {"rho0": 0.1, "variant": "sqrt-mean", "penalty": "closed-form"},
    ),
    (
        "wdpo-per-pair (closed form)",
        "wdpo",
        {"rho0": 0.1, "variant": "per-pair", "penalty": "closed-form"},
    ),
]


def _worker(fn_name, kw, n, d, batch, conn):
    """Run one epoch per request (the round number, used as the seed); reply with its
    seconds; on ``None`` reply with the peak RSS (MiB) and exit."""
    import resource

    import torch

    from rdpo_theory import approx
    from rdpo_theory.worlds import gaussian_preferences

    torch.set_num_threads(1)
    data = gaussian_preferences(n, d, theta_star=np.full(d, 1 / math.sqrt(d)), seed=0)
    fn = getattr(approx, fn_name)
    steps = 1 if batch is None else math.ceil(n / batch)
    per_call = 10 if batch is None else 1  # full batch: time 10 one-step epochs per call
    while (seed := conn.recv()) is not None:
        res = fn(
            data, beta=1.0, batch_size=batch, max_steps=steps * per_call, gtol=0.0, seed=seed, **kw
        )
        # the training loop only (setup copies X into a tensor once per call)
        conn.send((res.extras["cpu_seconds"] / per_call, res.extras["seconds"] / per_call))
    conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run(n: int, d: int, batches, rounds: int) -> pd.DataFrame:
    ctx = mp.get_context("spawn")
    rows = []
    for batch in batches:
        workers = []
        for label, fn_name, kw in METHODS:
            here, there = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(fn_name, kw, n, d, batch, there))
            p.start()
            workers.append((label, p, here))
        times = {label: [] for label, _, _ in workers}
        walls = {label: [] for label, _, _ in workers}
        for r in range(rounds + 1):  # round 0 warms up (allocations, dispatch caches)
            for label, _, conn in workers:  # one at a time: the timed epochs never overlap
                conn.send(r)
                t, w = conn.recv()
                if r:
                    times[label].append(t)
                    walls[label].append(w)
        base = np.array(times["dpo"])
        for label, p, conn in workers:
            conn.send(None)
            rss = conn.recv()
            p.join()
            t = np.array(times[label])
            rows.append(
                {
                    "method": label,
                    "batch": "full" if batch is None else batch,
                    "steps_per_epoch": 1 if batch is None else math.ceil(n / batch),
                    "seconds_per_epoch_min": float(t.min()),
                    "seconds_per_epoch_median": float(np.median(t)),
                    "ratio_vs_dpo": float(np.median(t / base)),
                    "ratio_of_minima": float(t.min() / base.min()),
                    "wall_seconds_median": float(np.median(walls[label])),
                    "peak_rss_mib": rss,
                }
            )
    df = pd.DataFrame(rows)
    df.insert(0, "n", n)
    df.insert(1, "d", d)
    return df


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024, help="minibatch size (also: full batch)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", default=None, help="optional CSV path")
    args = ap.parse_args(argv)
    df = run(args.n, args.d, [args.batch, None], args.rounds)
    with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
        print(df.to_string(index=False))
    if args.out:
        df.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
