"""``rdpo audit``: exact robustness profiles of trained models on a preference set."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..figures import register, write_tables


def add_parser(sub) -> None:
    p = sub.add_parser(
        "audit",
        help="how fragile is a trained model? exact worst-case loss and error over KL, "
        "chi-square and CVaR balls",
        description="Audit one or more models on a preference set: the exact worst-case DPO "
        "loss and preference error rate when the pairs are reweighted within a KL, chi-square "
        "or CVaR ball covering every subpopulation of share >= alpha. Input: saved causal LMs "
        "(--model PATH ... [--ref PATH] --dataset pairs.jsonl) or a table of log-probs "
        "(--logps FILE with chosen_logps, rejected_logps, ref_chosen_logps, "
        "ref_rejected_logps and optional model, weight, group). Writes OUT/audit.csv, "
        "OUT/audit.png, OUT/top_pairs.jsonl (and OUT/audit_logps.csv, OUT/audit_groups.csv).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", nargs="+", help="saved causal LM folder(s), audited side by side")
    src.add_argument("--logps", type=Path, help="CSV or JSON-lines table of per-pair log-probs")
    p.add_argument("--name", nargs="+", help="labels of the --model paths (default: folder names)")
    p.add_argument(
        "--ref", help="reference model folder (default: none, reference log-probs are 0)"
    )
    p.add_argument(
        "--dataset",
        type=Path,
        help="JSON-lines pairs {prompt, chosen, rejected[, weight, group]} (needed with "
        "--model; with --logps it only adds prompts to the top pairs)",
    )
    p.add_argument("--beta", type=float, default=0.1, help="DPO temperature (margin scale)")
    p.add_argument(
        "--divergences",
        nargs="+",
        default=["kl", "chi2", "cvar"],
        choices=["kl", "chi2", "cvar"],
        help="balls to audit over: KL, chi-square, CVaR (default all three)",
    )
    p.add_argument(
        "--alphas",
        nargs="+",
        type=float,
        help="subpopulation shares to cover (default 1 0.7 0.5 0.3 0.2 0.1 0.05 0.02 0.01)",
    )
    p.add_argument(
        "--rho0",
        nargs="+",
        type=float,
        default=[],
        help="--model: radii of the first-order Wasserstein estimate "
        "mean l + rho0 sqrt(mean ||grad_e l||^2) on input embeddings (not exact)",
    )
    p.add_argument("--top-k", type=int, default=10, help="top upweighted pairs per model")
    p.add_argument("--top-alpha", type=float, default=0.1, help="share whose ball ranks them")
    p.add_argument(
        "--batch-size", type=int, default=16, help="--model: pairs scored per forward pass (16)"
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=512,
        help="--model: longest prompt + response in tokens; longer pairs are truncated (512)",
    )
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--out", type=Path, default=Path("audit_out"), help="output folder")
    p.set_defaults(func=run)


def read_logps(path: Path):
    """A log-prob table from CSV (``.csv``) or JSON lines (anything else), read and checked by
    :func:`rdpo_theory.io.read_table` (errors name the file line and the column): the four
    log-prob columns, optional ``model``, ``pair``, ``weight``, ``group`` and
    ``grad_sq_norm``; nothing else."""
    import pandas as pd

    from ..audit import LOGP_COLUMNS
    from ..io import read_table

    columns = dict.fromkeys(LOGP_COLUMNS, "number")
    columns.update(
        model="label", pair="index", weight="nonnegative", group="label", grad_sq_norm="number"
    )
    table = read_table(path, columns, required=LOGP_COLUMNS, flag="--logps")
    del table["_line"]
    return pd.DataFrame(table)


def run(args) -> int:
    from ..plots.audit import plot_audit
    from ..studies import audit as S
    from .llm import load_jsonl

    rows = load_jsonl(args.dataset) if args.dataset is not None else None
    out = Path(args.out)
    if args.model:
        if rows is None:
            raise InputError("--model needs --dataset FILE (JSON lines: prompt, chosen, rejected)")
        names = args.name or [Path(m).name or str(m) for m in args.model]
        if len(names) != len(args.model):
            raise InputError(f"--name has {len(names)} labels for {len(args.model)} --model paths")
        if len(set(names)) != len(names):
            raise InputError(f"--name labels must be distinct, got {names} (pass --name)")
        logps = S.score_models(
            dict(zip(names, args.model)),
            rows,
            ref=args.ref,
            beta=args.beta if args.rho0 else None,
            batch_size=args.batch_size,
            max_length=args.max_length,
            device=args.device,
        )
    else:
        if args.rho0:
            raise InputError("--rho0 needs --model (the embedding gradients come from the model)")
        logps = S.check_logps(read_logps(args.logps), what=f"--logps {args.logps}")
        if rows is not None and logps["pair"].max() >= len(rows):
            raise InputError(
                f"--logps has pair {int(logps['pair'].max())} but --dataset has {len(rows)} rows"
            )
    kw = {"beta": args.beta, "divergences": args.divergences}
    table = S.audit_table(logps, alphas=args.alphas or S.ALPHAS, rho0s=tuple(args.rho0), **kw)
    top = S.audit_top_pairs(logps, alpha=args.top_alpha, k=args.top_k, rows=rows, **kw)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "audit.csv", out / "top_pairs.jsonl"]
    table.to_csv(paths[0], index=False)
    with open(paths[1], "w") as f:
        for rec in top.to_dict(orient="records"):
            f.write(json.dumps(rec, default=float) + "\n")
    if args.model:
        paths.append(out / "audit_logps.csv")
        logps.to_csv(paths[-1], index=False)
    if "group" in logps.columns:
        paths.append(out / "audit_groups.csv")
        S.audit_groups(logps, beta=args.beta).to_csv(paths[-1], index=False)
    paths.append(plot_audit(paths[0], out / "audit.png"))
    _print_summary(table)
    for p in paths:
        print(p)
    return 0


def _print_summary(table) -> None:
    sub = table[table["divergence"] == "kl"]
    if sub.empty:
        sub = table[table["divergence"] != "wasserstein-first-order"]
    piv = sub.pivot_table(index="alpha", columns="model", values="worst_loss", sort=False)
    print(f"worst-case DPO loss ({sub['divergence'].iloc[0]} ball covering share alpha):")
    print(piv.sort_index(ascending=False).round(4).to_string())


@register(
    "audit-tiny",
    extra="llm",
    description="robustness audit of the llm-tiny policies (DPO, KLDPO, WDPO): exact "
    "worst-case loss and error vs covered subpopulation share",
)
def make_tiny(out, *, quick: bool = True, jobs: int = -1) -> list[Path]:
    """Train the tiny emotion policies of the convex mixture (seed 0; ``rdpo llm --tiny``
    sizes, or its quick sizes), audit them on their training pairs against the SFT reference
    (:func:`rdpo_theory.studies.audit.audit_table`, first-order Wasserstein rows at
    ``RHO0S``), write ``audit_tiny.csv`` and draw ``audit_tiny.png`` from it. The models live in
    a temporary folder (tens of MB) and are not kept."""
    import tempfile

    from ..plots.audit import plot_audit
    from ..studies import audit as S
    from ..studies.emotion import EmotionConfig, run_emotion
    from .llm import load_jsonl

    cfg = (EmotionConfig.quick if quick else EmotionConfig)(mixtures=("convex",))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run_emotion(cfg, seeds=(0,), jobs=jobs, save_models=root)
        rows = load_jsonl(root / "seed0" / "convex" / "pairs.jsonl")
        models = S.tiny_models(root)
        logps = S.score_models(
            models, rows, ref=root / "seed0" / "sft", beta=cfg.beta, device="cpu"
        )
    table = S.audit_table(logps, beta=cfg.beta, rho0s=S.RHO0S)
    paths = write_tables({"audit_tiny": table}, out)
    return paths + [plot_audit(paths[0], Path(out) / "audit_tiny.png")]
