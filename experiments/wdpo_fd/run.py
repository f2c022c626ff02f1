"""Accuracy of WDPO's finite-difference penalty gradient (``TrainConfig(wdpo_hvp=
"finite-difference")``) on the 4-layer GPT-2 of ``benchmarks/lm_bench.py`` (``SMALL_CPU``: 4
layers, width 256, 8 pairs x 96 tokens, random weights, synthetic pairs), against the float32
exact (double-backward) gradient (docs/language-models.md, "WDPO without double backward";
the penalty: docs/theory.md#algorithm-1-wdpo).

For each seed (policy weights, reference weights and batch drawn from
``numpy.random.SeedSequence(SEED)``) the flat parameter gradient of one micro-batch is taken
with the trainer's own step (:func:`rdpo_theory.torch.steps.loss_and_backward`) for DPO and for
WDPO (``rho0 = 0.01``, ``sqrt-mean``), in float32 and under bf16 autocast (an ``accelerate``
bf16 accelerator on the CPU). The WDPO penalty's parameter gradient of a configuration is its
WDPO gradient minus the DPO gradient at the same model precision (the finite-difference path's
first pass is that DPO gradient bit for bit, checked under bf16); ``rel_error`` is its distance
to the float32 exact penalty gradient over the latter's norm, ``rel_error_total`` the same for
the whole WDPO gradient (``penalty_share``: the exact penalty gradient's norm over the DPO
gradient's; row ``bf16 dpo``: the bf16 DPO gradient against the float32 one). Writes
``fd_accuracy.csv`` (one row per configuration and seed) and, with ``--timing``,
``fd_step_time.csv``: ``benchmarks/torch_losses.py``'s step time and peak RSS of DPO, KLDPO and
WDPO (double backward; finite differences, float32 and autocast passes) on the same model, each
row in its own process on one thread, the minimum over ``--repeats`` runs of the per-run minimum
over steps (peak RSS: the largest over the runs), with ratios to DPO (``time_vs_dpo``,
``peak_vs_dpo``, ``growth_vs_dpo``). The committed tables are the defaults' output:

    python experiments/wdpo_fd/run.py                          # fd_accuracy.csv, ~1 min
    python experiments/wdpo_fd/run.py --no-accuracy --timing   # fd_step_time.csv, ~4 min
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))  # lm_bench, torch_losses
sys.path.insert(0, str(ROOT))  # run from a checkout

import lm_bench as bench  # noqa: E402

from rdpo_theory.figures import write_tables  # noqa: E402
from rdpo_theory.torch.train import TrainConfig, loss_and_backward, make_accelerator  # noqa: E402

SEED = 2026
SIZE = bench.SMALL_CPU
WDPO = {"rho0": 0.01}
BETA = 0.1
#: (name, model precision, wdpo_hvp, wdpo_fd_precision, wdpo_fd_eps); "float32" models run
#: without an accelerator, "bf16-autocast" ones under a bf16 accelerator.
CONFIGS = (
    ("float32 fd eps=1e-3", "float32", "finite-difference", "float32", 1e-3),
    ("bf16 double-backward", "bf16-autocast", "double-backward", None, None),
    ("bf16 fd float32 eps=1e-3", "bf16-autocast", "finite-difference", "float32", 1e-3),
    ("bf16 fd autocast eps=1e-3", "bf16-autocast", "finite-difference", "autocast", 1e-3),
    ("bf16 fd autocast eps=1e-2", "bf16-autocast", "finite-difference", "autocast", 1e-2),
    ("bf16 fd autocast eps=3e-2", "bf16-autocast", "finite-difference", "autocast", 3e-2),
)


def flat_grad(cfg: TrainConfig, model, ref, batch, acc=None):
    """The flat parameter gradient of one micro-batch (``loss_and_backward``) and its output."""
    model.zero_grad(set_to_none=True)
    out = loss_and_backward(cfg, model, ref, batch, accelerator=acc)
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()
    model.zero_grad(set_to_none=True)
    return g, out


def _config(method, hvp=None, fd_precision=None, eps=None, mixed="no"):
    kw = {} if method == "dpo" else dict(WDPO)
    opts = {}
    if hvp == "finite-difference":
        opts = dict(wdpo_hvp=hvp, wdpo_fd_precision=fd_precision, wdpo_fd_eps=eps)
    return TrainConfig(method=method, beta=BETA, loss_kwargs=kw, mixed_precision=mixed, **opts)


def accuracy(seeds: int) -> pd.DataFrame:
    """One row per (seed, configuration) of :data:`CONFIGS`."""
    acc = make_accelerator(_config("dpo", mixed="bf16"))  # one accelerator: bf16 autocast
    rows = []
    children = np.random.SeedSequence(SEED).spawn(seeds)
    for s, child in enumerate(tqdm(children, desc="seeds", unit="seed")):
        pol, refs, data = (int(x) for x in child.generate_state(3) % 2**31)
        batch = bench.synthetic_batch(SIZE, data)
        ref = bench.build(SIZE, refs).eval().requires_grad_(False)
        plain = bench.build(SIZE, pol)  # float32, no accelerator
        mixed = acc.prepare(bench.build(SIZE, pol))  # forward under bf16 autocast
        dpo32, _ = flat_grad(_config("dpo"), plain, ref, batch)
        exact, out = flat_grad(_config("wdpo"), plain, ref, batch)
        pen = exact - dpo32
        dpo16, _ = flat_grad(_config("dpo", mixed="bf16"), mixed, ref, batch, acc)
        base = dict(
            seed=s,
            penalty_norm=float(pen.norm()),
            dpo_grad_norm=float(dpo32.norm()),
            penalty_share=float(pen.norm() / dpo32.norm()),
            penalty=float(out.stats["penalty"]),
        )
        for name, prec, hvp, fdp, eps in tqdm(CONFIGS, desc="configs", leave=False):
            if prec == "float32":
                g, out = flat_grad(_config("wdpo", hvp, fdp, eps), plain, ref, batch)
                dpo = dpo32
            else:
                cfg = _config("wdpo", hvp, fdp, eps, mixed="bf16")
                g, out = flat_grad(cfg, mixed, ref, batch, acc)
                dpo = dpo16
            rows.append(
                dict(
                    config=name,
                    model_precision=prec,
                    hvp=hvp,
                    fd_precision=fdp or "",
                    eps=eps if eps is not None else np.nan,
                    **base,
                    rel_error=float((g - dpo - pen).norm() / pen.norm()),
                    rel_error_total=float((g - exact).norm() / exact.norm()),
                    fd_step=float(out.stats.get("fd_step", np.nan)),
                )
            )
        # the bf16 DPO gradient's own error: the floor under every bf16 row's total error
        rows.append(
            dict(
                config="bf16 dpo",
                model_precision="bf16-autocast",
                hvp="",
                fd_precision="",
                eps=np.nan,
                **base,
                rel_error=np.nan,
                rel_error_total=float((dpo16 - dpo32).norm() / dpo32.norm()),
                fd_step=np.nan,
            )
        )
    return pd.DataFrame(rows)


def step_time(steps: int, repeats: int) -> pd.DataFrame:
    """``torch_losses.run`` on :data:`SIZE`, ``repeats`` times; per row the minimum seconds per
    step and the largest peak RSS over the repeats, with ratios to DPO."""
    import torch_losses

    runs = [torch_losses.run([SIZE], steps, threads=1) for _ in range(repeats)]
    df = pd.concat(runs, ignore_index=True)
    key = ["size", "device", "precision", "method", "params", "hvp", "pairs", "tokens_per_row"]
    agg = {"sec_per_step": "min", "sec_median": "median", "peak_bytes": "max"}
    agg["peak_over_start_bytes"] = "max"
    out = df.groupby(key, sort=False, as_index=False).agg(agg)
    out["repeats"] = repeats
    out["steps"] = steps
    dpo = out[out["method"] == "dpo"].iloc[0]
    out["peak_MiB"] = out["peak_bytes"] / 2**20
    out["time_vs_dpo"] = out["sec_per_step"] / dpo["sec_per_step"]
    out["peak_vs_dpo"] = out["peak_bytes"] / dpo["peak_bytes"]
    out["growth_vs_dpo"] = out["peak_over_start_bytes"] / dpo["peak_over_start_bytes"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--timing", action="store_true", help="also write fd_step_time.csv")
    ap.add_argument("--no-accuracy", action="store_true", help="skip fd_accuracy.csv")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = ap.parse_args()
    torch.set_num_threads(1)
    tables = {}
    if not args.no_accuracy:
        tables["fd_accuracy"] = accuracy(args.seeds)
        summary = tables["fd_accuracy"].groupby("config", sort=False)
        print(summary[["rel_error", "rel_error_total"]].agg(["mean", "max"]).to_string())
    if args.timing:
        tables["fd_step_time"] = step_time(args.steps, args.repeats)
        cols = ["method", "hvp", "sec_per_step", "time_vs_dpo", "peak_MiB", "peak_vs_dpo"]
        print(tables["fd_step_time"][cols].to_string(index=False))
    for p in write_tables(tables, args.out):
        print("wrote", p)


if __name__ == "__main__":
    main()
