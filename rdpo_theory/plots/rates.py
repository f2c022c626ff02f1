"""Figures of the sample-complexity study, drawn from its CSV tables only
(``rates_runs.csv``, ``rates_slopes.csv``, ``rates_bounds.csv``; see
:mod:`rdpo_theory.studies.rates`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..methods import family
from . import method_color, method_label, new_figure, savefig

_STYLES = ["-", "--", ":", "-."]


def _label(method: str, rho: float) -> str:
    return method_label(method) if rho == 0 else method_label(method, rho=rho)


def _style(runs: pd.DataFrame):
    """Line style per (method, rho): colour from the method family, dash from its index."""
    out = {}
    seen: dict[str, int] = {}
    for method, rho in runs[["method", "rho"]].drop_duplicates().itertuples(index=False):
        base = family(method)
        k = seen.get(base, 0)
        seen[base] = k + 1
        out[(method, rho)] = (method_color(method), _STYLES[k % len(_STYLES)])
    return out


def error_vs_n(runs: pd.DataFrame, slopes: pd.DataFrame, path: str | Path) -> Path:
    """Mean error and excess risk vs n (log-log), 10-90% seed bands, fitted slope in the legend."""
    ok = runs[runs["ok"].astype(bool)]
    styles = _style(ok)
    fig, axes = new_figure(2, width=5.4, height=4.2)
    for ax, metric, title in zip(
        axes[0],
        ("error", "excess_risk"),
        ("||theta_n - theta_target||_2", "excess population robust risk (nats)"),
    ):
        for (method, rho), g in ok.groupby(["method", "rho"], sort=False):
            color, ls = styles[(method, rho)]
            st = g.groupby("n")[metric]
            mean = st.mean()
            lo, hi = st.quantile(0.1), st.quantile(0.9)
            if not np.all(mean > 0):
                continue
            s = slopes[
                (slopes["method"] == method) & (slopes["rho"] == rho) & (slopes["metric"] == metric)
            ]
            lab = _label(method, rho)
            if len(s) and np.isfinite(s["slope"].iloc[0]):
                r = s.iloc[0]
                lab += f": {r['slope']:.2f} [{r['ci_lo']:.2f}, {r['ci_hi']:.2f}]"
            ax.plot(mean.index, mean.values, ls, color=color, marker="o", ms=3, label=lab)
            ax.fill_between(
                mean.index, np.maximum(lo.values, 1e-300), hi.values, color=color, alpha=0.12, lw=0
            )
        ns = np.array(sorted(ok["n"].unique()), float)
        if ns.size:
            ref = ok.groupby("n")[metric].mean().clip(lower=1e-300)
            a = float(ref.iloc[0]) if len(ref) else 1.0
            for k, ls in (
                (0.5 if metric == "error" else 1.0, ":"),
                (0.25 if metric == "error" else 0.5, "-."),
            ):
                ax.plot(
                    ns,
                    a * (ns / ns[0]) ** -k,
                    ls,
                    color="0.5",
                    lw=0.8,
                    label=f"n^-{k:g} (reference)",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n (pairs)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6, loc="lower left")
    return savefig(fig, path)


def bound_vs_observed(bounds: pd.DataFrame, path: str | Path) -> Path:
    """Observed (1 - delta) quantile of the error vs the bound at delta, one panel per method."""
    groups = list(bounds.groupby(["method", "rho"], sort=False))
    ncol = max(1, len(groups))
    fig, axes = new_figure(ncol, width=3.6, height=3.4)
    for ax, ((method, rho), g) in zip(axes[0], groups):
        g = g.sort_values("n")
        color = method_color(method)
        ax.plot(
            g["n"],
            g["observed_quantile"],
            "o-",
            color=color,
            ms=3,
            label=f"observed ({g['metric'].iloc[0]})",
        )
        finite_c = np.isfinite(g["bound_certified"])
        if finite_c.any():
            ax.plot(
                g["n"][finite_c],
                g["bound_certified"][finite_c],
                "--",
                color="k",
                label="bound, certified lam0",
            )
        finite_a = np.isfinite(g["bound_attained"])
        if finite_a.any():
            ax.plot(
                g["n"][finite_a],
                g["bound_attained"][finite_a],
                ":",
                color="0.4",
                label="bound, attained lam0",
            )
        if not finite_c.any():
            ax.text(
                0.5, 0.9, "certified bound = inf", transform=ax.transAxes, ha="center", fontsize=7
            )
        bad = g[g["violated"].astype(bool)]
        if len(bad):
            ax.plot(bad["n"], bad["observed_quantile"], "rx", ms=8, label="violated")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n (pairs)")
        ax.set_title(f"{_label(method, rho)} ({g['bound'].iloc[0]})", fontsize=9)
        ax.legend(fontsize=6)
    return savefig(fig, path)


def slope_intervals(slopes: pd.DataFrame, path: str | Path) -> Path:
    """Fitted log-log slopes with 95% bootstrap intervals, per method and radius."""
    fig, axes = new_figure(2, width=4.8, height=0.35 * max(4, slopes.shape[0] // 2) + 1.2)
    for ax, metric, refs in zip(axes[0], ("error", "excess_risk"), ((-0.5, -0.25), (-1.0, -0.5))):
        s = slopes[slopes["metric"] == metric].reset_index(drop=True)
        y = np.arange(len(s))
        for i, r in s.iterrows():
            c = method_color(r["method"])
            if np.isfinite(r["slope"]):
                ax.errorbar(
                    r["slope"],
                    i,
                    xerr=[[r["slope"] - r["ci_lo"]], [r["ci_hi"] - r["slope"]]],
                    fmt="o",
                    color=c,
                    capsize=3,
                    ms=4,
                )
        for v, ls in zip(refs, (":", "-.")):
            ax.axvline(v, ls=ls, color="0.4", lw=0.9, label=f"{v:g}")
        ax.set_yticks(y)
        ax.set_yticklabels([_label(m, r) for m, r in zip(s["method"], s["rho"])], fontsize=7)
        ax.set_xlabel(f"log-log slope of mean {metric}")
        ax.legend(fontsize=7, title="rate", title_fontsize=7)
    return savefig(fig, path)


def draw_all(out: str | Path, *, prefix: str = "rates") -> list[Path]:
    """Read ``{prefix}_{runs,slopes,bounds}.csv`` under ``out`` and draw the three PNGs."""
    out = Path(out)
    runs = pd.read_csv(out / f"{prefix}_runs.csv")
    slopes = pd.read_csv(out / f"{prefix}_slopes.csv")
    bounds = pd.read_csv(out / f"{prefix}_bounds.csv")
    return [
        error_vs_n(runs, slopes, out / f"{prefix}_error.png"),
        bound_vs_observed(bounds, out / f"{prefix}_bounds.png"),
        slope_intervals(slopes, out / f"{prefix}_slopes.png"),
    ]
