"""Figures of the minibatch study, drawn from ``minibatch_runs.csv`` and
``minibatch_layouts.csv`` alone (:func:`rdpo_theory.studies.minibatch.tables`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import new_figure, savefig

_STYLE = {
    ("normalized", "batch"): ("#d62728", "-", "KLDPO normalized, batch"),
    ("normalized", "running"): ("#d62728", "--", "KLDPO normalized, running"),
    ("clipped", "batch"): ("#ff7f0e", "-", "KLDPO clipped, batch"),
    ("sqrt-mean", "batch"): ("#2ca02c", "-", "WDPO sqrt-mean, batch"),
    ("sqrt-mean", "running"): ("#2ca02c", "--", "WDPO sqrt-mean, running"),
    ("per-pair", "batch"): ("#17becf", "-", "WDPO per-pair"),
}


def _by_b(runs: pd.DataFrame) -> pd.DataFrame:
    first = runs.groupby("family")["radius"].transform("first")
    mb = runs[(runs["radius"] == first) & (runs["B"] > 0)]
    return mb.sort_values("B")


def effective_radius(runs: pd.DataFrame, path: Path) -> Path:
    """Effective / intended radius vs the group size B, one panel per family."""
    mb = _by_b(runs)
    fig, axes = new_figure(2)
    for ax, fam in zip(axes[0], ("kl", "w2")):
        sub = mb[mb["family"] == fam]
        for (variant, norm), g in sub.groupby(["variant", "normalizer"]):
            color, ls, label = _STYLE[(variant, norm)]
            se = g["effective_radius_se"] / g["rho"]
            ax.errorbar(
                g["B"],
                g["effective_ratio"],
                yerr=se,
                color=color,
                ls=ls,
                marker="o",
                ms=3,
                capsize=2,
                label=label,
            )
        ax.axhline(1.0, color="#555555", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("normalisation group size B (pairs)")
        ax.set_ylabel("effective radius / intended radius")
        name = "KL" if fam == "kl" else "W2"
        rho = sub["rho"].iloc[0] if len(sub) else np.nan
        ax.set_title(f"{name} path, intended rho = {rho:.3g}")
        ax.legend(fontsize=7)
    return savefig(fig, path)


def path_distance(runs: pd.DataFrame, path: Path) -> Path:
    """Distance of theta_B to the intended exact optimum (solid) and to the exact path
    (dotted) vs B."""
    mb = _by_b(runs)
    fig, axes = new_figure(2)
    for ax, fam in zip(axes[0], ("kl", "w2")):
        sub = mb[mb["family"] == fam]
        for (variant, norm), g in sub.groupby(["variant", "normalizer"]):
            color, ls, label = _STYLE[(variant, norm)]
            ax.errorbar(
                g["B"],
                g["theta_dist"].clip(lower=1e-6),
                yerr=g["theta_dist_se"],
                color=color,
                ls=ls,
                marker="o",
                ms=3,
                capsize=2,
                label=label,
            )
            ax.plot(g["B"], g["off_path"].clip(lower=1e-6), color=color, ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("normalisation group size B (pairs)")
        ax.set_ylabel("||theta_B - theta*(rho)||\n(dotted: distance to the exact path)")
        ax.set_title("KLDPO" if fam == "kl" else "WDPO")
        ax.legend(fontsize=7)
    return savefig(fig, path)


def layouts(lay: pd.DataFrame, path: Path) -> Path:
    """The LLM layouts side by side: effective / intended radius of each estimator."""
    first = lay.groupby("family")["radius"].transform("first")
    lay = lay[lay["radius"] == first]
    names = list(dict.fromkeys(lay["layout"]))
    keys = [k for k in _STYLE if ((lay["variant"] == k[0]) & (lay["normalizer"] == k[1])).any()]
    fig, axes = new_figure(1, width=8.5, height=3.8)
    ax = axes[0][0]
    width = 0.8 / max(1, len(keys))
    x = np.arange(len(names))
    for i, key in enumerate(keys):
        color, ls, label = _STYLE[key]
        vals = []
        for nm in names:
            r = lay[
                (lay["layout"] == nm) & (lay["variant"] == key[0]) & (lay["normalizer"] == key[1])
            ]
            vals.append(float(r["effective_ratio"].iloc[0]) if len(r) else np.nan)
        ax.bar(
            x + (i - (len(keys) - 1) / 2) * width,
            vals,
            width,
            color=color,
            hatch="//" if ls == "--" else None,
            edgecolor="white",
            label=label,
        )
    ax.axhline(1.0, color="#555555", lw=0.8)
    groups = [int(lay[lay["layout"] == nm]["group_size"].iloc[0]) for nm in names]
    ax.set_xticks(
        x, [f"{nm}\n(group {g})" for nm, g in zip(names, groups)], fontsize=7, rotation=12
    )
    ax.set_ylabel("effective radius / intended radius")
    ax.set_title("What each training layout optimises")
    ax.set_ylim(0, 1.25)
    ax.legend(fontsize=6, ncol=3, loc="upper center")
    return savefig(fig, path)


def draw_all(out) -> list[Path]:
    """Draw every figure of the study from the CSVs under ``out``."""
    out = Path(out)
    runs = pd.read_csv(out / "minibatch_runs.csv")
    lay = pd.read_csv(out / "minibatch_layouts.csv")
    return [
        effective_radius(runs, out / "minibatch_radius.png"),
        path_distance(runs, out / "minibatch_distance.png"),
        layouts(lay, out / "minibatch_layouts.png"),
    ]
