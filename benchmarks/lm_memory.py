"""Peak memory of one DPO / KLDPO / WDPO training step (policy + reference forward, loss,
backward; no optimizer) with the selective log-softmax against the previous sequence log-probs
(a float32 copy of the logits and a full-vocabulary logsumexp, kept below as the baseline) and
against the fused linear head (``TrainConfig(fused_head=True)``: no logits tensor at all).

GPT-2 124M configuration with random weights (no downloads), 8 pairs x 512 tokens (prompt 128,
completions 192-384 tokens, so rows are padded to 512). CPU: the growth of the process's peak
RSS over the step, each (method, implementation) in its own process, float32. CUDA:
``torch.cuda.max_memory_allocated`` over the step minus the memory allocated before it, bf16
autocast. The logits of one step are 2B x T x V = 16 x 512 x 50257 values: 1.53 GiB in float32,
0.77 GiB in bf16 (the policy forward; the reference forward runs without a graph).

    python benchmarks/lm_memory.py                     # 8 x 512 (minutes per row on 2 cores)
    python benchmarks/lm_memory.py --pairs 2           # 2 x 512, the quick CPU table
    python benchmarks/lm_memory.py --methods dpo wdpo --out lm_memory.csv
    python benchmarks/lm_memory.py --pairs 8 --layers 2 --width 128 --methods wdpo \
        --logprobs fused                               # one logits-bound row
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

#: GPT-2's vocabulary, the size every row of this benchmark uses.
VOCAB = 50257

METHODS = {
    "dpo": ({}, {}),
    "kldpo": ({"tau": 1.0}, {}),
    "wdpo": ({"rho0": 0.01}, {}),
    "wdpo-fd": ({"rho0": 0.01}, {"wdpo_hvp": "finite-difference"}),
}


def old_sequence_logps(
    model, input_ids, attention_mask, completion_mask, *, inputs_embeds=None, fused_head=False
):
    """The sequence log-probs before the selective log-softmax (the baseline of this script):
    the sliced logits cast to float32, then gather minus a full-vocabulary logsumexp."""
    if fused_head:
        raise ValueError("the old log-softmax baseline has no fused head")
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    kwargs = dict(attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    if inputs_embeds is None:
        out = model(input_ids=input_ids, **kwargs)
    else:
        out = model(inputs_embeds=inputs_embeds, **kwargs)
    logits = out.logits[:, :-1]
    acc = torch.promote_types(logits.dtype, torch.float32)
    logits = logits.to(acc)
    target = input_ids[:, 1:].unsqueeze(-1)
    tok = logits.gather(-1, target).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    mask = (completion_mask[:, 1:] * attention_mask[:, 1:]).to(acc)
    return (tok * mask).sum(-1)


def _child(impl, method, pairs, length, threads, q, layers=12, width=768):
    try:
        q.put(_measure(impl, method, pairs, length, threads, layers, width))
    except torch.OutOfMemoryError as e:  # CUDA: a row that does not fit is a result
        q.put(dict(method=method, logprobs=impl, pairs=pairs, error=f"out of memory: {e}"[:200]))


def _measure(impl, method, pairs, length, threads, layers, width) -> dict:
    import lm_bench as bench

    from rdpo_theory.torch import lm, train

    if impl == "old":  # the trainer reaches sequence_logps through lm and train
        lm.sequence_logps = old_sequence_logps
        train.sequence_logps = old_sequence_logps
    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(threads)
    kw, opts = METHODS[method]
    prompt = length // 4
    name = "gpt2-124M" if (layers, width) == (12, 768) else f"gpt2-{layers}L-{width}"
    size = bench.ModelSize(
        name, layers, width, max(1, width // 64), VOCAB, pairs, prompt, length - prompt
    )
    cfg = train.TrainConfig(
        method=method.split("-")[0],
        beta=0.1,
        loss_kwargs=dict(kw),
        batch_size=pairs,
        max_steps=1,
        progress=False,
        fused_head=impl == "fused",
        **opts,
    )
    acc = train.make_accelerator(cfg)
    model, ref = bench.build(size, 0), bench.build(size, 0)
    ref.eval().requires_grad_(False).to(acc.device)
    model = acc.prepare(model)
    batch = {k: v.to(acc.device) for k, v in bench.synthetic_batch(size, 0).items()}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = bench.rss_kib()[0] * 1024
    t0 = time.perf_counter()
    out = train.loss_and_backward(cfg, model, ref, batch, accelerator=acc)
    if cuda:
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else bench.rss_kib()[1] * 1024
    return dict(
        model=name,
        method=method,
        logprobs=impl,
        pairs=pairs,
        tokens=int(batch["input_ids"].shape[1]),
        device=str(acc.device),
        precision=acc.mixed_precision,
        seconds=sec,
        peak_over_start_GiB=max(0, peak - base) / 2**30,
        loss=float(out.loss.detach()),
    )


#: "old": the float32 log-softmax of the logits; "selective": the selective log-softmax of the
#: logits (the default path); "fused": the fused linear head, no logits tensor.
IMPLS = ("old", "selective", "fused")


def _in_process(ctx, target, args, tail) -> dict:
    """Run ``target(*args, q, *tail)`` in a fresh process and return the dict it puts on q.
    A process killed by a signal (the CPU out-of-memory killer) gives an ``error`` row; any
    other death raises."""
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q, *tail))
    p.start()
    while True:
        try:
            r = q.get(timeout=2)
            break
        except queue.Empty:
            if not p.is_alive():
                p.join()
                if p.exitcode is not None and p.exitcode < 0:
                    r = dict(method=args[1], logprobs=args[0], pairs=args[2])
                    r["error"] = f"killed by signal {-p.exitcode}"
                    break
                raise RuntimeError(
                    f"benchmark row {args[:2]} failed (exit code {p.exitcode})"
                ) from None
    p.join()
    return r


def logits_share(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``logits_GiB``, the size of one logits tensor of the step's policy forward
    (``2 pairs x tokens x VOCAB`` values, 4 bytes each in float32, 2 under bf16 autocast; GiB),
    and ``growth_vs_logits = peak_over_start_GiB / logits_GiB``: the step's whole memory growth
    counted in logits tensors (rows without a measurement are left empty)."""
    if "tokens" not in df:
        return df
    itemsize = df["precision"].map(lambda p: 4 if p == "no" else 2)
    out = df.copy()
    out["logits_GiB"] = 2 * df["pairs"] * df["tokens"] * VOCAB * itemsize / 2**30
    out["growth_vs_logits"] = df["peak_over_start_GiB"] / out["logits_GiB"]
    return out


def run(methods, pairs, length, threads, impls=IMPLS, layers=12, width=768) -> pd.DataFrame:
    ctx = mp.get_context("spawn")
    rows = []
    for method in methods:
        for impl in impls:
            args = (impl, method, pairs, length, threads)
            r = _in_process(ctx, _child, args, (layers, width))
            rows.append(r)
            if "error" in r:
                print(f"{method:8s} {impl:10s} {pairs}x{length}  {r['error']}", flush=True)
                continue
            print(
                f"{method:8s} {impl:10s} {r['pairs']}x{r['tokens']}  {r['seconds']:7.1f} s"
                f"  peak +{r['peak_over_start_GiB']:.2f} GiB  loss {r['loss']:.6f}",
                flush=True,
            )
    df = logits_share(pd.DataFrame(rows))
    if "old" in impls and "peak_over_start_GiB" in df:
        old = df[df["logprobs"] == "old"].set_index("method")["peak_over_start_GiB"]
        df["peak_vs_old"] = df["peak_over_start_GiB"] / df["method"].map(old)
    return df


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--length", type=int, default=512, help="tokens per row")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads per run")
    ap.add_argument("--logprobs", nargs="+", default=list(IMPLS), choices=IMPLS)
    ap.add_argument(
        "--layers",
        type=int,
        default=12,
        help="GPT-2 blocks (12: GPT-2 124M; 2 with --width "
        "128 isolates the logits on a CPU: the GPT-2 vocabulary on a thin body)",
    )
    ap.add_argument("--width", type=int, default=768, help="hidden size (heads = width / 64)")
    ap.add_argument("--out", type=Path, default=None, help="CSV path")
    args = ap.parse_args()
    df = run(
        args.methods, args.pairs, args.length, args.threads, args.logprobs, args.layers, args.width
    )
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.out is not None:
        df.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
