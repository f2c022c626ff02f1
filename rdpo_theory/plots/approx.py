"""Figures of the approximate-vs-exact study, drawn from ``approx_runs.csv`` alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from ..methods import family
from . import method_color, method_label, new_figure, savefig

#: Robust gaps below this (nats) are shown at the floor of the log axis.
GAP_FLOOR = 1e-12
_STYLE = {
    "dpo": dict(color=method_color("dpo"), ls=":", marker="x"),
    "kldpo-alg2": dict(color=method_color("kldpo"), ls="-", marker="o"),
    "kldpo-clipped": dict(color="#ff9896", ls="--", marker="s", mfc="none"),
    "wdpo-alg1": dict(color=method_color("wdpo"), ls="-", marker="o"),
    "wdpo-per-pair": dict(color="#98df8a", ls="--", marker="s", mfc="none"),
}


def _first_cell(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows of the smallest n and seed 0 (one sample, so paths are comparable)."""
    return runs[(runs["n"] == runs["n"].min()) & (runs["seed"] == 0)]


def _mean_gap(df: pd.DataFrame) -> pd.DataFrame:
    return (
        df.groupby("radius_value", as_index=False)["robust_gap"]
        .agg(["mean", "sem"])
        .reset_index()
        .sort_values("radius_value")
    )


def robust_gap(runs: pd.DataFrame, path: Path) -> Path:
    """Robust gap (exact robust objective at the approximate theta minus the exact optimum)
    against the radius, per variant; WDPO with ``rho0 = rho``. Mean over n and seeds."""
    fig, axes = new_figure(2, width=4.6)
    for ax, fam, methods, xlabel in (
        (axes[0, 0], "kl", ["dpo", "kldpo-alg2", "kldpo-clipped"], "KL radius rho (nats)"),
        (
            axes[0, 1],
            "w2",
            ["dpo", "wdpo-alg1", "wdpo-per-pair"],
            "W2 radius rho (feature-norm units)",
        ),
    ):
        sub = runs[runs["family"] == fam]
        for meth in methods:
            d = sub[sub["method"] == meth]
            if "rho0_ratio" in d and family(meth) in ("w1", "w2"):
                d = d[np.isclose(d["rho0_ratio"], 1.0)]
            if d.empty:
                continue
            g = d.groupby("radius_value", as_index=False)["robust_gap"].mean()
            y = np.maximum(g["robust_gap"].to_numpy(), GAP_FLOOR)
            label = method_label(meth) + (", rho0 = rho" if family(meth) in ("w1", "w2") else "")
            ax.plot(g["radius_value"], y, label=label, **_STYLE[meth])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"robust gap (nats; below {GAP_FLOOR:g} drawn at {GAP_FLOOR:g})", fontsize=8)
        ax.set_title(f"{'KLDPO' if fam == 'kl' else 'WDPO'}: distance to the minimax value")
        ax.legend(fontsize=7)
    return savefig(fig, path)


def tau_vs_rho(runs: pd.DataFrame, path: Path) -> Path:
    """Left: the exact multiplier tau = lam*(rho). Right: the radius each KLDPO variant
    implies, KL(q || p_n) of its final weights, against the radius it was tuned for."""
    kl = runs[runs["family"] == "kl"]
    fig, axes = new_figure(2, width=4.3)
    ex = kl[kl["method"] == "kldpo-exact"].groupby("radius_value", as_index=False)["tau"].mean()
    ax = axes[0, 0]
    ax.plot(ex["radius_value"], ex["tau"], color=method_color("kldpo"), marker="o")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("KL radius rho (nats)")
    ax.set_ylabel("tau = lam*(rho)")
    ax.set_title("temperature that targets radius rho")
    ax = axes[0, 1]
    for meth in ("kldpo-alg2", "kldpo-clipped"):
        d = kl[kl["method"] == meth]
        if d.empty:
            continue
        g = d.groupby("radius_value", as_index=False)["implied_rho"].mean()
        ax.plot(g["radius_value"], g["implied_rho"], label=method_label(meth), **_STYLE[meth])
    lim = [kl["radius_value"].min(), kl["radius_value"].max()]
    ax.plot(lim, lim, color="0.6", lw=0.8, label="implied = rho")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("KL radius rho (nats)")
    ax.set_ylabel("implied rho = KL(q || p_n)")
    ax.set_title("implied radius at convergence")
    ax.legend(fontsize=7)
    return savefig(fig, path)


def theta_paths(runs: pd.DataFrame, path: Path) -> Path:
    """theta (first two coordinates) as the radius grows: exact vs approximate (one sample)."""
    cell = _first_cell(runs)
    fig, axes = new_figure(2, width=4.3)
    for ax, fam, exact, methods in (
        (axes[0, 0], "kl", "kldpo-exact", ["kldpo-alg2", "kldpo-clipped"]),
        (axes[0, 1], "w2", "wdpo-exact", ["wdpo-alg1", "wdpo-per-pair"]),
    ):
        sub = cell[cell["family"] == fam].sort_values("radius_value")
        e = sub[sub["method"] == exact]
        ax.plot(
            e["theta0"], e["theta1"], color="k", lw=2.2, alpha=0.35, marker="o", ms=7, label="exact"
        )
        for meth in methods:
            d = sub[sub["method"] == meth]
            if "rho0_ratio" in d and fam == "w2":
                d = d[np.isclose(d["rho0_ratio"], 1.0)]
            ax.plot(d["theta0"], d["theta1"], ms=4, label=method_label(meth), **_STYLE[meth])
        dp = sub[sub["method"] == "dpo"].iloc[:1]
        ax.plot(
            dp["theta0"],
            dp["theta1"],
            marker="*",
            ms=12,
            ls="none",
            color=method_color("dpo"),
            label="DPO (rho = 0)",
        )
        ax.set_xlabel("theta[0]")
        ax.set_ylabel("theta[1]")
        ax.set_title(f"{'KL' if fam == 'kl' else 'W2'} path as rho grows")
        ax.legend(fontsize=7)
    return savefig(fig, path)


def draw_all(out) -> list[Path]:
    """Draw every figure of the study from ``out/approx_runs.csv``."""
    out = Path(out)
    runs = pd.read_csv(out / "approx_runs.csv")
    return [
        robust_gap(runs, out / "approx_gap.png"),
        tau_vs_rho(runs, out / "approx_tau_rho.png"),
        theta_paths(runs, out / "approx_paths.png"),
    ]
