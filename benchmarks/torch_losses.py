"""Step time and peak memory of KLDPO and WDPO relative to DPO (one full training step:
policy + reference forward, loss, backward, AdamW) on GPT-2-style models built from a config.

CPU: the tiny emotion model and a 4-layer model; CUDA (when available): GPT-2 small (124M) in
bf16. Each method runs in its own process (so CPU peak RSS is clean) on the same seeded model
and batch. Goals from the issue: KLDPO <= 1.05x DPO; WDPO <= 3x DPO in time and <= 2x in memory.

``--lora R`` times full fine-tuning against LoRA of rank R instead (``bench.lora_plan``: a
reference copy or the adapters-disabled base, and precomputed reference log-probs), on GPT-2
124M and 355M at 2 pairs x 256 tokens on a CPU (``--sizes`` picks others), with the whole
process's peak RSS and the ratios to full fine-tuning with a reference copy. ``--live-rss``
makes freed tensors leave the resident set (glibc's ``MALLOC_MMAP_THRESHOLD_``), for peak
memory that counts live tensors only, at the price of slower steps.

    python benchmarks/torch_losses.py [--steps 10] [--out bench.csv]
    python benchmarks/torch_losses.py --lora 16 --steps 2 [--sizes gpt2-124M-cpu] [--live-rss]
    python benchmarks/torch_losses.py --summarize experiments/lora_cpu/lora_times_cpu.csv

With ``--out``, ``--lora`` also writes ``<out stem>_summary.csv``: the ranges of the time ratios
to full fine-tuning that the one-GPU recipe quotes (``lm_bench.lora_summary``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import sys
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def _child(size_name, method, kw, opts, steps, warmup, threads, q):
    import lm_bench as bench

    if not torch.cuda.is_available():
        torch.set_num_threads(threads)  # 1: stable CPU timings on a shared machine
    q.put(bench.time_method(bench.SIZES[size_name], method, kw, steps=steps, warmup=warmup, **opts))


def _rows(plan, steps, warmup=2, threads=1, partial=None):
    """One spawned process per ``(size, method, loss_kwargs, time_method options)``, so that
    each CPU peak RSS is the row's own. A worker that dies (the kernel's out-of-memory kill)
    gives a row with an ``error`` column instead of a hung run. ``partial``: a JSON-lines
    file that each finished row is appended to at once."""
    import lm_bench as bench

    from rdpo_theory.torch.train import TrainConfig

    ctx = mp.get_context("spawn")
    rows = []
    for size, method, kw, opts in tqdm(plan, desc="rows", unit="row"):
        q = ctx.Queue()
        args = (size.name, method, kw, opts, steps, warmup, threads, q)
        p = ctx.Process(target=_child, args=args)
        p.start()
        row = None
        while row is None:
            try:
                row = q.get(timeout=5.0)
            except queue.Empty:
                if not p.is_alive() and q.empty():
                    break
        p.join()
        if row is None:
            row = dict(
                size=size.name,
                method=method,
                params=str(kw),
                hvp=bench.hvp_label(
                    TrainConfig(method=method, loss_kwargs=kw, **opts.get("train_options", {}))
                ),
                lora_r=opts.get("lora_r", 0),
                reference=opts.get("reference", "copy"),
                error=f"killed by signal {-p.exitcode} (out of memory?)"
                if p.exitcode is not None and p.exitcode < 0
                else f"worker exited with code {p.exitcode}",
            )
        tqdm.write(json.dumps(row, default=str))
        if partial is not None:
            with open(partial, "a") as f:
                f.write(json.dumps(row, default=str) + "\n")
        rows.append(row)
    return pd.DataFrame(rows)


def run(sizes, steps, threads=1):
    import lm_bench as bench

    plan = [(m, kw, {}) for m, kw in bench.METHODS] + list(bench.FD_ROWS)
    plan = [(s, m, kw, {"train_options": o}) for s in sizes for m, kw, o in plan]
    df = _rows(plan, steps, threads=threads)
    for col, ratio in (("sec_per_step", "time_vs_dpo"), ("peak_over_start_bytes", "mem_vs_dpo")):
        ref = df[df["method"] == "dpo"].set_index("size")[col]
        df[ratio] = df[col] / df["size"].map(ref).clip(lower=1e-12)
    df["peak_MiB"] = df["peak_bytes"] / 2**20
    df["mem_growth_MiB"] = df["peak_over_start_bytes"] / 2**20
    return df


def run_lora(sizes, steps, lora_r, threads, partial=None, methods=None):
    """Full fine-tuning against LoRA of rank ``lora_r`` (``bench.lora_plan``), per method
    (``methods``: names from ``bench.METHODS``, default all)."""
    import lm_bench as bench

    plan = [
        (s, m, kw, {"lora_r": r, "reference": ref})
        for s in sizes
        for m, kw in bench.METHODS
        if methods is None or m in methods
        for r, ref in bench.lora_plan(lora_r)
    ]
    df = bench.vs_full(_rows(plan, steps, warmup=1, threads=threads, partial=partial))
    df["peak_GiB"] = df["peak_bytes"] / 2**30
    df["trainable_M"] = df["trainable_params"] / 1e6
    return df


def write_lora_summary(df, out) -> Path:
    """Write ``bench.lora_summary(df)`` beside the ``--lora`` table ``out``, as
    ``<out stem>_summary.csv`` (the ranges the one-GPU recipe quotes), and return its path."""
    import lm_bench as bench

    from rdpo_theory.tables import write_csv

    out = Path(out)
    return write_csv(bench.lora_summary(df), out.with_name(f"{out.stem}_summary.csv"))


def main():
    import lm_bench as bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=None, help="optional CSV path")
    ap.add_argument("--lora", type=int, default=0, metavar="R", help="full vs LoRA of rank R")
    ap.add_argument("--sizes", nargs="+", default=None, choices=sorted(bench.SIZES))
    ap.add_argument(
        "--threads", type=int, default=None, help="CPU threads per row (default 1; --lora: all)"
    )
    ap.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=[m for m, _ in bench.METHODS],
        help="--lora only",
    )
    ap.add_argument(
        "--live-rss",
        action="store_true",
        help="workers run with glibc's MALLOC_MMAP_THRESHOLD_=65536: peak RSS then tracks live "
        "tensors (freed blocks leave the resident set) but steps run slower",
    )
    ap.add_argument(
        "--summarize",
        default=None,
        metavar="CSV",
        help="only write the summary of an existing --lora table (CSV_summary.csv beside it)",
    )
    args = ap.parse_args()
    if args.summarize:
        print(write_lora_summary(pd.read_csv(args.summarize), args.summarize))
        return
    if args.live_rss:
        # glibc keeps freed heap pages resident, so a CPU peak RSS counts earlier steps'
        # temporaries too; with blocks over 64 KiB mmapped, freeing returns them. Spawned
        # workers inherit the variable (glibc reads it when a process starts).
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    if args.lora:
        names = args.sizes or [bench.GPT2_SMALL_CPU.name, bench.GPT2_MEDIUM_CPU.name]
        threads = args.threads or torch.get_num_threads()
        partial = None if args.out is None else Path(args.out).with_suffix(".partial.jsonl")
        sizes = [bench.SIZES[n] for n in names]
        df = run_lora(sizes, args.steps, args.lora, threads, partial, args.methods)
        cols = ["size", "device", "precision", "method", "lora_r", "reference"]
        cols += ["trainable_M", "sec_per_step", "time_vs_full", "peak_GiB", "mem_vs_full"]
        cols += ["error"] if "error" in df else []
        print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        if args.out:
            df.to_csv(args.out, index=False)
            write_lora_summary(df, args.out)
        return
    sizes = [bench.TINY, bench.SMALL_CPU]
    if torch.cuda.is_available():
        sizes = [bench.GPT2_SMALL]
    if args.sizes:
        sizes = [bench.SIZES[n] for n in args.sizes]
    df = run(sizes, args.steps, threads=args.threads or 1)
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
