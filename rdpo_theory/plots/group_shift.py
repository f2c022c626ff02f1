"""Figure of the group-shift family, drawn from ``shift_groups_summary.csv`` only."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import method_color, new_figure, savefig

_MARKERS = {"-": "o", "coverage": "s", "validation": "^", "oracle": "x"}


def plot_group_shift(summary, path) -> Path:
    """Worst-group log-loss (left) and share-weighted mean log-loss (right) per method and
    parameter selection, means with 95% intervals over seeds; the dotted line is DPO."""
    df = pd.read_csv(summary) if not isinstance(summary, pd.DataFrame) else summary
    fig, axes = new_figure(ncols=2, width=5.0, height=3.6)
    labels = [f"{m}\n{s}" if s != "-" else m for m, s in zip(df["method"], df["selection"])]
    for ax, col, title in (
        (axes[0][0], "worst_logloss", "worst-group population log-loss (nats)"),
        (axes[0][1], "mean_logloss", "share-weighted mean log-loss (nats)"),
    ):
        ax.set_ylabel(title, fontsize=8)
        for i, r in enumerate(df.itertuples()):
            ax.errorbar(
                i,
                getattr(r, f"{col}_mean"),
                yerr=getattr(r, f"{col}_ci"),
                fmt=_MARKERS.get(r.selection, "o"),
                color=method_color(r.method),
                capsize=3,
            )
        dpo = df[df["method"] == "dpo"]
        if len(dpo):
            ax.axhline(dpo[f"{col}_mean"].iloc[0], color="k", ls=":", lw=1)
        ax.set_xticks(range(len(df)))
        ax.set_xticklabels(labels, rotation=70, fontsize=7)
        ax.set_title(f"{title.split(' (')[0]} (95% CI over seeds; dotted: DPO)", fontsize=9)
    n = int(df["n_seeds"].max())
    fig.suptitle(f"group shift, contexts as groups ({n} seeds)", fontsize=10)
    return savefig(fig, path)
