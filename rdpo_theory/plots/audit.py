"""Figure of the audit study, drawn from its CSV table only (``studies.audit.audit_table``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import method_color, new_figure, savefig

_TITLES = {"kl": "KL ball", "chi2": "chi-square ball", "cvar": "CVaR"}
_STYLES = ["-", "--", ":", "-."]


def _styles(models) -> dict[str, tuple[str, str]]:
    """Colour by method family (the folder name's prefix), line style within a family."""
    count: dict[str, int] = {}
    out = {}
    for m in models:
        fam = str(m).split("_")[0].split("(")[0]
        k = count.get(fam, 0)
        count[fam] = k + 1
        out[m] = (method_color(fam), _STYLES[k % len(_STYLES)])
    return out


def plot_audit(table, path) -> Path:
    """Worst-case loss (top row) and worst-case preference error (bottom row) against the
    share alpha of the smallest subpopulation the ball covers, one column per divergence, one
    line per model. A last top panel shows the first-order Wasserstein estimate against rho0
    when the table has it. The x-axis is logarithmic and reversed (more adversarial to the
    right); alpha = 1 is the nominal value."""
    df = pd.read_csv(table) if not isinstance(table, pd.DataFrame) else table
    divs = [d for d in ("kl", "chi2", "cvar") if d in set(df["divergence"])]
    fo = df[df["divergence"] == "wasserstein-first-order"]
    ncols = len(divs) + (1 if len(fo) else 0)
    fig, axes = new_figure(ncols=ncols, nrows=2, width=3.6, height=3.0)
    styles = _styles(list(dict.fromkeys(df["model"])))
    for j, div in enumerate(divs):
        sub = df[df["divergence"] == div]
        for model, (colour, ls) in styles.items():
            r = sub[sub["model"] == model].sort_values("alpha")
            if r.empty:
                continue
            axes[0][j].plot(r["alpha"], r["worst_loss"], ls, color=colour, label=model, lw=1.5)
            axes[1][j].plot(r["alpha"], r["worst_error"], ls, color=colour, label=model, lw=1.5)
        for i, what in enumerate(("worst-case DPO loss (nats)", "worst-case error rate")):
            ax = axes[i][j]
            ax.set_xscale("log")
            ax.invert_xaxis()
            ax.set_xlabel("covered subpopulation share alpha")
            ax.set_ylabel(what)
            ax.set_title(_TITLES[div], fontsize=9)
    if len(fo):
        ax = axes[0][-1]
        for model, (colour, ls) in styles.items():
            r = fo[fo["model"] == model].sort_values("radius")
            if not r.empty:
                ax.plot(r["radius"], r["worst_loss"], ls, color=colour, label=model, lw=1.5)
        ax.set_xlabel("rho0 (embedding space)")
        ax.set_ylabel("mean l + rho0 RMS ||grad_e l|| (nats)")
        ax.set_title("Wasserstein, first-order estimate", fontsize=9)
        axes[1][-1].axis("off")
    axes[0][0].legend(fontsize=7, loc="best")
    n = df["n_pairs"].iloc[0] if "n_pairs" in df.columns else None
    if n is not None:
        fig.suptitle(f"audit of {df['model'].nunique()} models on {n} pairs", fontsize=10)
    return savefig(fig, path)
