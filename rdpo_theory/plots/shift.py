"""Figures of the distribution-shift study, drawn only from its CSV tables
(``shift_summary.csv``, ``shift_tradeoff.csv``) so they can be redrawn without recomputing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..methods import listed
from . import method_color, method_label, new_figure, savefig

#: methods drawn in the busy panels, in legend order: the shift study's (rdpo_theory.methods)
SHOWN = listed("shift")


def _style(method: str) -> dict:
    ls = "--" if method.endswith(("alg1", "alg2")) else "-"
    return {"color": method_color(method), "ls": ls, "lw": 2.2 if method == "dpo" else 1.3}


def _curves(ax, d: pd.DataFrame, *, col: str, selection: str, refs: bool = True):
    for m in SHOWN:
        g = d[(d["method"] == m) & (d["selection"] == selection)].sort_values("shift")
        if g.empty:
            continue
        ax.plot(g["shift"], g[f"{col}_mean"], label=method_label(m), **_style(m))
        ax.fill_between(
            g["shift"], g[f"{col}_lo"], g[f"{col}_hi"], color=method_color(m), alpha=0.12, lw=0
        )
    if refs:
        for m, ls in (("pi*", "k--"), ("best-action", "k:")):
            g = d[d["method"] == m].sort_values("shift")
            if not g.empty:
                ax.plot(
                    g["shift"],
                    g[f"{col}_mean"],
                    ls,
                    lw=1.5,
                    label=method_label(m),
                )


def plot_mixture(
    summary: pd.DataFrame, path, *, selection: str = "validation", alpha0: float | None = None
) -> Path:
    """Four panels (settings x {convex, geometric}): mean normalised reward vs alpha with 95%
    bands per method, plus the pi* and best-action reference lines."""
    d = summary[summary["study"] == "preference"]
    settings = list(dict.fromkeys(d["setting"]))
    fig, axes = new_figure(2, len(settings), width=5.0, height=3.6)
    for r, setting in enumerate(settings):
        for c, mixture in enumerate(("convex", "geometric")):
            ax = axes[r, c]
            _curves(
                ax,
                d[(d["setting"] == setting) & (d["mixture"] == mixture)],
                col="score",
                selection=selection,
            )
            if alpha0 is not None:
                ax.axvline(alpha0, color="0.6", lw=0.8)
            ax.set_title(f"{mixture} mixture, {setting} rewards", fontsize=10)
            ax.set_xlabel("evaluation alpha")
            ax.set_ylabel("normalised reward")
    axes[0, -1].legend(fontsize=6.5, ncol=2, loc="lower left")
    fig.suptitle(
        f"Preference shift: trained at alpha0, {selection}-selected parameters", fontsize=11
    )
    return savefig(fig, path)


def plot_tradeoff(tr: pd.DataFrame, path) -> Path:
    """Worst-case normalised reward over the alpha grid vs nominal (alpha0) reward, one point
    per (method, parameter), 95% error bars, one panel per (setting, mixture)."""
    combos = list(dict.fromkeys(zip(tr["setting"], tr["mixture"])))
    fig, axes = new_figure(len(combos), 1, width=4.2, height=3.8)
    for ax, (setting, mixture) in zip(axes[0], combos):
        d = tr[(tr["setting"] == setting) & (tr["mixture"] == mixture)]
        for m in SHOWN:
            g = d[d["method"] == m].sort_values("nominal_mean")
            if g.empty:
                continue
            st = _style(m)
            ax.errorbar(
                g["nominal_mean"],
                g["worst_mean"],
                xerr=g["nominal_ci"],
                yerr=g["worst_ci"],
                color=st["color"],
                ls=st["ls"],
                marker="o",
                ms=3,
                lw=1,
                label=method_label(m),
            )
        ax.set_title(f"{mixture}, {setting}", fontsize=10)
        ax.set_xlabel("nominal reward (alpha0)")
        ax.set_ylabel("worst-case reward over alpha")
    axes[0, 0].legend(fontsize=6, ncol=2)
    return savefig(fig, path)


def plot_radar(summary: pd.DataFrame, path, *, selection: str = "validation") -> Path:
    """One radar per training pair: normalised reward on each of the K objectives, one polygon
    per method (the paper's Figure 3)."""
    import matplotlib.pyplot as plt

    d = summary[(summary["study"] == "multi")]
    pairs = list(dict.fromkeys(d["setting"]))
    fig = plt.figure(figsize=(4.6 * len(pairs), 4.6))
    for i, pair in enumerate(pairs):
        ax = fig.add_subplot(1, len(pairs), i + 1, projection="polar")
        g0 = d[d["setting"] == pair]
        K = int(g0["shift"].max()) + 1
        ang = np.linspace(0, 2 * np.pi, K, endpoint=False)
        for m in SHOWN + ("pi*",):
            sel = "reference" if m == "pi*" else selection
            g = g0[(g0["method"] == m) & (g0["selection"] == sel)].sort_values("shift")
            if len(g) != K:
                continue
            v = g["score_mean"].to_numpy()
            st = {"color": "k", "ls": ":", "lw": 1.5} if m == "pi*" else _style(m)
            ax.plot(np.r_[ang, ang[:1]], np.r_[v, v[:1]], label=method_label(m), **st)
        trained = {int(t) for t in pair.split("+")}
        ax.set_xticks(ang)
        ax.set_xticklabels([f"r{k}{'*' if k in trained else ''}" for k in range(K)])
        ax.set_title(f"trained on 0.5 r{pair.replace('+', ' + 0.5 r')}", fontsize=10)
    fig.axes[-1].legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.05, 1.0))
    return savefig(fig, path)


def plot_families(summary: pd.DataFrame, path, *, selection: str = "validation") -> Path:
    """Context shift (normalised reward) and behaviour shift (preference log-loss) vs t."""
    fig, axes = new_figure(2, 1, width=5.0, height=3.6)
    for ax, (study, col, lab) in zip(
        axes[0],
        (
            ("context", "score", "normalised reward"),
            ("behaviour", "value", "preference log-loss (nats)"),
        ),
    ):
        _curves(
            ax,
            summary[summary["study"] == study],
            col=col,
            selection=selection,
            refs=study == "context",
        )
        if study == "behaviour":
            g = summary[(summary["study"] == study) & (summary["method"] == "pi*")]
            ax.plot(g["shift"], g["value_mean"], "k--", lw=1.5, label="truth (pi*)")
        ax.set_title(f"{study} shift (convex, first setting)", fontsize=10)
        ax.set_xlabel("shift t")
        ax.set_ylabel(lab)
    axes[0, 1].legend(fontsize=6.5, ncol=2)
    return savefig(fig, path)


def draw_all(out) -> list[Path]:
    """Draw every shift figure from the CSV tables under ``out``."""
    out = Path(out)
    summary = pd.read_csv(out / "shift_summary.csv")
    tr = pd.read_csv(out / "shift_tradeoff.csv")
    runs_a0 = None
    runs = out / "shift_runs.csv"
    if runs.exists():
        runs_a0 = float(pd.read_csv(runs, usecols=["alpha0"], nrows=1)["alpha0"].iloc[0])
    return [
        plot_mixture(summary, out / "shift_mixture.png", alpha0=runs_a0),
        plot_tradeoff(tr, out / "shift_tradeoff.png"),
        plot_radar(summary, out / "shift_radar.png"),
        plot_families(summary, out / "shift_families.png"),
    ]
