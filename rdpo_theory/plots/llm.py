"""Figures of the language-model studies, drawn from their CSV tables only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..methods import family, series_columns
from . import method_color, method_label, new_figure, savefig

_STYLES = ["-", "--", ":", "-."]


def _summary(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    g = df.groupby(keys + ["alpha"], dropna=False)["reward"]
    s = g.agg(["mean", "std", "count"]).reset_index()
    s["half"] = 1.96 * s["std"].fillna(0.0) / np.sqrt(s["count"])
    return s


def plot_emotion(table, path, *, alpha0: float = 0.1) -> Path:
    """Mixed reward of generated text vs alpha, one panel per mixture (train = eval mixture).

    ``table`` is ``llm_tiny.csv`` (or its DataFrame). One curve per method id and parameter
    values (:func:`rdpo_theory.methods.series_columns`), labelled by
    :func:`rdpo_theory.methods.label`. Lines are means over seeds, bands are mean +- 1.96
    standard errors; the dotted vertical line marks the training mixture alpha0.
    """
    df = pd.read_csv(table) if not isinstance(table, pd.DataFrame) else table
    keys = series_columns(df)
    params = keys[1:]
    mixtures = [m for m in ("convex", "geometric") if m in set(df["train_mixture"])]
    fig, axes = new_figure(ncols=len(mixtures), width=4.6)
    for ax, mix in zip(axes[0], mixtures):
        sub = df[(df["train_mixture"] == mix) & (df["eval_mixture"] == mix)]
        s = _summary(sub, keys)
        family_count: dict[str, int] = {}
        for key, r in s.groupby(keys, dropna=False, sort=False):
            m = key[0]
            fam = family(m)
            k = family_count.get(fam, 0)
            family_count[fam] = k + 1
            r = r.sort_values("alpha")
            colour = method_color(m)
            name = method_label(m, **dict(zip(params, key[1:])))
            ax.plot(r["alpha"], r["mean"], _STYLES[k % 4], color=colour, label=name, lw=1.6)
            ax.fill_between(
                r["alpha"],
                r["mean"] - r["half"],
                r["mean"] + r["half"],
                color=colour,
                alpha=0.12,
                lw=0,
            )
        ax.axvline(alpha0, color="k", ls=":", lw=1)
        n_seeds = sub["seed"].nunique()
        ax.set_title(f"{mix} mixture (train alpha0={alpha0:g}, {n_seeds} seeds)", fontsize=9)
        ax.set_xlabel("evaluation alpha (weight of anger reward r1)")
        ax.set_ylabel("mixed reward of generated text")
    axes[0][-1].legend(fontsize=7, loc="best")
    return savefig(fig, path)
