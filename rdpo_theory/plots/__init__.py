"""Matplotlib figures drawn from study tables. One module per study (``plots.rates``,
``plots.approx``, ``plots.shift``, ``plots.llm``); this module holds the shared style.

Importing it does not choose a matplotlib backend (the user's stays in force); the ``rdpo``
command selects the non-interactive ``Agg`` backend when there is no display."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from ..methods import family, label

#: One colour per method family (:func:`rdpo_theory.methods.family`), shared by every figure so
#: a method looks the same everywhere.
METHOD_COLORS = {
    "dpo": "#1f77b4",
    "kl": "#d62728",
    "w1": "#2ca02c",
    "w2": "#2ca02c",
    "cdpo": "#9467bd",
    "rdpo": "#8c564b",
    "ipo": "#e377c2",
    "drdpo": "#7f7f7f",
    "gdpo": "#bcbd22",
    "chi2": "#17becf",
    "cvar": "#ff7f0e",
    "cressie-read": "#006d5b",
    "reference": "#555555",
    "dpo-pro": "#000000",
    "chipo": "#6b8e23",
    "winsor-dpo": "#b8860b",
    "rebel": "#4b0082",
}


def method_color(method: str) -> str:
    """Colour of a method id or trainer loss name; every estimator of a family
    (``kldpo-exact``, ``kldpo-alg2``) shares its family's colour."""
    return METHOD_COLORS.get(family(method), "#333333")


def method_label(method: str, **params) -> str:
    """Legend text of a method id with its parameters (:func:`rdpo_theory.methods.label`)."""
    return label(method, **params)


def new_figure(
    ncols: int = 1, nrows: int = 1, *, width: float = 4.2, height: float = 3.3, **kwargs
):
    """``plt.subplots`` with the project's sizes; returns ``(fig, axes)``."""
    return plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kwargs
    )


def savefig(fig, path: str | Path, *, dpi: int = 130) -> Path:
    """Save a PNG (creating the folder), close the figure and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


#: What a normalised reward means, for axis labels: (R - R(pi_ref)) / (R(best) - R(pi_ref)).
NORMALISED_REWARD = "normalised reward (pi_ref = 0, best action = 1)"


def legend_panel(ax, handles, labels, *, title: str | None = None, ncol: int = 1, **kwargs):
    """Turn ``ax`` (a slot of the figure's grid kept free for it) into the legend, so the
    legend covers no data and ``tight_layout`` makes room for it."""
    ax.axis("off")
    return ax.legend(
        handles,
        labels,
        loc="center",
        ncol=ncol,
        frameon=False,
        title=title,
        fontsize=kwargs.pop("fontsize", 8),
        title_fontsize=8,
        **kwargs,
    )
