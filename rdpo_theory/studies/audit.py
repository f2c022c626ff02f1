"""The audit study: robustness profiles of trained language models (docs/theory.md#kl-dual).

Input: a tidy table of per-pair log-probabilities, one row per (model, pair), with the four
columns of :data:`rdpo_theory.torch.score.LOGP_COLUMNS`, ``model``, ``pair`` (the pair's
position in the dataset), optional ``weight`` (raw, >= 0), ``group`` and ``grad_sq_norm``.
:func:`score_models` builds it from saved models; ``rdpo audit --logps FILE`` reads it.

Output tables (the command writes them; the figure is drawn from :func:`audit_table` alone):

* :func:`audit_table`: one row per (model, divergence, alpha): the exact worst-case loss and
  preference error rate over the ball that covers every subpopulation of share alpha
  (``audit.radius_for_subpopulation``), with the effective sample size and largest weight;
  and, when ``grad_sq_norm`` is present, WDPO's first-order Wasserstein estimate
  ``sum_i p_i l_i + rho0 sqrt(sum_i p_i ||grad_e l_i||^2)`` per rho0 (labelled
  ``wasserstein-first-order``: a linearisation in the input embeddings, not an exact value);
* :func:`audit_groups`: the loss and error rate per group;
* :func:`audit_top_pairs`: the pairs the worst case upweights most.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import audit as A
from .. import losses as L
from ..audit import LOGP_COLUMNS
from ..errors import InputError

#: Default subpopulation shares: the x-axis of the audit figure.
ALPHAS = (1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01)
FIRST_ORDER = "wasserstein-first-order"
#: rho0 values of the first-order Wasserstein rows in the ``audit-tiny`` figure.
RHO0S = (1.0, 3.0, 10.0)


def check_logps(table: pd.DataFrame, what: str = "logps") -> pd.DataFrame:
    """Validate a log-prob table; add ``model`` ("model") and ``pair`` (0..n-1) if missing."""
    df = table.copy()
    missing = [c for c in LOGP_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{what} lacks columns {missing}; it needs {list(LOGP_COLUMNS)}")
    if "model" not in df.columns:
        df["model"] = "model"
    df["model"] = df["model"].astype(str)
    if "pair" not in df.columns:
        df["pair"] = df.groupby("model", sort=False).cumcount()
    cols = list(LOGP_COLUMNS) + [c for c in ("grad_sq_norm",) if c in df.columns]
    for c in cols:
        v = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise InputError(f"{what} row {int(bad[0])}: {c} must be a finite number")
        df[c] = v
    if "weight" in df.columns:
        w = pd.to_numeric(df["weight"], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
        if bad.size:
            raise InputError(
                f"{what} row {int(bad[0])}: weight must be a finite number >= 0, "
                f"got {df['weight'].iloc[bad[0]]!r}"
            )
        df["weight"] = w
    if "group" in df.columns:
        g = df["group"]
        bad = np.flatnonzero(g.isna().to_numpy() | (g.astype(str).str.strip() == "").to_numpy())
        if bad.size:
            raise InputError(f"{what} row {int(bad[0])}: group must be a non-empty string")
        df["group"] = g.astype(str)
    return df


def pair_losses(df: pd.DataFrame, *, beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(margins, losses, p)`` of one model's rows: ``m = beta ((pc - rc) - (pr - rr))``,
    ``l = softplus(-m)`` and the normalised weights ``p`` (uniform without a weight column)."""
    beta = L.check_beta(beta)
    m = beta * (
        (df["chosen_logps"] - df["ref_chosen_logps"])
        - (df["rejected_logps"] - df["ref_rejected_logps"])
    ).to_numpy(dtype=np.float64)
    if "weight" in df.columns:
        w = df["weight"].to_numpy(dtype=np.float64)
        if not w.sum() > 0:
            raise InputError("every weight is 0: at least one pair needs weight > 0")
        p = w / w.sum()
    else:
        p = np.full(m.shape[0], 1.0 / m.shape[0])
    return m, L.dpo_loss(m), p


def audit_table(
    logps: pd.DataFrame,
    *,
    beta: float,
    divergences=A.DIVERGENCES,
    alphas=ALPHAS,
    rho0s=(),
) -> pd.DataFrame:
    """Tidy robustness profile of every model in ``logps`` (see the module docstring).

    Returns
    -------
    DataFrame
        Columns ``model, divergence, alpha, radius, nominal_loss, worst_loss, ess,
        ess_fraction, max_weight, max_ratio, ball_size, nominal_error, worst_error, n_pairs,
        beta``. First-order Wasserstein rows have ``divergence = "wasserstein-first-order"``,
        ``radius = rho0``, ``alpha`` and the error columns NaN.
    """
    df = check_logps(logps)
    alphas = [float(a) for a in alphas]
    if rho0s and "grad_sq_norm" not in df.columns:
        raise InputError("rho0s needs the grad_sq_norm column (score with beta)")
    out = []
    for model, sub in df.groupby("model", sort=False):
        m, l, p = pair_losses(sub, beta=beta)
        nominal_error = float(p @ (m < 0))
        for div in divergences:
            A.check_divergence(div)
            radii = [A.radius_for_subpopulation(a, div) for a in alphas]
            prof = A.profile(l, weights=p, divergence=div, rhos=radii)
            prof.insert(0, "model", model)
            prof.insert(2, "alpha", alphas)
            prof["nominal_error"] = nominal_error
            prof["worst_error"] = [
                A.worst_case_error(m, weights=p, divergence=div, rho=r) for r in radii
            ]
            out.append(prof)
        if len(rho0s):
            sq = sub["grad_sq_norm"].to_numpy(dtype=np.float64)
            for r0 in rho0s:
                out.append(
                    pd.DataFrame(
                        {
                            "model": [model],
                            "divergence": [FIRST_ORDER],
                            "alpha": [np.nan],
                            "radius": [float(r0)],
                            "nominal_loss": [float(p @ l)],
                            "worst_loss": [
                                L.wdpo_objective(l, sq, rho0=r0, variant="sqrt-mean", weights=p)
                            ],
                            "nominal_error": [nominal_error],
                        }
                    )
                )
    table = pd.concat(out, ignore_index=True)
    counts = df.groupby("model", sort=False).size()
    table["n_pairs"] = table["model"].map(counts).astype(int)
    table["beta"] = float(beta)
    return table


def audit_groups(logps: pd.DataFrame, *, beta: float) -> pd.DataFrame:
    """Per model and group: ``n_pairs, share, loss, worst, covering_kl_radius`` (from
    :func:`rdpo_theory.audit.group_profile`) and ``error`` (the group's error rate)."""
    df = check_logps(logps)
    if "group" not in df.columns:
        raise InputError("logps has no group column")
    out = []
    for model, sub in df.groupby("model", sort=False):
        m, l, p = pair_losses(sub, beta=beta)
        g = sub["group"].to_numpy()
        prof = A.group_profile(l, g, weights=p)
        _, err = L.group_losses((m < 0).astype(float), g, weights=p)
        prof["error"] = err
        prof.insert(0, "model", model)
        out.append(prof)
    return pd.concat(out, ignore_index=True)


def audit_top_pairs(
    logps: pd.DataFrame,
    *,
    beta: float,
    alpha: float = 0.1,
    k: int = 10,
    divergences=A.DIVERGENCES,
    rows=None,
) -> pd.DataFrame:
    """The ``k`` pairs each model's worst case upweights most, per divergence, at the ball
    covering every subpopulation of share ``alpha``. With ``rows`` (the dataset) the prompt and
    completions are attached. Columns: ``model, divergence, alpha, radius, rank, pair, margin,
    loss, weight, worst_weight, ratio`` (+ ``group``, ``prompt, chosen, rejected``)."""
    df = check_logps(logps)
    out = []
    for model, sub in df.groupby("model", sort=False):
        m, l, p = pair_losses(sub, beta=beta)
        for div in divergences:
            r = A.radius_for_subpopulation(alpha, div)
            top = A.top_pairs(l, weights=p, divergence=div, rho=r, k=k)
            idx = top["index"].to_numpy()
            t = pd.DataFrame(
                {
                    "model": model,
                    "divergence": div,
                    "alpha": float(alpha),
                    "radius": r,
                    "rank": np.arange(1, len(top) + 1),
                    "pair": sub["pair"].to_numpy()[idx],
                    "margin": m[idx],
                }
            )
            t = pd.concat([t, top.drop(columns="index").reset_index(drop=True)], axis=1)
            if "group" in sub.columns:
                t["group"] = sub["group"].to_numpy()[idx]
            out.append(t)
    table = pd.concat(out, ignore_index=True)
    if rows is not None:
        for key in ("prompt", "chosen", "rejected"):
            table[key] = [rows[int(i)][key] for i in table["pair"]]
    return table


# ---------------------------------------------------------------------------- scoring
def score_models(
    models: dict[str, str | Path],
    rows: list[dict],
    *,
    ref: str | Path | None = None,
    beta: float | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    device=None,
    progress: bool = True,
) -> pd.DataFrame:
    """Load each saved causal LM (``{name: path}``) and its tokenizer, score ``rows`` with
    :func:`rdpo_theory.torch.score.score_pairs` against the reference ``ref`` (or none) and
    return the tidy log-prob table (``model``, ``pair``, the four log-prob columns,
    ``grad_sq_norm`` with ``beta``, and the rows' ``weight``/``group`` when present)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .. import _validate as V
    from ..torch.score import score_pairs

    weights, groups = V.row_weights_groups(rows)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def load(path, what):
        try:
            return AutoModelForCausalLM.from_pretrained(path).to(dev)
        except OSError as exc:
            raise InputError(f"{what} {path}: cannot load a causal LM: {exc}") from None

    ref_model = load(ref, "--ref") if ref is not None else None
    tables = []
    for name, path in models.items():
        try:
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise InputError(f"--model {path}: cannot load a tokenizer: {exc}") from None
        model = load(path, "--model")
        t = score_pairs(
            model,
            tok,
            rows,
            ref_model=ref_model,
            beta=beta,
            batch_size=batch_size,
            max_length=max_length,
            device=dev,
            progress=progress,
        )
        t.insert(0, "pair", np.arange(len(rows)))
        t.insert(0, "model", name)
        if weights is not None:
            t["weight"] = weights
        if groups is not None:
            t["group"] = groups
        tables.append(t)
        del model
    return pd.concat(tables, ignore_index=True)


# ---------------------------------------------------------------------------- figure
def tiny_models(root: Path, *, seed: int = 0, mixture: str = "convex") -> dict[str, Path]:
    """The policies that ``rdpo llm --tiny --save-models`` saved for one seed and mixture:
    ``{folder name: path}`` (DPO first, then KLDPO and WDPO)."""
    base = Path(root) / f"seed{seed}" / mixture
    if not base.is_dir():
        raise InputError(f"{base} does not exist: run `rdpo llm --tiny --save-models` first")
    found = sorted(p for p in base.iterdir() if (p / "config.json").exists())
    order = {"dpo": 0, "kldpo": 1, "wdpo": 2}
    found.sort(key=lambda p: (order.get(p.name.split("_")[0], 9), p.name))
    return {p.name: p for p in found}
