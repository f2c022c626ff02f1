"""One prepared single-GPU run: step times and peak memory of DPO, KLDPO and WDPO on GPT-2
sized models built from a config (no downloads) -- WDPO both by double backward (math attention)
and by finite-difference Hessian-vector products (``bench.FD_ROWS``: float32 differenced passes,
and bf16 ones; flash attention stays on) -- then a short end-to-end KLDPO training run
through ``rdpo_theory.torch.train.train_preference`` (bf16, grad accumulation, checkpoint).

    python experiments/gpu/run_gpu.py [--out DIR]          # GPU: fits in ~8 minutes on an H100
    python experiments/gpu/run_gpu.py --smoke [--out DIR]  # CPU: seconds, validates the script

Outputs under ``--out`` (default ``$OUT``, else ``gpu_out``): ``step_times.csv``,
``step_times.json`` (the same rows plus the environment), ``train_metrics.jsonl``.
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

from rdpo_theory.torch import bench  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU sizes (validates the script)")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--steps", type=int, default=None, help="timed steps per method")
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
    rows = []
    plan = [(m, kw, {}) for m, kw in bench.METHODS]
    plan += [("wdpo", {"rho0": 0.01, "variant": "per-pair"}, {})]
    plan += list(bench.FD_ROWS)  # WDPO by finite differences (flash attention stays on)
    for size in sizes:
        for method, kw, opts in plan:
            r = bench.time_method(size, method, kw, steps=steps, warmup=warmup, train_options=opts)
            rows.append(r)
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

    # end-to-end: the trainer itself on synthetic text pairs (checkpoint + metrics)
    from rdpo_theory.torch.emotion import build_tokenizer
    from rdpo_theory.torch.train import TrainConfig, train_preference

    size = sizes[0]
    tok = build_tokenizer()
    words = tok.get_vocab()
    vocab = [w for w in words if not w.startswith("<")]
    g = torch.Generator().manual_seed(0)

    def text(n):
        return " ".join(vocab[i] for i in torch.randint(len(vocab), (n,), generator=g).tolist())

    n_rows = 64 if args.smoke else 512
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
        max_steps=4 if args.smoke else 30,
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
    env = dict(
        torch=torch.__version__,
        cuda=torch.version.cuda,
        device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor(),
        smoke=args.smoke,
        e2e_seconds=e2e_s,
        e2e_final_loss=res.metrics[-1]["loss"],
        total_seconds=time.perf_counter() - t_start,
    )
    (out / "step_times.json").write_text(json.dumps(dict(env=env, rows=rows), indent=2))
    print(json.dumps(env, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
