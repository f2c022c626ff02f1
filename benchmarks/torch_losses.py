"""Step time and peak memory of KLDPO and WDPO relative to DPO (one full training step:
policy + reference forward, loss, backward, AdamW) on GPT-2-style models built from a config.

CPU: the tiny emotion model and a 4-layer model; CUDA (when available): GPT-2 small (124M) in
bf16. Each method runs in its own process (so CPU peak RSS is clean) on the same seeded model
and batch. Goals from the issue: KLDPO <= 1.05x DPO; WDPO <= 3x DPO in time and <= 2x in memory.

    python benchmarks/torch_losses.py [--steps 10] [--out bench.csv]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def _child(size_name, method, kw, opts, steps, q):
    from rdpo_theory.torch import bench

    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # stable CPU timings on a shared machine
    size = {s.name: s for s in (bench.TINY, bench.SMALL_CPU, bench.GPT2_SMALL)}[size_name]
    q.put(bench.time_method(size, method, kw, steps=steps, warmup=2, train_options=opts))


def run(sizes, steps):
    from rdpo_theory.torch import bench

    ctx = mp.get_context("spawn")
    rows = []
    for size in sizes:
        plan = [(m, kw, {}) for m, kw in bench.METHODS] + list(bench.FD_ROWS)
        for method, kw, opts in plan:
            q = ctx.Queue()
            p = ctx.Process(target=_child, args=(size.name, method, kw, opts, steps, q))
            p.start()
            rows.append(q.get())
            p.join()
    df = pd.DataFrame(rows)
    for col, ratio in (("sec_per_step", "time_vs_dpo"), ("peak_over_start_bytes", "mem_vs_dpo")):
        ref = df[df["method"] == "dpo"].set_index("size")[col]
        df[ratio] = df[col] / df["size"].map(ref).clip(lower=1e-12)
    df["peak_MiB"] = df["peak_bytes"] / 2**20
    df["mem_growth_MiB"] = df["peak_over_start_bytes"] / 2**20
    return df


def main():
    from rdpo_theory.torch import bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=None, help="optional CSV path")
    args = ap.parse_args()
    sizes = [bench.TINY, bench.SMALL_CPU]
    if torch.cuda.is_available():
        sizes = [bench.GPT2_SMALL]
    df = run(sizes, args.steps)
    cols = [
        "size",
        "device",
        "precision",
        "method",
        "hvp",
        "pairs",
        "tokens_per_row",
        "sec_per_step",
        "sec_median",
        "time_vs_dpo",
        "peak_MiB",
        "mem_growth_MiB",
        "mem_vs_dpo",
    ]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.out:
        df.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
