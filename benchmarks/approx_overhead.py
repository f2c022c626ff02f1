"""Time per epoch of each approximate robust variant against plain DPO on the same data.

Log-linear pairs from ``worlds.gaussian_preferences`` (default n = 1e5, d = 32), float64,
Adam, trained by :func:`rdpo_theory.approx.fit` exactly as users call it. One epoch is one
pass over the n rows: ``ceil(n / B)`` minibatch steps, or one full-batch step. Each method
runs in its own spawned process with one torch thread (clean peak RSS, stable timings on a
shared machine); the reported time is the median over epochs after one warm-up epoch.
The ratio to DPO is the overhead users pay for robustness. Goals (issue 7): normalized KLDPO
<= 1.2x DPO, WDPO <= 3x DPO. WDPO is timed with the autograd penalty (double backward, what
language models need) and with the log-linear closed form (tested equal in tests/test_approx.py).

    python benchmarks/approx_overhead.py [--n 100000] [--d 32] [--batch 1024] [--epochs 5]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp

import pandas as pd

METHODS = [
    ("dpo", "dpo", {}),
    ("kldpo-normalized", "kldpo", {"tau": 1.0, "variant": "normalized"}),
    ("kldpo-clipped", "kldpo", {"tau": 1.0, "variant": "clipped"}),
    ("wdpo-sqrt-mean (autograd)", "wdpo", {"rho0": 0.1, "variant": "sqrt-mean"}),
    ("wdpo-per-pair (autograd)", "wdpo", {"rho0": 0.1, "variant": "per-pair"}),
    (
        "wdpo-sqrt-mean (closed form)",
        "wdpo",
        {"rho0": 0.1, "variant": "sqrt-mean", "penalty": "closed-form"},
    ),
    (
        "wdpo-per-pair (closed form)",
        "wdpo",
        {"rho0": 0.1, "variant": "per-pair", "penalty": "closed-form"},
    ),
]


def _child(label, fn_name, kw, n, d, batch, epochs, q):
    import resource
    import time

    import numpy as np
    import torch

    from rdpo_theory import approx
    from rdpo_theory.worlds import gaussian_preferences

    torch.set_num_threads(1)
    data = gaussian_preferences(n, d, theta_star=np.full(d, 1 / math.sqrt(d)), seed=0)
    fn = getattr(approx, fn_name)
    steps = 1 if batch is None else math.ceil(n / batch)
    per_call = 10 if batch is None else 1  # full batch: time 10 one-step epochs per call
    times = []
    for e in range(epochs + 1):  # the first epoch warms up (allocations, dispatch caches)
        t0 = time.perf_counter()
        res = fn(
            data, beta=1.0, batch_size=batch, max_steps=steps * per_call, gtol=0.0, seed=e, **kw
        )
        wall = time.perf_counter() - t0
        if e:
            times.append(min(wall, res.extras["seconds"]) / per_call)
    q.put(
        {
            "method": label,
            "batch": "full" if batch is None else batch,
            "steps_per_epoch": steps,
            "seconds_per_epoch": float(np.median(times)),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def run(n: int, d: int, batches, epochs: int) -> pd.DataFrame:
    ctx = mp.get_context("spawn")
    rows = []
    for batch in batches:
        for label, fn_name, kw in METHODS:
            q = ctx.Queue()
            p = ctx.Process(target=_child, args=(label, fn_name, kw, n, d, batch, epochs, q))
            p.start()
            rows.append(q.get())
            p.join()
    df = pd.DataFrame(rows)
    base = df[df["method"] == "dpo"].set_index("batch")["seconds_per_epoch"]
    df["ratio_vs_dpo"] = df["seconds_per_epoch"] / df["batch"].map(base)
    df.insert(0, "n", n)
    df.insert(1, "d", d)
    return df


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024, help="minibatch size (also: full batch)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", default=None, help="optional CSV path")
    args = ap.parse_args(argv)
    df = run(args.n, args.d, [args.batch, None], args.epochs)
    with pd.option_context("display.width", 160, "display.float_format", "{:.4g}".format):
        print(df.to_string(index=False))
    if args.out:
        df.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
