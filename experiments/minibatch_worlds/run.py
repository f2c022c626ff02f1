"""The effective-radius ratio of the minibatch fixed point across random worlds
(docs/minibatch.md#a-rule-across-worlds, docs/theory.md#minibatch-objective).

For each of ``--worlds`` random finite worlds (rdpo_theory.worlds.World.random, an empirical
sample of 2000 draws), three intended KL radii and three WDPO penalty strengths, and each group
size B in {1, 2, 4, 8, 32, 128}:

* KLDPO ``normalized``, batch normaliser: the minimiser of G_B, exact (enumerated batch law)
  where the multisets number at most 3e6, else sampled (rdpo_theory.minibatch.fixed_point);
* KLDPO ``clipped`` (batch) and ``normalized`` with the running normaliser: sampled roots;
* WDPO ``sqrt-mean``, batch and running: sampled roots.

KL ratio: the radius whose exact KLDPO optimum is nearest to theta_B (spline through an exact
path) over the intended radius; ``off_path`` is the distance to that path, ``off_frac`` it over
``||theta_B - theta*(rho)||``. WDPO ratio: the penalty strength whose *full-batch* sqrt-mean root
is nearest to theta_B over rho0 (a cheap path: the W_2 exact solver is too slow for 20 worlds).
The clipped rows are then replaced, where the clip cannot bind, by the closed form (exact
KLDPO at tau B / (B - 1); ``how == "closed form"``), which has no Monte Carlo error.
Writes ``runs.csv`` (one row per cell), ``summary.csv`` (min / median / max over worlds and
radii per estimator and B) and ``summary.md`` (the docs' table). Run (parts in parallel, then
merged): ``python run.py --worlds 10 --tag _a``, ``python run.py --worlds 10 --start 10 --tag
_b``, then ``python run.py --clipped``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rdpo_theory.exact import kldpo as exact_kldpo
from rdpo_theory.minibatch import (
    Estimator,
    InputError,
    exact_fixed_point,
    fixed_point,
)
from rdpo_theory.studies.minibatch import collapse_radius, nearest_on_path
from rdpo_theory.worlds import World

warnings.filterwarnings("ignore", message="There is a performance drop")
BS = (1, 2, 4, 8, 32, 128)
KL_RADII = (0.003, 0.01, 0.03)
W_FRACTIONS = (0.05, 0.15, 0.35)
OUT = Path(__file__).parent


def world(k: int):
    rng = np.random.default_rng(np.random.SeedSequence([2026, k]))
    S, A = int(rng.integers(4, 9)), int(rng.integers(3, 5))
    w = World.random(S, A, 3, beta=1.0, theta_norm=float(rng.uniform(1.0, 2.5)), seed=1000 + k)
    return w.empirical(2000, k), S, A


def path_frame(radii, thetas):
    df = pd.DataFrame(np.asarray(thetas), columns=["theta0", "theta1", "theta2"])
    df.insert(0, "radius", radii)
    return df


def row(k, S, A, data, family, estimator, radius, B, how, fp, path, target) -> dict:
    """One table row: the ratio of the nearest radius on ``path`` to ``radius``, the distance
    to the path and its fraction of the displacement from ``target``."""
    rad, off = nearest_on_path(fp.theta, path, family)
    disp = float(np.linalg.norm(fp.theta - target))
    return dict(
        world=k,
        S=S,
        A=A,
        n_distinct=data.n,
        family="kl" if family == "kl" else "w",
        estimator=estimator,
        radius=radius,
        B=B,
        how=how,
        ratio=rad / radius,
        off_path=off,
        displacement=disp,
        off_frac=off / disp if disp > 0 else 0.0,
        mc_error=float(np.linalg.norm(fp.theta_se)),
    )


def one_world(k: int, batches: int, sets: int) -> list[dict]:
    data, S, A = world(k)
    rows = []
    kl_grid = sorted({*np.round(np.geomspace(1e-5, 0.08, 16), 7), *KL_RADII})
    sols = [exact_kldpo(data, rho=r, beta=1.0, solver="fast") for r in kl_grid]
    from rdpo_theory.exact import dpo

    d0 = dpo(data, beta=1.0, solver="fast").theta
    kl_path = path_frame([0.0, *kl_grid], [d0, *[s.theta for s in sols]])
    for rho in KL_RADII:
        ex = sols[kl_grid.index(rho)]
        tau = float(ex.dual)
        if tau <= 1e-9:  # the ball does not bind (max-loss regime): no KLDPO temperature
            continue
        for variant, norm in (
            ("normalized", "batch"),
            ("clipped", "batch"),
            ("normalized", "running"),
        ):
            est = Estimator("kldpo", variant, tau, norm)
            x0 = (
                ex.theta
                if variant == "normalized"
                else fixed_point(data, est, beta=1.0, batch_size=None).theta
            )
            for B in BS:
                how = "sampled"
                fp = None
                if norm == "batch":  # numpy objective: 3e6 multisets; torch roots: 2e4
                    try:
                        lim = 3_000_000 if variant == "normalized" else 20_000
                        fp = exact_fixed_point(
                            data, est, beta=1.0, batch_size=B, limit=lim, theta0=x0
                        )
                        how = "exact"
                    except InputError:
                        pass
                if fp is None:
                    fp = fixed_point(
                        data,
                        est,
                        beta=1.0,
                        batch_size=B,
                        batches=batches,
                        sets=sets,
                        theta0=x0,
                        seed=[k, B],
                    )
                rows.append(
                    row(
                        k,
                        S,
                        A,
                        data,
                        "kl",
                        f"kldpo {variant} {norm}",
                        rho,
                        B,
                        how,
                        fp,
                        kl_path,
                        ex.theta,
                    )
                )
    g = collapse_radius(data)
    w_grid = np.linspace(0.0, 0.45, 19) * g
    est_full = [Estimator("wdpo", "sqrt-mean", float(r)) if r > 0 else None for r in w_grid]
    w_thetas = [d0] + [fixed_point(data, e, beta=1.0, batch_size=None).theta for e in est_full[1:]]
    w_path = path_frame(list(w_grid), w_thetas)
    for f in W_FRACTIONS:
        rho0 = f * g
        full = fixed_point(
            data, Estimator("wdpo", "sqrt-mean", rho0), beta=1.0, batch_size=None
        ).theta
        for norm in ("batch", "running"):
            est = Estimator("wdpo", "sqrt-mean", rho0, norm)
            for B in BS:
                fp = fixed_point(
                    data,
                    est,
                    beta=1.0,
                    batch_size=B,
                    batches=batches,
                    sets=sets,
                    theta0=full,
                    seed=[k, B, 7],
                )
                rows.append(
                    row(
                        k,
                        S,
                        A,
                        data,
                        "w2",
                        f"wdpo sqrt-mean {norm}",
                        rho0,
                        B,
                        "sampled",
                        fp,
                        w_path,
                        full,
                    )
                )
    return rows


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    g = runs.groupby(["estimator", "B"])
    out = g["ratio"].agg(ratio_min="min", ratio_median="median", ratio_max="max", cells="count")
    out["off_frac_median"] = g["off_frac"].median()
    out["off_frac_max"] = g["off_frac"].max()
    out["mc_error_median"] = g["mc_error"].median()
    out["worlds"] = g["world"].nunique()
    return out.reset_index()


def combine() -> pd.DataFrame:
    """Every ``runs*.csv`` part, one row per cell (first part wins), written to ``runs.csv``
    and summarised in ``summary.csv``."""
    # closed-form clipped rows first, so they replace the sampled ones
    parts = [pd.read_csv(p) for p in sorted(OUT.glob("clipped*.csv"))]
    parts += [pd.read_csv(p) for p in sorted(OUT.glob("runs*.csv"))]
    runs = pd.concat(parts).drop_duplicates(["world", "estimator", "radius", "B"])
    runs = runs.sort_values(["world", "estimator", "radius", "B"])
    runs.to_csv(OUT / "runs.csv", index=False, float_format="%.6g")
    summary(runs).to_csv(OUT / "summary.csv", index=False, float_format="%.4g")
    (OUT / "summary.md").write_text(markdown(summary(runs)) + "\n")
    return runs


def clipped_rows(k: int) -> list[dict]:
    """The clipped KLDPO rows of world ``k`` from the closed form of
    :func:`rdpo_theory.minibatch.clipped_closed_form` (exact KLDPO at tau B / (B - 1), valid
    while the clip cannot bind; i.i.d. groups), where it applies: no Monte Carlo error."""
    from rdpo_theory.exact import dpo
    from rdpo_theory.minibatch import clipped_closed_form

    data, S, A = world(k)
    kl_grid = sorted({*np.round(np.geomspace(1e-5, 0.08, 16), 7), *KL_RADII})
    sols = [exact_kldpo(data, rho=r, beta=1.0, solver="fast") for r in kl_grid]
    d0 = dpo(data, beta=1.0, solver="fast").theta
    kl_path = path_frame([0.0, *kl_grid], [d0, *[s.theta for s in sols]])
    rows = []
    for rho in KL_RADII:
        ex = sols[kl_grid.index(rho)]
        if float(ex.dual) <= 1e-9:
            continue
        est = Estimator("kldpo", "clipped", float(ex.dual))
        for B in BS:
            fp = clipped_closed_form(data, est, beta=1.0, batch_size=B)
            if fp is not None:
                rows.append(
                    row(
                        k,
                        S,
                        A,
                        data,
                        "kl",
                        "kldpo clipped batch",
                        rho,
                        B,
                        "closed form",
                        fp,
                        kl_path,
                        ex.theta,
                    )
                )
    return rows


def markdown(s: pd.DataFrame) -> str:
    """The docs' table: ``ratio_min / ratio_median / ratio_max`` per estimator and B."""
    bs = sorted(s["B"].unique())
    lines = [
        "| estimator | " + " | ".join(f"B = {b}" for b in bs) + " |",
        "|---|" + "---|" * len(bs),
    ]
    for est, g in s.groupby("estimator", sort=False):
        g = g.set_index("B")
        cells = [
            f"{g.loc[b, 'ratio_min']:.2f} / **{g.loc[b, 'ratio_median']:.2f}** / "
            f"{g.loc[b, 'ratio_max']:.2f}"
            for b in bs
        ]
        lines.append(f"| {est} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worlds", type=int, default=20)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--sets", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--start", type=int, default=0, help="first world index")
    ap.add_argument("--tag", default="", help="suffix of the output files (parallel parts)")
    ap.add_argument("--combine", action="store_true", help="only merge the parts' tables")
    ap.add_argument(
        "--clipped", action="store_true", help="closed-form clipped rows of the worlds run so far"
    )
    a = ap.parse_args()
    if a.combine:
        combine()
        return
    if a.clipped:
        worlds = sorted(pd.concat(pd.read_csv(p) for p in OUT.glob("runs*.csv"))["world"].unique())
        rows = [r for k in tqdm(worlds, desc="clipped closed form") for r in clipped_rows(int(k))]
        pd.DataFrame(rows).to_csv(OUT / "clipped.csv", index=False, float_format="%.6g")
        combine()
        return
    from joblib import Parallel, delayed

    res = Parallel(n_jobs=a.jobs, return_as="generator")(
        delayed(one_world)(k, a.batches, a.sets) for k in range(a.start, a.start + a.worlds)
    )
    rows = []
    for r in tqdm(res, total=a.worlds, desc="worlds"):
        rows.extend(r)
        runs = pd.DataFrame(rows)
        runs.to_csv(OUT / f"runs{a.tag}.csv", index=False, float_format="%.6g")
        summary(runs).to_csv(OUT / f"summary{a.tag}.csv", index=False, float_format="%.4g")


if __name__ == "__main__":
    main()
