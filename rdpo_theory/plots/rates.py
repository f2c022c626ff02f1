"""Figures of the sample-complexity study, drawn from its CSV tables only
(``rates_runs.csv``, ``rates_slopes.csv``, ``rates_bounds.csv``; see
:mod:`rdpo_theory.studies.rates`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..methods import family
from . import legend_panel, method_color, method_label, new_figure, savefig

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
    fig, grid = new_figure(2, 2, width=5.4, height=2.6, gridspec_kw={"height_ratios": [3, 1.3]})
    axes = grid[:1]
    for ax, lax, metric, title in zip(
        axes[0],
        grid[1],
        ("error", "excess_risk"),
        (
            "error ||theta_n - theta_target||_2 (parameter units)",
            "excess population robust risk (nats)",
        ),
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
        ax.set_ylabel(title, fontsize=8)
        ax.set_title(f"mean {metric.replace('_', ' ')} over seeds (band: 10-90%)", fontsize=9)
        legend_panel(lax, *ax.get_legend_handles_labels(), fontsize=7, title="slope [95% CI]")
    return savefig(fig, path)


def bound_vs_observed(bounds: pd.DataFrame, path: str | Path) -> Path:
    """Observed (1 - delta) quantile of the error vs the bound at delta, one panel per method."""
    groups = list(bounds.groupby(["method", "rho"], sort=False))
    ncol = max(1, len(groups))
    fig, grid = new_figure(ncol, 2, width=3.8, height=2.1, gridspec_kw={"height_ratios": [3, 1]})
    for ax, lax, ((method, rho), g) in zip(grid[0], grid[1], groups):
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
        _clip_to_data(ax, g)
        bad = g[g["violated"].astype(bool)]
        if len(bad):
            ax.plot(bad["n"], bad["observed_quantile"], "rx", ms=8, label="violated")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n (pairs)")
        ax.set_title(f"{_label(method, rho)} ({g['bound'].iloc[0]})", fontsize=9)
        metric = g["metric"].iloc[0]
        ax.set_ylabel(
            f"{_METRIC_LABELS.get(metric, metric)}\n(1 - delta) quantile over seeds", fontsize=8
        )
        legend_panel(lax, *ax.get_legend_handles_labels(), fontsize=7)
    return savefig(fig, path)


#: y-axis text of the error metrics in ``rates_bounds.csv`` (parameter units: theta's norm)
_METRIC_LABELS = {
    "error": "error ||theta_n - theta||_2",
    "err_sigma": "error ||theta_n - theta*||_(Sigma_D + lam0 I)",
}

#: decades of headroom above the observed errors before a bound is drawn off scale
_DECADES_ABOVE = 4


def _clip_to_data(ax, g: pd.DataFrame) -> None:
    """Keep the y axis within ``_DECADES_ABOVE`` decades of the observed errors; a bound above
    that (Theorem 2 reaches 1e41) is marked by arrows at the top edge and its range written on
    the panel, instead of flattening the data into one line."""
    obs = g["observed_quantile"].to_numpy(float)
    obs = obs[np.isfinite(obs) & (obs > 0)]
    if not obs.size:
        return
    lo = 10 ** np.floor(np.log10(obs.min()) - 0.3)
    top = 10 ** np.ceil(np.log10(obs.max()) + _DECADES_ABOVE)
    bounds = pd.concat([g["bound_certified"], g["bound_attained"]]).to_numpy(float)
    bounds = bounds[np.isfinite(bounds)]
    ax.set_ylim(lo, max(top, bounds.max() * 3) if bounds.size and bounds.max() <= top else top)
    above = bounds[bounds > top]
    if above.size:
        ax.plot(g["n"], np.full(len(g), top / 1.6), "k^", ms=4, label="bound (off scale)")
        ax.text(
            0.5,
            0.80,
            f"axis clipped: bound {above.min():.1e} to {above.max():.1e}\n"
            f"lies above, {np.log10(above.min() / obs.max()):.0f}+ decades over the data",
            transform=ax.transAxes,
            ha="center",
            fontsize=7,
            bbox={"fc": "white", "ec": "0.6", "pad": 2},
        )


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
        ax.set_xlabel(f"log-log slope of mean {metric.replace('_', ' ')} in n (95% CI)")
        ax.margins(y=0.15)
        ax.legend(
            fontsize=7,
            title="reference rate",
            title_fontsize=7,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.25),
            ncol=2,
            frameon=False,
        )
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
