"""One prepared single-GPU run: step times and peak memory of DPO, KLDPO and WDPO on GPT-2
sized models built from a config (no downloads) -- WDPO both by double backward (math attention)
and by finite-difference Hessian-vector products (``bench.FD_ROWS``: float32 differenced passes,
and bf16 ones; flash attention stays on) -- then full fine-tuning against LoRA (rank 16, all
linear layers; the base model with adapters disabled as the reference) and against a
precomputed reference (no reference model in memory), the peak memory of one step with the
selective log-softmax against the old float32 log-softmax and the fused linear head
(``benchmarks/lm_memory.py``, GPT-2 124M, 8 x 512), and a short end-to-end KLDPO training
run through ``rdpo_theory.torch.train.train_preference`` (bf16, grad accumulation, checkpoint).

    python experiments/gpu/run_gpu.py [--out DIR]          # GPU: all sections
    python experiments/gpu/run_gpu.py --sections memory lora   # GPU: only these, in this order
    python experiments/gpu/run_gpu.py --smoke [--out DIR]  # CPU: tiny sizes, validates the script
    python experiments/gpu/run_gpu.py --smoke --sections lora memory   # CPU: ~1 min

Sections (H100 estimates; lora and memory not yet run on a GPU): ``steps`` (~5 min),
``lora`` (~4 min), ``memory`` (~3-4 min: 12 processes), ``e2e`` (~1 min). Outputs under
``--out`` (default ``$OUT``, else ``gpu_out``):
``step_times.csv``, ``lora_times.csv``, ``lm_memory.csv``, ``step_times.json`` (all rows plus
the environment), ``train_metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # lm_bench

import lm_bench as bench  # noqa: E402

SECTIONS = ("steps", "lora", "memory", "e2e")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU sizes (validates the script)")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--steps", type=int, default=None, help="timed steps per method")
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--lora-r", type=int, default=16, help="LoRA rank of the lora section")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: use --smoke for the CPU check", file=sys.stderr)
        return 2
    if args.smoke:
        sizes, steps, warmup = [bench.TINY], args.steps or 3, 1
    else:
        sizes, steps, warmup = [bench.GPT2_SMALL, bench.GPT2_MEDIUM], args.steps or 15, 3
    t_start = time.perf_counter()
    env = dict(
        torch=torch.__version__,
        cuda=torch.version.cuda,
        device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor(),
        smoke=args.smoke,
        sections=args.sections,
    )
    rows, lora_rows, mem_rows = [], [], []
    for section in dict.fromkeys(args.sections):  # in the order given, each once
        if section == "steps":
            rows = steps_section(sizes, steps, warmup, out)
        elif section == "lora":
            lora_rows = lora_section(sizes, steps, warmup, args.lora_r, out)
        elif section == "memory":
            mem_rows = memory_section(args.smoke, out)
        else:
            env.update(e2e_section(sizes[0], args.smoke, out))
    env["total_seconds"] = time.perf_counter() - t_start
    (out / "step_times.json").write_text(
        json.dumps(dict(env=env, rows=rows, lora_rows=lora_rows, memory_rows=mem_rows), indent=2)
    )
    print(json.dumps(env, indent=2))
    return 0


def _append_row(path: Path, row: dict) -> None:
    """One finished row, appended at once: a run stopped at its time limit keeps what it did."""
    with path.open("a") as f:
        f.write(json.dumps(row, default=str) + "\n")


def steps_section(sizes, steps, warmup, out) -> list[dict]:
    """DPO, KLDPO, WDPO (double backward, both variants, finite differences): full steps."""
    rows = []
    plan = [(m, kw, {}) for m, kw in bench.METHODS]
    plan += [("wdpo", {"rho0": 0.01, "variant": "per-pair"}, {})]
    plan += list(bench.FD_ROWS)  # WDPO by finite differences (flash attention stays on)
    for size in sizes:
        for method, kw, opts in plan:
            r = bench.time_method(size, method, kw, steps=steps, warmup=warmup, train_options=opts)
            rows.append(r)
            _append_row(out / "step_times.partial.jsonl", r)
            print(
                f"{size.name:12s} {method:6s} {str(kw):40s} {r['hvp']:22s}"
                f" {r['sec_per_step'] * 1e3:9.1f} ms/step"
                f"  peak {r['peak_bytes'] / 2**30:6.2f} GiB  ({r['precision']}, {r['device']})",
                flush=True,
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    df = pd.DataFrame(rows)
    for col, name in (("sec_per_step", "time_vs_dpo"), ("peak_bytes", "mem_vs_dpo")):
        ref = df[df["method"] == "dpo"].groupby("size")[col].first()
        df[name] = df[col] / df["size"].map(ref)
    df.to_csv(out / "step_times.csv", index=False)
    print(
        df[
            ["size", "method", "params", "hvp", "sec_per_step", "time_vs_dpo", "mem_vs_dpo"]
        ].to_string(index=False, float_format=lambda v: f"{v:.3g}")
    )
    return rows


def lora_section(sizes, steps, warmup, lora_r, out) -> list[dict]:
    """Full fine-tuning vs LoRA, each with a reference model (a copy, or the adapters-disabled
    base) and with precomputed reference log-probs, for DPO, KLDPO and WDPO."""
    rows = []
    for size in sizes:
        for method, kw in bench.METHODS:
            for r, reference in bench.lora_plan(lora_r):
                row = bench.time_method(
                    size, method, kw, steps=steps, warmup=warmup, lora_r=r, reference=reference
                )
                rows.append(row)
                _append_row(out / "lora_times.partial.jsonl", row)
                print(
                    f"{size.name:12s} {method:6s} lora_r={r:<3d} {row['reference']:18s}"
                    f" {row['sec_per_step'] * 1e3:9.1f} ms/step"
                    f"  peak {row['peak_bytes'] / 2**30:6.2f} GiB"
                    f"  trainable {row['trainable_params'] / 1e6:7.2f}M",
                    flush=True,
                )
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    df = bench.vs_full(pd.DataFrame(rows))
    key = ["size", "method"]
    df.to_csv(out / "lora_times.csv", index=False)
    print(
        df[
            [
                *key,
                "lora_r",
                "reference",
                "sec_per_step",
                "peak_bytes",
                "time_vs_full",
                "mem_vs_full",
            ]
        ].to_string(index=False, float_format=lambda v: f"{v:.3g}")
    )
    return rows


def memory_section(smoke, out) -> list[dict]:
    """benchmarks/lm_memory.py: one step's peak memory, old vs selective log-softmax vs the
    fused linear head, GPT-2 124M at 8 x 512 (``--smoke``: one block of width 64 under GPT-2's
    vocabulary, 1 x 32, the same code path in seconds)."""
    import lm_memory

    if smoke:
        size = dict(pairs=1, length=32, layers=1, width=64)
    else:
        size = dict(pairs=8, length=512, layers=12, width=768)
    df = lm_memory.run(list(lm_memory.METHODS), threads=1, **size)
    df.to_csv(out / "lm_memory.csv", index=False)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return df.to_dict("records")


def e2e_section(size, smoke, out) -> dict:
    """The trainer itself on synthetic text pairs (checkpoint + metrics)."""
    from rdpo_theory.studies.emotion import build_tokenizer
    from rdpo_theory.torch.train import TrainConfig, train_preference

    tok = build_tokenizer()
    words = tok.get_vocab()
    vocab = [w for w in words if not w.startswith("<")]
    g = torch.Generator().manual_seed(0)

    def text(n):
        return " ".join(vocab[i] for i in torch.randint(len(vocab), (n,), generator=g).tolist())

    n_rows = 64 if smoke else 512
    rows_txt = [
        {"prompt": text(8), "chosen": " " + text(24), "rejected": " " + text(24)}
        for _ in range(n_rows)
    ]
    model = bench.build(
        bench.ModelSize("e2e", size.n_layer, size.n_embd, size.n_head, len(words), 0, 8, 32)
    )
    cfg = TrainConfig(
        method="kldpo",
        loss_kwargs={"tau": 1.0},
        beta=0.1,
        learning_rate=1e-4,
        batch_size=8,
        grad_accum=2,
        max_steps=4 if smoke else 30,
        warmup_steps=2,
        output_dir=out / "e2e",
        save_every=0,
        progress=False,
        save_final_model=False,
    )
    t0 = time.perf_counter()
    res = train_preference(model, tok, rows_txt, cfg)
    e2e_s = time.perf_counter() - t0
    (out / "train_metrics.jsonl").write_text("\n".join(json.dumps(m) for m in res.metrics))
    return dict(e2e_seconds=e2e_s, e2e_final_loss=res.metrics[-1]["loss"])


if __name__ == "__main__":
    sys.exit(main())
