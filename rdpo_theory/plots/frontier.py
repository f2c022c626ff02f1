"""The frontier figure, drawn only from ``frontier_summary.csv`` and ``frontier_regret.csv``
(docs/frontier.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import method_color, method_label, new_figure, savefig

MARKERS = {"dpo": "*", "dpo-pro": "P", "chipo": "X", "gdpo": "D", "ipo": "v", "cdpo": "^",
           "rdpo": "<", "winsor-dpo": "h"}  # fmt: skip


def plot_frontier(summary_csv, regret_csv, path) -> Path:
    """Three panels: (a) certified worst-case loss vs nominal loss, (b) mixed-reward score
    vs certified worst-case loss, each fit a point with 95% intervals over seeds (filled: on
    the Pareto frontier; hollow: dominated), a method's grid joined in parameter order; (c)
    the regret test: the mixed-reward score of the fit chosen by worst-case value and by
    worst-case regret."""
    s = pd.read_csv(summary_csv)
    r = pd.read_csv(regret_csv)
    fig, ax = new_figure(4, 1, width=4.2, height=4.2,
                         gridspec_kw={"width_ratios": [1, 1, 1, 0.5]})  # fmt: skip
    a, b, c, leg = ax[0]
    for m, g in s.groupby("method", sort=False):
        col = method_color(m)
        mk = MARKERS.get(m, "o")
        a.scatter([], [], marker=mk, s=46, color=col, edgecolor="k", linewidth=0.5,
                  label=method_label(m))  # fmt: skip
        panels = (
            (a, "d_nominal", "d_worst_loss", "on_frontier"),
            (b, "d_worst_loss", "d_mixed_score", "on_reward_frontier"),
        )
        for axis, x, y, mark in panels:
            axis.plot(g[f"{x}_mean"], g[f"{y}_mean"], "-", color=col, lw=0.8, alpha=0.6)
            axis.errorbar(
                g[f"{x}_mean"],
                g[f"{y}_mean"],
                xerr=g[f"{x}_ci"].fillna(0),
                yerr=g[f"{y}_ci"].fillna(0),
                fmt="none",
                ecolor=col,
                elinewidth=0.7,
                alpha=0.6,
            )
            on = g[mark].astype(bool)
            axis.scatter(g.loc[on, f"{x}_mean"], g.loc[on, f"{y}_mean"], marker=mk, s=46,
                         color=col, edgecolor="k", linewidth=0.5, zorder=3,
                         )  # fmt: skip
            axis.scatter(g.loc[~on, f"{x}_mean"], g.loc[~on, f"{y}_mean"], marker=mk, s=46,
                         facecolor="white", edgecolor=col, linewidth=1.2, zorder=3)  # fmt: skip
    for axis in (a, b):
        axis.axhline(0, color="0.5", ls=":", lw=1)
        axis.axvline(0, color="0.5", ls=":", lw=1)
    a.set_xlabel("nominal loss under P0 minus DPO's (nats)")
    a.set_ylabel("certified worst-case loss minus DPO's (nats)")
    a.set_title("(a) robustness vs nominal fit\n(filled: Pareto, hollow: dominated)", fontsize=9)
    b.set_xlabel("certified worst-case loss minus DPO's (nats)")
    b.set_ylabel("mixed-reward score minus DPO's")
    b.set_title(
        "(b) mixed-reward value vs worst-case loss\n(filled: Pareto; score 0 = ref, 1 = best)",
        fontsize=9,
    )
    # (c) the regret test
    rows = r[r["criterion"].isin(["value", "regret"])]
    labels, means, cis, colors = [], [], [], []
    for _, row in rows.iterrows():
        labels.append(f"{row['currency']}:\nworst {row['criterion']}")
        means.append(row["mixed_score_mean"])
        cis.append(0.0 if pd.isna(row["mixed_score_ci"]) else row["mixed_score_ci"])
        colors.append("#d62728" if row["criterion"] == "value" else "#2ca02c")
    xs = np.arange(len(labels))
    c.bar(xs, means, yerr=cis, color=colors, alpha=0.8, capsize=4)
    for x, mval, h in zip(xs, means, cis):
        c.annotate(f"{mval:.2f}", (x, mval + h), textcoords="offset points", xytext=(0, 3),
                   ha="center", fontsize=8)  # fmt: skip
    c.set_xticks(xs, labels, fontsize=8)
    top = max([m + h for m, h in zip(means, cis)] + [0.1])
    c.set_ylim(top=1.15 * top)
    c.set_ylabel("mixed-reward score of the chosen fit")
    c.set_title("(c) best fit by worst-case value (red)\nvs by worst-case regret (green)",
                fontsize=9)  # fmt: skip
    c.axhline(0, color="k", lw=0.6)
    handles, texts = a.get_legend_handles_labels()
    leg.axis("off")
    leg.legend(handles, texts, loc="center left", fontsize=8, frameon=False,
               title="method (95% CI over seeds)", title_fontsize=8)  # fmt: skip
    return savefig(fig, path)


def draw_all(out) -> list[Path]:
    """Draw ``frontier.png`` from the tables under ``out``."""
    out = Path(out)
    return [
        plot_frontier(
            out / "frontier_summary.csv", out / "frontier_regret.csv", out / "frontier.png"
        )  # fmt: skip
    ]
