"""Step time of the trainer's robust normalisers against DPO (one optimiser step of
``--accum`` micro-batches: reference and policy forwards, loss, backward, AdamW), on the CPU
GPT-2 benchmark models of ``benchmarks/lm_bench.py`` (random weights, synthetic pairs).

Rows: DPO; KLDPO (``normalized``) with ``robust_normalizer`` ``micro-batch``, ``running`` and
``accumulated``; WDPO ``sqrt-mean`` with the same three. Every step runs the trainer's own
functions (:func:`rdpo_theory.torch.train.loss_and_backward`, and for ``accumulated`` its first
pass :func:`rdpo_theory.torch.train.accumulated_statistic`). The methods are timed round-robin
in one process (one step of each per round, one intra-op thread), so load on a shared machine
hits them alike; the table reports the minimum over rounds (wall and process CPU seconds) and
the ratios against DPO and against the same loss with the micro-batch normaliser, measured in
the same run. Goals (issue 11): KLDPO ``running`` <= 1.02x DPO, ``accumulated`` <= 1.35x.

    python benchmarks/trainer_normalizer_step.py [--rounds 15] [--accum 2] [--out table.csv]
    python benchmarks/trainer_normalizer_step.py --markdown table.csv   # the docs table
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import lm_bench as bench  # noqa: E402

from rdpo_theory.torch.normalizers import RunningStatistic  # noqa: E402
from rdpo_theory.torch.train import (  # noqa: E402
    TrainConfig,
    accumulated_statistic,
    loss_and_backward,
    make_accelerator,
)

PLAN = (
    ("dpo", {}, "batch"),
    ("kldpo", {"tau": 1.0}, "batch"),
    ("kldpo", {"tau": 1.0}, "running"),
    ("kldpo", {"tau": 1.0}, "accumulated"),
    ("wdpo", {"rho0": 0.01}, "batch"),
    ("wdpo", {"rho0": 0.01}, "running"),
    ("wdpo", {"rho0": 0.01}, "accumulated"),
)


class Runner:
    """One method's model, reference, optimiser and ``accum`` fixed micro-batches; ``step()``
    runs one optimiser step as :func:`rdpo_theory.torch.train.train_preference` does."""

    def __init__(self, size, method, kw, normalizer, accum, seed=0):
        self.cfg = TrainConfig(
            method=method,
            beta=0.1,
            loss_kwargs=dict(kw),
            learning_rate=1e-5,
            batch_size=size.pairs,
            grad_accum=accum,
            max_steps=1,
            mixed_precision="no",
            progress=False,
            robust_normalizer=normalizer,
        )
        self.acc = make_accelerator(self.cfg)
        model = bench.build(size, seed)
        self.ref = bench.build(size, seed).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(model.parameters(), lr=self.cfg.learning_rate)
        self.model, self.opt = self.acc.prepare(model, self.opt)
        self.model.train()
        self.batches = [bench.synthetic_batch(size, seed + a) for a in range(accum)]
        self.stat = None
        if normalizer == "running":
            self.stat = RunningStatistic(self.cfg.robust_decay, log_space=method == "kldpo")

    def step(self):
        batches = [dict(b) for b in self.batches]  # the first pass adds reference log-probs
        norm, kept = self.stat, None
        for a, batch in enumerate(batches):
            with self.acc.accumulate(self.model):
                if a == 0 and self.cfg.robust_normalizer == "accumulated":
                    norm, kept = accumulated_statistic(
                        self.cfg,
                        self.model,
                        self.ref,
                        batches,
                        accelerator=self.acc,
                        keep_first=True,
                    )
                loss_and_backward(
                    self.cfg,
                    self.model,
                    self.ref,
                    batch,
                    accelerator=self.acc,
                    normalizer=norm,
                    policy_logps=kept if a == 0 else None,
                )
                if self.acc.sync_gradients:
                    self.acc.clip_grad_norm_(self.model.parameters(), 1.0)
                self.opt.step()
                self.opt.zero_grad()


def run(sizes, rounds: int, accum: int, warmup: int = 2) -> pd.DataFrame:
    rows = []
    for size in sizes:
        runners = [Runner(size, m, kw, n, accum) for m, kw, n in PLAN]
        wall = [[] for _ in runners]
        cpu = [[] for _ in runners]
        for r in range(warmup + rounds):
            for i, run_ in enumerate(runners):
                w0, c0 = time.perf_counter(), time.process_time()
                run_.step()
                if r >= warmup:
                    wall[i].append(time.perf_counter() - w0)
                    cpu[i].append(time.process_time() - c0)
        for (m, _, n), w, c in zip(PLAN, wall, cpu):
            rows.append(
                dict(
                    size=size.name,
                    pairs=size.pairs * accum,
                    accum=accum,
                    method=m,
                    normalizer=n,
                    sec_min=float(np.min(w)),
                    sec_median=float(np.median(w)),
                    cpu_sec_min=float(np.min(c)),
                )
            )
    df = pd.DataFrame(rows)
    for col, ratio in (("sec_min", "time_vs_dpo"), ("cpu_sec_min", "cpu_vs_dpo")):
        ref = df[df["method"] == "dpo"].set_index("size")[col]
        df[ratio] = df[col] / df["size"].map(ref)
    mb = df[df["normalizer"] == "batch"].set_index(["size", "method"])["sec_min"]
    df["time_vs_batch"] = df["sec_min"] / [mb[(s, m)] for s, m in zip(df["size"], df["method"])]
    return df


#: The docs table (docs/trainer-normalizers.md#step-time): header, then one row per CSV row.
MARKDOWN_HEADER = (
    "| size | method | normalizer | s/step (min) | CPU s/step (min) | time vs DPO | CPU vs DPO "
    "| time vs same loss, batch |\n| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"
)


def markdown(df: pd.DataFrame) -> str:
    """The docs table of a result table (times to 3 decimals, ratios to 2)."""
    rows = [
        f"| {r.size} | {r.method} | {r.normalizer} | {r.sec_min:.3f} | {r.cpu_sec_min:.3f} | "
        f"{r.time_vs_dpo:.2f} | {r.cpu_vs_dpo:.2f} | {r.time_vs_batch:.2f} |"
        for r in df.itertuples()
    ]
    return "\n".join([MARKDOWN_HEADER, *rows])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15, help="timed steps per method")
    ap.add_argument("--accum", type=int, default=2, help="micro-batches per optimiser step")
    ap.add_argument("--sizes", nargs="+", default=[bench.TINY.name, bench.SMALL_CPU.name])
    ap.add_argument("--out", default=None, help="optional CSV path")
    ap.add_argument(
        "--markdown", default=None, metavar="CSV", help="print the docs table of CSV and exit"
    )
    args = ap.parse_args()
    if args.markdown:
        print(markdown(pd.read_csv(args.markdown)))
        return
    torch.set_num_threads(1)  # stable CPU timings on a shared machine
    known = {s.name: s for s in (bench.TINY, bench.SMALL_CPU)}
    df = run([known[s] for s in args.sizes], args.rounds, args.accum)
    load = os.getloadavg()[0]
    print(f"load average (1 min) at the end: {load:.2f} on {os.cpu_count()} cores")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df.round(4).to_string(index=False))
    if args.out:
        df.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
