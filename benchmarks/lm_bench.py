"""Benchmark helpers (not a script): step-time and peak-memory measurement of DPO, KLDPO and
WDPO training steps on GPT-2-style models built from a config (no downloads). Used by
``benchmarks/torch_losses.py``, ``benchmarks/lm_memory.py``,
``benchmarks/trainer_normalizer_step.py`` and ``experiments/gpu/run_gpu.py``
(``import lm_bench`` with ``benchmarks/`` on ``sys.path``, as it is when a benchmark runs as a
script); every method runs the trainer's own step
(:func:`rdpo_theory.torch.train.loss_and_backward`, AdamW)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from rdpo_theory.torch.train import TrainConfig, loss_and_backward, make_accelerator

METHODS = (
    ("dpo", {}),
    ("kldpo", {"tau": 1.0}),
    ("wdpo", {"rho0": 0.01}),
)

#: WDPO by finite-difference Hessian-vector products (``TrainConfig(wdpo_hvp=...)``), as
#: ``(method, loss_kwargs, trainer options)``: float32 differenced passes (default, eps 1e-3) and
#: differenced passes under the run's mixed precision (eps 1e-2, the bf16 setting).
FD_ROWS = (
    ("wdpo", {"rho0": 0.01}, {"wdpo_hvp": "finite-difference"}),
    (
        "wdpo",
        {"rho0": 0.01},
        {"wdpo_hvp": "finite-difference", "wdpo_fd_precision": "autocast", "wdpo_fd_eps": 1e-2},
    ),
)


#: Where the reference log-probs come from in :func:`time_method`.
REFERENCES = ("copy", "precomputed")


@dataclass(frozen=True)
class ModelSize:
    """A GPT-2 configuration and a batch shape (pairs; prompt and max completion tokens)."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    vocab: int
    pairs: int
    prompt_len: int
    completion_len: int


TINY = ModelSize("tiny-cpu", 2, 64, 4, 80, 32, 4, 13)
SMALL_CPU = ModelSize("gpt2-4L-256-cpu", 4, 256, 4, 4096, 8, 32, 64)
GPT2_SMALL = ModelSize("gpt2-124M", 12, 768, 12, 50257, 8, 128, 384)
GPT2_MEDIUM = ModelSize("gpt2-355M", 24, 1024, 16, 50257, 8, 128, 384)
#: GPT-2 124M and 355M at a batch a 2-core CPU steps in seconds (2 pairs x 256 tokens).
GPT2_SMALL_CPU = ModelSize("gpt2-124M-cpu", 12, 768, 12, 50257, 2, 64, 192)
GPT2_MEDIUM_CPU = ModelSize("gpt2-355M-cpu", 24, 1024, 16, 50257, 2, 64, 192)
#: Every size above, by name.
SIZES = {
    s.name: s for s in (TINY, SMALL_CPU, GPT2_SMALL, GPT2_MEDIUM, GPT2_SMALL_CPU, GPT2_MEDIUM_CPU)
}


def lora_plan(lora_r: int) -> tuple[tuple[int, str], ...]:
    """The ``(lora_r, reference)`` grid that compares full fine-tuning with LoRA of rank
    ``lora_r``, each with a live reference (a copy; with LoRA the adapters-disabled base) and
    with precomputed reference log-probs (see :func:`time_method`)."""
    return ((0, "copy"), (0, "precomputed"), (lora_r, "copy"), (lora_r, "precomputed"))


def vs_full(df):
    """``df`` (rows of :func:`time_method` over :func:`lora_plan`) with ``time_vs_full`` and
    ``mem_vs_full``: ``sec_per_step`` and ``peak_bytes`` over those of full fine-tuning with a
    reference copy (``lora_r == 0``, ``reference == "copy"``) of the same size and method."""
    key = ["size", "method", "hvp"]
    full = df[(df["lora_r"] == 0) & (df["reference"] == "copy")].set_index(key)
    idx = df.set_index(key).index
    out = df.copy()
    for col, name in (("sec_per_step", "time_vs_full"), ("peak_bytes", "mem_vs_full")):
        out[name] = df[col].to_numpy() / idx.map(full[col]).to_numpy()
    return out


#: The ranges of ``time_vs_full`` that the one-GPU recipe quotes, as
#: ``(quantity, methods, lora_r > 0, reference)``: LoRA with precomputed log-probs (every
#: method), full weights with precomputed log-probs (DPO and KLDPO) and LoRA with the
#: adapters-disabled base as the reference (every method).
LORA_RANGES = (
    ("lora_precomputed", None, True, "precomputed"),
    ("full_precomputed_dpo_kldpo", ("dpo", "kldpo"), False, "precomputed"),
    ("lora_adapters_disabled", None, True, "adapters-disabled"),
)


def lora_summary(df):
    """The ranges of ``time_vs_full`` over the rows of a :func:`vs_full` table (one per
    :data:`LORA_RANGES` quantity), rows with an ``error`` left out.

    Returns a table with columns ``quantity``, ``rows`` (how many rows the range covers),
    ``lo`` and ``hi`` (the smallest and largest ``time_vs_full``: step time over that of full
    fine-tuning with a reference copy of the same size and method, dimensionless)."""
    import pandas as pd

    ok = df[df["error"].isna()] if "error" in df else df
    out = []
    for quantity, methods, lora, reference in LORA_RANGES:
        sel = ok[((ok["lora_r"] > 0) == lora) & (ok["reference"] == reference)]
        if methods is not None:
            sel = sel[sel["method"].isin(methods)]
        r = sel["time_vs_full"]
        out.append(dict(quantity=quantity, rows=len(r), lo=r.min(), hi=r.max()))
    return pd.DataFrame(out)


def build(size: ModelSize, seed: int = 0):
    """A seeded random GPT-2 of ``size`` (dropout off)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    conf = GPT2Config(
        vocab_size=size.vocab,
        n_positions=size.prompt_len + size.completion_len + 8,
        n_embd=size.n_embd,
        n_layer=size.n_layer,
        n_head=size.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=size.vocab - 1,
        eos_token_id=size.vocab - 1,
    )
    return GPT2LMHeadModel(conf)


def synthetic_batch(size: ModelSize, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token pairs (2B rows, chosen first) with random completion lengths in
    [completion_len / 2, completion_len], right-padded, prompt-masked."""
    g = np.random.default_rng(seed)
    B, P, C = size.pairs, size.prompt_len, size.completion_len
    T = P + C
    ids = torch.tensor(g.integers(3, size.vocab, size=(2 * B, T)), dtype=torch.long)
    lens = g.integers(max(1, C // 2), C + 1, size=2 * B)
    att = torch.zeros(2 * B, T, dtype=torch.long)
    cm = torch.zeros_like(att)
    for r, n in enumerate(lens):
        att[r, : P + n] = 1
        cm[r, P : P + n] = 1
    ids = ids * att  # pad id 0
    return {"input_ids": ids, "attention_mask": att, "completion_mask": cm}


def rss_kib() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in KiB (Linux /proc)."""
    cur = peak = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return cur, peak


def time_method(
    size: ModelSize,
    method: str,
    loss_kwargs: dict,
    *,
    steps: int = 10,
    warmup: int = 2,
    mixed_precision: str = "auto",
    seed: int = 0,
    train_options: dict | None = None,
    lora_r: int = 0,
    reference: str = "copy",
) -> dict:
    """Seconds per optimizer step (minimum and median over ``steps``) and peak memory of one
    method (fresh model).

    Peak memory: on CUDA ``max_memory_allocated`` (bytes allocated by tensors) over the timed
    steps; on CPU the growth of the process's peak RSS over the steps (run each method in its
    own process for a clean figure, as the benchmark does).

    ``train_options``: extra :class:`~rdpo_theory.torch.train.TrainConfig` fields, e.g.
    ``{"wdpo_hvp": "finite-difference"}``; recorded in the row's ``hvp`` column.

    ``lora_r > 0``: LoRA adapters of that rank on all linear layers (``peft``); only they train.
    ``reference``: ``copy`` (a second model; with LoRA, ``adapters-disabled`` is used instead:
    the base model is the reference) or ``precomputed`` (the batch's reference log-probs are
    computed once before timing and no reference model is kept).
    """
    opts = dict(train_options or {})
    cfg = TrainConfig(
        method=method,
        beta=0.1,
        loss_kwargs=dict(loss_kwargs),
        learning_rate=1e-5,
        batch_size=size.pairs,
        max_steps=1,
        mixed_precision=mixed_precision,
        progress=False,
        **opts,
    )
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    acc = make_accelerator(cfg)
    model = build(size, seed)
    batch = {k: v.to(acc.device) for k, v in synthetic_batch(size, seed).items()}
    ref = None
    if reference == "precomputed":
        from .reference import BATCH_REF_KEYS, reference_logps

        model.to(acc.device).eval()
        batch.update(zip(BATCH_REF_KEYS, reference_logps(model, model, batch, accelerator=acc)))
        model.train()
    elif lora_r == 0:
        ref = build(size, seed).eval().requires_grad_(False).to(acc.device)
    if lora_r > 0:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear", fan_in_fan_out=True
        )
        model = get_peft_model(model, lora)
        if reference == "copy":
            reference = "adapters-disabled"
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.learning_rate)
    model, opt = acc.prepare(model, opt)
    cuda = acc.device.type == "cuda"

    def step():
        out = loss_and_backward(cfg, model, ref, batch, accelerator=acc)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return out

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_kib()[0] * 1024
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else rss_kib()[1] * 1024
    return dict(
        size=size.name,
        device=str(acc.device),
        precision=acc.mixed_precision,
        method=method,
        params=str(loss_kwargs),
        hvp=hvp_label(cfg),
        lora_r=int(lora_r),
        reference=reference,
        trainable_params=int(sum(p.numel() for p in trainable)),
        pairs=size.pairs,
        tokens_per_row=size.prompt_len + size.completion_len,
        sec_per_step=float(np.min(times)),  # least disturbed by other load on the machine
        sec_median=float(np.median(times)),
        peak_bytes=int(peak),
        peak_over_start_bytes=int(max(0, peak - base)),
        final_loss=float(out.loss.detach()),
    )


def hvp_label(cfg: TrainConfig) -> str:
    """How WDPO differentiates its penalty: ``double-backward``, or
    ``fd-float32(eps)`` / ``fd-autocast(eps)`` for finite differences; ``-`` for other methods."""
    if cfg.method != "wdpo":
        return "-"
    if cfg.wdpo_hvp == "double-backward":
        return "double-backward"
    return f"fd-{cfg.wdpo_fd_precision}({cfg.wdpo_fd_eps:g})"
