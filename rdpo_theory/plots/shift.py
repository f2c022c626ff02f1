"""Figures of the distribution-shift study, drawn only from its CSV tables
(``shift_summary.csv``, ``shift_tradeoff.csv``) so they can be redrawn without recomputing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..methods import listed
from . import NORMALISED_REWARD, legend_panel, method_color, method_label, savefig

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


def _grid(nrows: int, ncols: int, *, width: float, height: float, legend: float = 1.9, polar=False):
    """A figure of ``nrows x ncols`` panels plus a column on the right kept for the legend;
    returns ``(fig, axes[nrows, ncols], legend_ax)``."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width * ncols + legend, height * nrows))
    gs = fig.add_gridspec(nrows, ncols + 1, width_ratios=[width] * ncols + [legend])
    kw = {"projection": "polar"} if polar else {}
    axes = np.array([[fig.add_subplot(gs[r, c], **kw) for c in range(ncols)] for r in range(nrows)])
    return fig, axes, fig.add_subplot(gs[:, ncols])


def _handles(axes) -> tuple[list, list]:
    """Legend entries of every panel, each label once, in drawing order."""
    seen: dict[str, object] = {}
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    return list(seen.values()), list(seen)


def plot_mixture(
    summary: pd.DataFrame, path, *, selection: str = "validation", alpha0: float | None = None
) -> Path:
    """Four panels (settings x {convex, geometric}): mean normalised reward vs alpha with 95%
    bands per method, plus the pi* and best-action reference lines; the legend has its own
    column."""
    d = summary[summary["study"] == "preference"]
    settings = list(dict.fromkeys(d["setting"]))
    fig, axes, lax = _grid(len(settings), 2, width=4.6, height=3.5)
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
                ax.axvline(alpha0, color="0.6", lw=0.8, label=f"training alpha0 = {alpha0:g}")
            ax.set_title(f"{mixture} mixture, {setting} rewards", fontsize=10)
            ax.set_xlabel("evaluation alpha (weight of reward r1)")
            ax.set_ylabel(NORMALISED_REWARD, fontsize=8)
    legend_panel(lax, *_handles(axes), title="method (band: 95% CI over seeds)")
    fig.suptitle(
        f"Preference shift: trained at alpha0, {selection}-selected parameters", fontsize=11
    )
    return savefig(fig, path)


_MARKERS = "osD^v<>pP*Xh"


def plot_tradeoff(tr: pd.DataFrame, path) -> Path:
    """Worst-case normalised reward over the alpha grid vs nominal (alpha0) reward, one point
    per (method, parameter) joined per method, 95% error bars drawn light behind the points,
    one panel per (setting, mixture) on a 2 x 2 grid, the legend in its own column."""
    combos = list(dict.fromkeys(zip(tr["setting"], tr["mixture"])))
    ncols = 2 if len(combos) > 1 else 1
    nrows = -(-len(combos) // ncols)
    fig, axes, lax = _grid(nrows, ncols, width=4.6, height=4.0)
    for ax in axes.ravel()[len(combos) :]:
        ax.axis("off")
    for ax, (setting, mixture) in zip(axes.ravel(), combos):
        d = tr[(tr["setting"] == setting) & (tr["mixture"] == mixture)]
        for k, m in enumerate(SHOWN):
            g = d[d["method"] == m].sort_values("nominal_mean")
            if g.empty:
                continue
            st = _style(m)
            ax.errorbar(
                g["nominal_mean"],
                g["worst_mean"],
                xerr=g["nominal_ci"],
                yerr=g["worst_ci"],
                fmt="none",
                ecolor=st["color"],
                elinewidth=0.8,
                alpha=0.3,
                capsize=0,
                zorder=1,
            )
            ax.plot(
                g["nominal_mean"],
                g["worst_mean"],
                color=st["color"],
                ls=st["ls"],
                lw=1,
                marker=_MARKERS[k % len(_MARKERS)],
                ms=5.5,
                mec="k",
                mew=0.5,
                zorder=3,
                label=method_label(m),
            )
        ax.set_title(f"{mixture} mixture, {setting} rewards", fontsize=10)
        ax.set_xlabel("nominal reward at alpha0 (normalised)")
        ax.set_ylabel("worst-case reward over alpha (normalised)")
        ax.grid(alpha=0.3, lw=0.5)
    legend_panel(
        lax,
        *_handles(axes),
        title=(
            "method, one point per parameter\n(bars: 95% CI over seeds;\n"
            "reward: pi_ref = 0, best action = 1)"
        ),
    )
    return savefig(fig, path)


def plot_radar(summary: pd.DataFrame, path, *, selection: str = "validation") -> Path:
    """One radar per training pair: normalised reward on each of the K objectives, one polygon
    per method (the paper's Figure 3). The radial scale is labelled in a grey box between two
    spokes, with few ticks, so it stays legible over the polygons."""
    d = summary[(summary["study"] == "multi")]
    pairs = list(dict.fromkeys(d["setting"]))
    fig, axes, lax = _grid(1, len(pairs), width=4.4, height=4.6, legend=1.9, polar=True)
    lo = float(np.floor(min(d["score_mean"].min(), 0.0) * 10) / 10)
    hi = float(np.ceil(d["score_mean"].max() * 10) / 10)
    for ax, pair in zip(axes[0], pairs):
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
        ax.tick_params(axis="x", pad=6)
        ax.set_ylim(lo, hi)
        ticks = [t for t in np.arange(0.0, hi + 1e-9, 0.25 if hi <= 1.5 else 0.5) if lo < t]
        ax.set_yticks(ticks)
        ax.set_yticklabels([f"{t:g}" for t in ticks], fontsize=7, color="0.3")
        ax.set_rlabel_position(np.degrees(ang[1] / 2 if K > 1 else 0))
        for label in ax.get_yticklabels():
            label.set_bbox({"fc": "white", "ec": "none", "alpha": 0.8, "pad": 0.5})
        ax.set_title(f"trained on 0.5 r{pair.replace('+', ' + 0.5 r')}", fontsize=10, pad=14)
    legend_panel(
        lax,
        *_handles(axes),
        title=(
            "method (* = trained objective;\nradius: normalised reward on\n"
            "objective r_k, pi_ref = 0,\nbest action = 1)"
        ),
    )
    return savefig(fig, path)


def plot_families(summary: pd.DataFrame, path, *, selection: str = "validation") -> Path:
    """Context shift (normalised reward) and behaviour shift (preference log-loss) vs t, the
    legend in its own column."""
    fig, axes, lax = _grid(1, 2, width=4.6, height=3.6)
    for ax, (study, col, lab) in zip(
        axes[0],
        (
            ("context", "score", NORMALISED_REWARD),
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
        ax.set_xlabel("shift t (0 = training distribution)")
        ax.set_ylabel(lab, fontsize=8)
    legend_panel(lax, *_handles(axes), title="method (band: 95% CI)")
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
