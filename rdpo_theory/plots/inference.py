"""Figures of the inference study, drawn from its CSV tables only (``inference_coverage.csv``,
``inference_map_slopes.csv``, ``inference_map_coverage.csv``, ``inference_laws_slopes.csv``;
see :mod:`rdpo_theory.studies.inference`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import method_color, new_figure, savefig

_EL_LABELS = {
    "el_kl": "EL, KL ball, fixed theta",
    "el_chi2": "EL, chi-square ball, fixed theta",
    "el_min_kl": "KLDPO value at chi2/(2n) vs min risk",
}


def _err(g: pd.DataFrame) -> np.ndarray:
    """Error-bar lengths (2, m) from ``slope, ci_lo, ci_hi`` (a percentile interval may
    exclude the point estimate when resamples tie: clipped at 0)."""
    lo = np.clip(g["slope"] - g["ci_lo"], 0, None)
    hi = np.clip(g["ci_hi"] - g["slope"], 0, None)
    return np.vstack([lo.to_numpy(), hi.to_numpy()])


def _nominal(ax, level: float):
    ax.axhline(level, color="k", lw=0.8)
    ax.axhspan(level - 0.015, level + 0.015, color="0.85", zorder=0)


def coverage_vs_n(cov: pd.DataFrame, path: str | Path) -> Path:
    """Coverage of the nominal intervals against n: theta (mean over components), the robust
    value, and the empirical-likelihood bounds; bars are 2 binomial standard errors, the grey
    band the goal (level +- 1.5 points)."""
    level = float(cov["level"].iloc[0])
    fig, axes = new_figure(3, width=4.6, height=3.8)
    styles = ["-", "--", ":", "-."]
    wald = cov[cov["method"] != "el"]
    for ax, pick, title in (
        (axes[0][0], wald["quantity"].str.startswith("theta"), "theta (Wald, mean of components)"),
        (axes[0][1], wald["quantity"] == "value", "robust value (Wald)"),
    ):
        sub = wald[pick]
        seen: dict[str, int] = {}
        for regime, g in sub.groupby("regime", sort=False):
            m = g.groupby("n").agg(coverage=("coverage", "mean"), reps=("smooth_reps", "mean"))
            se = np.sqrt(m["coverage"] * (1 - m["coverage"]) / m["reps"])
            method = g["method"].iloc[0]
            k = seen.get(method, 0)
            seen[method] = k + 1
            ax.errorbar(
                m.index,
                m["coverage"],
                yerr=2 * se,
                color=method_color(method),
                ls=styles[k % 4],
                marker="o",
                ms=3,
                capsize=2,
                label=regime,
            )
        _nominal(ax, level)
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("n")
        ax.set_ylabel("coverage")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    ax = axes[0][2]
    el = cov[cov["method"] == "el"]
    for k, (q, g) in enumerate(el.groupby("quantity", sort=False)):
        g = g.sort_values("n")
        ax.errorbar(
            g["n"],
            g["coverage"],
            yerr=2 * g["binom_se"],
            marker="o",
            ms=3,
            capsize=2,
            ls=styles[k % 4],
            label=_EL_LABELS.get(q, q),
        )
    _nominal(ax, level)
    ax.set_xscale("log")
    ax.set_title("one-sided EL upper bounds", fontsize=9)
    ax.set_xlabel("n")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=1)
    lo = min(0.9, float(cov["coverage"].min()) - 0.02)
    for a in axes[0]:
        a.set_ylim(lo, 1.005)
    return savefig(fig, path)


def radius_map(slopes: pd.DataFrame, cov: pd.DataFrame, path: str | Path) -> Path:
    """Top: fitted log-log slopes (95% bootstrap intervals) of the error to theta*_DPO and to
    the robust optimum at the same radius against the exponent a of rho_n = c n^-a. Bottom: at
    the largest n, the probability that P0 is in the ball and that the robust value at
    theta_hat bounds the population risk there, and the share of collapsed fits."""
    fig, axes = new_figure(2, 2, width=5.4, height=4.0)
    fams = {"kl": "KL", "w": "W1"}
    for col, fam in enumerate(("kl", "w")):
        ax = axes[0][col]
        s = slopes[slopes["family"] == fam]
        for k, ((metric, c), g) in enumerate(s.groupby(["metric", "c"], sort=False)):
            g = g.sort_values("a")
            off = (k - 1.5) * 0.02
            ok = np.isfinite(g["slope"])
            ax.errorbar(
                g["a"][ok] + off,
                g["slope"][ok],
                yerr=_err(g[ok]),
                marker="o" if metric == "err_dpo" else "s",
                ms=4,
                capsize=2,
                ls="-" if metric == "err_dpo" else "--",
                label=f"{'to theta*_DPO' if metric == 'err_dpo' else 'to theta*(rho_n)'}, c={c:g}",
            )
        for ref, lab in ((-0.5, "-1/2"), (-0.25, "-1/4")):
            ax.axhline(ref, color="0.5", lw=0.7, ls=":")
            ax.text(1.52, ref, lab, fontsize=7, va="center")
        ax.set_title(f"{fams[fam]}: error slope vs schedule exponent a", fontsize=9)
        ax.set_xlabel("a  (rho_n = c n^-a)")
        ax.set_ylabel("log-log slope of mean error")
        ax.legend(fontsize=6.5, loc="upper right")
        ax = axes[1][col]
        cf = cov[cov["family"] == fam]
        nmax = cf["n"].max()
        cf = cf[cf["n"] == nmax]
        for k, (c, g) in enumerate(cf.groupby("c", sort=False)):
            g = g.sort_values("a")
            ax.plot(
                g["a"],
                g["value_covers"],
                marker="o",
                ms=4,
                ls="-",
                color=f"C{k}",
                label=f"value(theta_hat) >= R(theta_hat), c={c:g}",
            )
            ax.plot(
                g["a"],
                g["ball_covers"],
                marker="x",
                ms=5,
                ls="--",
                color=f"C{k}",
                label=f"P0 in ball, c={c:g}",
            )
            ax.plot(
                g["a"],
                g["collapsed"],
                marker=".",
                ls=":",
                color=f"C{k}",
                label=f"collapsed to theta_ref, c={c:g}",
            )
        ax.axhline(0.95, color="k", lw=0.7)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{fams[fam]}: coverage at n = {int(nmax):,}", fontsize=9)
        ax.set_xlabel("a")
        ax.set_ylabel("probability")
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    fig.suptitle(_claim_line(slopes, cov), fontsize=8.5)
    return savefig(fig, path)


def _claim_line(slopes: pd.DataFrame, cov: pd.DataFrame) -> str:
    """Two lines on DRO-REBEL's trade-off, read from the tables: per family, the slope of the
    error to theta*_DPO and the probability that P0 is in the ball at the largest n, for the
    fastest-shrinking schedule and for the slowest-converging non-collapsed one."""
    s = slopes[slopes["metric"] == "err_dpo"]
    nmax = cov["n"].max()
    lines = []
    for fam, name in (("kl", "KL"), ("w", "W1")):
        g = s[(s["family"] == fam) & (s["slope"] < -0.01)]
        if not len(g):
            continue
        parts = []
        for row in (g.loc[g["a"].idxmax()], g.loc[g["slope"].idxmax()]):
            pick = (cov["family"] == fam) & (cov["c"] == row["c"]) & (cov["a"] == row["a"])
            cv = cov[pick & (cov["n"] == nmax)]
            ball = float(cv["ball_covers"].iloc[0]) if len(cv) else float("nan")
            parts.append(
                f"a={row['a']:g}, c={row['c']:g}: slope {row['slope']:.2f}, P0 in ball {ball:.2f}"
            )
        lines.append(f"{name}: " + "; ".join(parts))
    head = f"slope of the error to theta*_DPO, and P(P0 in ball) at n = {int(nmax):,}"
    return "\n".join([head, *lines])


def law_slopes(slopes: pd.DataFrame, path: str | Path) -> Path:
    """Slope map over feature laws: fitted slopes (95% bootstrap intervals) of the mean error
    to each method's population optimum and to theta*_DPO. Hollow markers: the population KL
    problem is infinite (its target is theta_ref by convention)."""
    fig, axes = new_figure(2, width=5.2, height=3.8)
    laws = list(dict.fromkeys(slopes["law"]))
    for ax, metric, title in zip(
        axes[0], ("error", "err_dpo"), ("to the method's population optimum", "to theta*_DPO")
    ):
        s = slopes[slopes["metric"] == metric]
        for k, (method, g) in enumerate(s.groupby("method", sort=False)):
            x = np.array([laws.index(v) for v in g["law"]]) + (k - 1) * 0.2
            fin = g["population_finite"].astype(bool).to_numpy()
            col = method_color(method)
            ax.errorbar(
                x,
                g["slope"],
                yerr=_err(g),
                fmt="none",
                ecolor=col,
                capsize=2,
            )
            ax.scatter(x[fin], g["slope"][fin], color=col, label=method, zorder=3)
            if (~fin).any():
                ax.scatter(
                    x[~fin],
                    g["slope"][~fin],
                    facecolors="white",
                    edgecolors=col,
                    zorder=3,
                    label=f"{method} (population KL infinite)",
                )
        for ref in (-0.5, -0.25, 0.0):
            ax.axhline(ref, color="0.5", lw=0.7, ls=":")
        ax.set_xticks(range(len(laws)))
        ax.set_xticklabels(laws)
        ax.set_title(f"error slope {title}", fontsize=9)
        ax.set_ylabel("log-log slope")
        ax.legend(fontsize=7)
    return savefig(fig, path)


def draw_all(out: str | Path, *, prefix: str = "inference") -> list[Path]:
    """Read the tables under ``out`` and draw the PNGs whose tables exist."""
    out = Path(out)
    paths = []
    if (out / f"{prefix}_coverage.csv").exists():
        cov = pd.read_csv(out / f"{prefix}_coverage.csv")
        paths.append(coverage_vs_n(cov, out / f"{prefix}_coverage.png"))
    if (out / f"{prefix}_map_slopes.csv").exists():
        paths.append(
            radius_map(
                pd.read_csv(out / f"{prefix}_map_slopes.csv"),
                pd.read_csv(out / f"{prefix}_map_coverage.csv"),
                out / f"{prefix}_radius_map.png",
            )
        )
    if (out / f"{prefix}_laws_slopes.csv").exists():
        paths.append(
            law_slopes(pd.read_csv(out / f"{prefix}_laws_slopes.csv"), out / f"{prefix}_laws.png")
        )
    return paths
