"""Inference, radius schedules and continuous features (docs/inference.md,
docs/theory.md#inference).

Three studies, each a sweep through :func:`rdpo_theory.studies.sweep.run_sweep` (joblib or a
dask cluster) on ``SeedSequence`` streams addressed by ``(base_seed, part, n, rep)``:

* **Coverage** (part ``"coverage"`` of :func:`run_study`). On a finite world whose
  population targets are exact, ``reps`` samples at each n. For DPO, KLDPO at two radii and
  WDPO (p = 1) at two radii: whether the nominal Wald intervals of
  :func:`rdpo_theory.inference.confidence` contain each component of the population optimum
  theta*(rho) and the population minimax value. Also whether the empirical-likelihood upper
  bounds (KL and chi-square balls of radius ``chi2_{1, 1 - 2 alpha} / (2 n)``) at the fixed
  theta*_DPO cover the population risk there, and whether exact KLDPO at that radius covers
  the minimal population risk.
* **Radius map** (part ``"map"``). Schedules ``rho_n = c n^-a`` for KL and W1: the
  error to theta*_DPO and to the population robust optimum at the same radius, the
  probability that P0 lies in the ball around P_n (exact on a finite world: the KL divergence
  and the W1 distance between the laws of the oriented feature ``s_y x``, which is all the
  loss sees), and the probability that the robust value at theta_hat is at least the
  population risk at theta_hat; log-log slopes with bootstrap intervals over replications.
* **Feature laws** (part ``"laws"``). The rates study's slopes on the continuous worlds of
  :mod:`rdpo_theory.continuous` (Gaussian, Laplace, Student-t 5 and 3), whose population
  optima are exact quadratures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import linprog

from ..continuous import LAWS, ContinuousWorld
from ..errors import InputError, SolverError
from ..inference import confidence, el_bound, el_radius, fit_exact
from ..losses import dpo_risk
from ..options import Interval, Options, validate_fields
from ..worlds import World
from .rates import METHODS as RATES_METHODS
from .rates import RatesContext, slopes
from .rates import run_one as rates_run_one
from .sweep import Task, fingerprint, run_sweep

CACHE_VERSION = "inference-1"

#: (method, rho) of the coverage study: DPO, KLDPO at two radii (nats), WDPO p = 1 at two
#: radii (feature units); all interior at the population (collapse: KL 0.1, W1 0.073).
REGIMES = (("dpo", 0.0), ("kldpo", 0.005), ("kldpo", 0.02), ("wdpo", 0.01), ("wdpo", 0.03))

#: Schedule constants c of rho_n = c n^-a: a small one, and the empirical-likelihood one
#: (KL: chi2_{1,0.9} / 2 = 1.353, the calibrated 95% upper bound at a = 1; W1: 0.4, about
#: z_{0.95} sd(l) / (beta ||theta*||) for this world).
MAP_CONSTANTS = {"kl": (0.02, 1.353), "w": (0.02, 0.4)}
EXPONENTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
LAW_RADII = {"kldpo": 0.02, "wdpo": 0.05}

#: Rounding allowance (nats) when a robust value is compared with a population risk.
COVER_TOL = 1e-12


def inference_world(seed: int = 0) -> World:
    """The study's finite world: 8 contexts, 4 actions, d = 3, ||theta*|| = 2, B = 8 (so the
    parameter ball is never active), beta = 1."""
    return World.random(8, 4, 3, theta_norm=2.0, B=8.0, seed=seed, name="inference")


@dataclass(frozen=True)
class InferenceConfig:
    """Sizes of the three studies (see the module docstring)."""

    ns: tuple = (500, 2000, 10_000, 100_000)
    reps: int = 1000
    map_ns: tuple = (500, 2000, 10_000, 100_000)
    map_reps: int = 200
    exponents: tuple = EXPONENTS
    map_constants: tuple = tuple(MAP_CONSTANTS.items())
    law_ns: tuple = (250, 1000, 4000, 16000, 64000)
    law_seeds: int = 40
    laws: tuple = LAWS
    level: float = field(
        default=0.95, metadata={"constraints": [Interval(float, 0.5, 1, closed="neither")]}
    )
    world_seed: int = 0
    base_seed: int = 0
    n_boot: int = 1000
    parts: tuple = ("coverage", "map", "laws")

    def __post_init__(self):
        validate_fields(self, owner="InferenceConfig")
        for name in ("ns", "map_ns", "law_ns"):
            ns = tuple(getattr(self, name))
            if len(set(ns)) < 2 or any(int(n) != n or n < 20 for n in ns):
                raise InputError(f"{name} needs at least two distinct integers >= 20, got {ns}")
        for name in ("reps", "map_reps", "law_seeds"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 2:
                raise InputError(f"The '{name}' parameter must be an int >= 2. Got {v!r} instead.")
        for part in self.parts:
            Options(("coverage", "map", "laws")).holds(part) or _bad("parts", part)
        for law in self.laws:
            if law not in LAWS:
                _bad("laws", law)


def _bad(name, value):
    raise InputError(f"The '{name}' parameter has an unknown entry {value!r}.")


def quick_config(**over) -> InferenceConfig:
    """The ``--quick`` sizes (about 3 minutes of CPU): coverage at n in {500, 2000} with 200
    replications, the map at n in {500, 2000, 10^4} with 30, the laws at n up to 3200 with 10
    seeds."""
    kw = dict(
        ns=(500, 2000),
        reps=200,
        map_ns=(500, 2000, 10_000),
        map_reps=30,
        law_ns=(200, 800, 3200),
        law_seeds=10,
        n_boot=300,
    )
    kw.update(over)
    return InferenceConfig(**kw)


def full_config(**over) -> InferenceConfig:
    """The issue's sizes: coverage with 1000 replications at n in {500, 2000, 1e4, 1e5}; the
    map with 200 replications at the same n; the laws at n up to 64000 with 40 seeds."""
    return InferenceConfig(**over)


# ---------------------------------------------------------------------------- context
@dataclass
class InferenceContext:
    """Population targets, built once and shared with every task (picklable)."""

    world: World
    level: float
    theta_dpo: np.ndarray
    risk_dpo: float
    targets: dict = field(default_factory=dict)  # (method, rho) -> (theta, value)
    map_targets: dict = field(default_factory=dict)  # (family, rho) -> theta
    oriented: tuple | None = None  # (points (K, d), group index of each Z point (|Z|,))
    laws: dict = field(default_factory=dict)  # law -> ContinuousWorld
    law_targets: dict = field(default_factory=dict)  # (law, method) -> theta (float)


def _population(world: World, method: str, rho: float):
    kw = {"candidates": None} if method == "wdpo" else {}
    return world.robust_optimum(method, rho, solver="fast", **kw)


def oriented_law(world: World) -> tuple[np.ndarray, np.ndarray]:
    """The distinct oriented features ``a = s_y x`` of Z (K, d) and the index of each point of
    Z among them (|Z|,). The DPO loss of a pair depends on it only through ``a``."""
    pop = world.population.data
    a = pop.signed_labels[:, None] * pop.X
    keys = np.round(a, 12)
    pts, inv = np.unique(keys, axis=0, return_inverse=True)
    return pts, inv.ravel()


def build_context(world: World, config: InferenceConfig) -> InferenceContext:
    """Solve every population target exactly (the world's Z with its P0 weights)."""
    dpo = _population(world, "dpo", 0.0)
    ctx = InferenceContext(
        world=world,
        level=config.level,
        theta_dpo=dpo.theta,
        risk_dpo=float(dpo.value),
        oriented=oriented_law(world),
    )
    if "coverage" in config.parts:
        for method, rho in REGIMES:
            r = _population(world, method, rho)
            if r.regime not in ("nominal", "interior", "penalty"):
                raise SolverError(f"population {method} at rho = {rho} is {r.regime!r}")
            ctx.targets[(method, rho)] = (r.theta, float(r.value))
    if "map" in config.parts:
        for fam, method in (("kl", "kldpo"), ("w", "wdpo")):
            for c in dict(config.map_constants).get(fam, ()):
                for a in config.exponents:
                    for n in config.map_ns:
                        rho = schedule(c, a, n)
                        if (fam, rho) not in ctx.map_targets:
                            ctx.map_targets[(fam, rho)] = _population(world, method, rho).theta
    if "laws" in config.parts:
        for law in config.laws:
            cw = ContinuousWorld(law)
            ctx.laws[law] = cw
            ctx.law_targets[(law, "dpo")] = cw.optimum("dpo")["theta"]
            for method, rho in LAW_RADII.items():
                opt = cw.optimum(method, rho)
                ctx.law_targets[(law, method)] = opt["theta"]
                ctx.law_targets[(law, method, "finite")] = opt["finite"]
    return ctx


def schedule(c: float, a: float, n: int) -> float:
    """``rho_n = c n^-a``."""
    return float(c) * float(n) ** (-float(a))


# ---------------------------------------------------------------------------- coverage
def coverage_task(params: dict, seed, ctx: InferenceContext) -> list[dict]:
    """One replication at one n: Wald coverage of every regime and the EL bounds."""
    n = int(params["n"])
    world = ctx.world
    data = world.empirical(n, seed)
    rows = []
    for method, rho in REGIMES:
        t_theta, t_value = ctx.targets[(method, rho)]
        base = {"regime": f"{method} {rho:g}", "method": method, "rho": rho}
        try:
            r = confidence(
                data,
                method=method,
                rho=rho or None,
                beta=world.beta,
                n_samples=n,
                radius=world.B,
                level=ctx.level,
                on_nonsmooth="nan",
            )
        except SolverError as exc:
            rows.append({**base, "quantity": "fit", "covered": np.nan, "reason": str(exc)[:200]})
            continue
        quantities = [(f"theta{j}", r.theta[j], r.se[j], r.ci[j], t_theta[j]) for j in range(3)]
        quantities.append(("value", r.value, r.value_se, r.value_ci, t_value))
        for q, est, se, ci, target in quantities:
            ok = bool(np.isfinite(se))
            rows.append(
                {
                    **base,
                    "quantity": q,
                    "estimate": float(est),
                    "se": float(se),
                    "target": float(target),
                    "covered": float(ci[0] <= target <= ci[1]) if ok else np.nan,
                    "smooth": ok,
                    "nonsmooth": r.info["nonsmooth"] or "",
                }
            )
    # empirical likelihood: the robust value at the fixed theta*_DPO against R(theta*_DPO)
    for div in ("kl", "chi2"):
        b = el_bound(
            ctx.theta_dpo, data, beta=world.beta, n_samples=n, level=ctx.level, divergence=div
        )
        rows.append(
            {
                "regime": f"el {div}",
                "method": "el",
                "rho": b["radius"],
                "quantity": f"el_{div}",
                "estimate": b["upper"],
                "target": ctx.risk_dpo,
                "covered": float(b["upper"] >= ctx.risk_dpo),
                "smooth": True,
            }
        )
    # and exact KLDPO at that radius against the minimal population risk
    r_el = el_radius(n, ctx.level)
    fit = fit_exact(data, method="kldpo", rho=r_el, beta=world.beta, theta_ref=None, radius=world.B)
    rows.append(
        {
            "regime": "el kl",
            "method": "el",
            "rho": r_el,
            "quantity": "el_min_kl",
            "estimate": float(fit.value),
            "target": ctx.risk_dpo,
            "covered": float(fit.value >= ctx.risk_dpo),
            "smooth": True,
        }
    )
    return rows


def coverage_summary(runs: pd.DataFrame, level: float) -> pd.DataFrame:
    """Coverage per (regime, n, quantity): the share of smooth replications whose interval
    (or bound) contains the target, its binomial standard error, the share of non-smooth
    replications, the mean SE against the Monte Carlo SD of the estimate, and
    ``within_goal``: |coverage - level| <= 0.015."""
    out = []
    for (regime, n, q), g in runs.groupby(["regime", "n", "quantity"], sort=False):
        cov = g["covered"].dropna()
        m = len(cov)
        c = float(cov.mean()) if m else np.nan
        row = {
            "regime": regime,
            "method": g["method"].iloc[0],
            "n": int(n),
            "quantity": q,
            "reps": len(g),
            "smooth_reps": m,
            "nonsmooth_share": 1 - m / len(g),
            "coverage": c,
            "binom_se": math.sqrt(c * (1 - c) / m) if m else np.nan,
            "level": level,
        }
        if "se" in g and g["se"].notna().any():
            row["mean_se"] = float(g["se"].mean())
            row["mc_sd"] = float(g["estimate"].std(ddof=1))
            row["se_ratio"] = row["mean_se"] / row["mc_sd"] if row["mc_sd"] > 0 else np.nan
        row["within_goal"] = bool(abs(c - level) <= 0.015) if m else False
        out.append(row)
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------- radius map
def _kl(p, q) -> float:
    pos = p > 0
    if np.any(q[pos] <= 0):
        return math.inf
    return float(np.sum(p[pos] * np.log(p[pos] / q[pos])))


def w1_discrete(points: np.ndarray, p: np.ndarray, q: np.ndarray) -> float:
    """Exact W1 distance between two laws ``p``, ``q`` on the same points (K, d), Euclidean
    ground cost, by the transport LP (HiGHS)."""
    keep = (p > 0) | (q > 0)
    pts, p, q = points[keep], p[keep], q[keep]
    K = pts.shape[0]
    C = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1)
    from scipy.sparse import eye, kron, vstack

    ones = np.ones((1, K))
    A = vstack([kron(eye(K), ones), kron(ones, eye(K))]).tocsr()
    res = linprog(C.ravel(), A_eq=A, b_eq=np.concatenate([p, q]), bounds=(0, None), method="highs")
    if res.status != 0:
        raise SolverError(f"W1 transport LP failed: {res.message}")
    return float(res.fun)


def map_task(params: dict, seed, ctx: InferenceContext) -> list[dict]:
    """One replication at one n: every schedule (family, c, a)."""
    n = int(params["n"])
    world = ctx.world
    pop = world.population.data
    full = world.empirical(n, seed, keep_zeros=True)
    pts, inv = ctx.oriented
    K = pts.shape[0]
    p0 = np.bincount(inv, weights=pop.weights, minlength=K)
    pn = np.bincount(inv, weights=full.weights, minlength=K)
    dist = {"kl": _kl(p0, pn), "w": w1_discrete(pts, p0, pn)}
    data = world.empirical(n, seed)
    rows = []
    for fam, method in (("kl", "kldpo"), ("w", "wdpo")):
        for c in params["constants"].get(fam, ()):
            for a in params["exponents"]:
                rho = schedule(c, a, n)
                row = {"family": fam, "c": c, "a": a, "radius": rho, "distance": dist[fam]}
                try:
                    r = fit_exact(data, method=method, rho=rho, beta=world.beta, radius=world.B)
                except SolverError as exc:
                    rows.append({**row, "ok": False, "reason": str(exc)[:200]})
                    continue
                risk = dpo_risk(r.theta, pop, beta=world.beta)
                rows.append(
                    {
                        **row,
                        "ok": True,
                        "regime": r.regime,
                        "err_dpo": float(np.linalg.norm(r.theta - ctx.theta_dpo)),
                        "err_robust": float(np.linalg.norm(r.theta - ctx.map_targets[(fam, rho)])),
                        "value": float(r.value),
                        "risk": risk,
                        "ball_covers": bool(dist[fam] <= rho),
                        # at the collapse both are log 2: equal up to rounding
                        "value_covers": bool(r.value >= risk - COVER_TOL),
                    }
                )
    return rows


def map_summary(runs: pd.DataFrame, *, n_boot: int, seed: int = 0, min_n: int | None = None):
    """Per schedule (family, c, a): log-log slopes of the mean errors with percentile
    bootstrap intervals over replications (:func:`rdpo_theory.studies.rates.slopes`), and the
    table of coverage probabilities per (family, c, a, n): ``ball_covers``, ``value_covers``
    and the share of ``collapsed`` fits. ``min_n`` leaves smaller n out of the slopes."""
    ok = runs[runs["ok"].astype(bool)].copy()
    ok["method"] = ok["family"] + "|" + ok["c"].astype(str) + "|" + ok["a"].astype(str)
    ok = ok.rename(columns={"rep": "seed"})
    ok["rho"] = ok["c"]
    parts = []
    for metric in ("err_dpo", "err_robust"):
        parts.append(slopes(ok, metric=metric, n_boot=n_boot, seed=seed, min_n=min_n))
    sl = pd.concat(parts, ignore_index=True)
    fam_c_a = sl["method"].str.split("|", expand=True)
    sl["family"], sl["c"], sl["a"] = fam_c_a[0], fam_c_a[1].astype(float), fam_c_a[2].astype(float)
    cov = (
        ok.groupby(["family", "c", "a", "n"])[["ball_covers", "value_covers"]].mean().reset_index()
    )
    collapsed = (
        ok.assign(collapsed=ok["regime"] == "collapse")
        .groupby(["family", "c", "a", "n"])["collapsed"]
        .mean()
    )
    cov = cov.merge(collapsed.reset_index(), on=["family", "c", "a", "n"])
    return sl.drop(columns=["method", "rho"]), cov


# ---------------------------------------------------------------------------- feature laws
def law_task(params: dict, seed, ctx: InferenceContext) -> dict:
    """One (law, method, n, seed) fit on raw continuous draws: the errors to the method's
    population optimum and to theta*_DPO."""
    law, method, n = params["law"], params["method"], int(params["n"])
    cw = ctx.laws[law]
    data = cw.sample(n, seed)
    rho = LAW_RADII.get(method, 0.0)
    try:
        r = fit_exact(data, method=method, rho=rho, beta=cw.beta, radius=cw.B)
    except SolverError as exc:
        return {"ok": False, "reason": str(exc)[:200]}
    th = float(r.theta[0])
    return {
        "ok": True,
        "rho": rho,
        "theta": th,
        "error": abs(th - ctx.law_targets[(law, method)]),
        "err_dpo": abs(th - ctx.law_targets[(law, "dpo")]),
        "dual": np.nan if r.dual is None else float(r.dual),
        "regime": r.regime,
        "population_finite": bool(ctx.law_targets.get((law, method, "finite"), True)),
    }


def law_slopes(runs: pd.DataFrame, *, n_boot: int, seed: int = 0) -> pd.DataFrame:
    """Slopes of the mean error to the population target (``error``) and to theta*_DPO
    (``err_dpo``) per (law, method), with bootstrap intervals over seeds."""
    ok = runs[runs["ok"].astype(bool)].copy()
    ok["law_method"] = ok["law"] + "|" + ok["method"]
    ok = ok.rename(columns={"method": "base_method"}).rename(columns={"law_method": "method"})
    parts = [slopes(ok, metric=m, n_boot=n_boot, seed=seed) for m in ("error", "err_dpo")]
    sl = pd.concat(parts, ignore_index=True)
    lm = sl["method"].str.split("|", expand=True)
    sl["law"], sl["method"] = lm[0], lm[1]
    finite = runs.groupby(["law", "method"])["population_finite"].first().reset_index()
    return sl.merge(finite, on=["law", "method"], how="left")


# ---------------------------------------------------------------------------- driver
@dataclass
class InferenceResult:
    config: InferenceConfig
    tables: dict
    n_computed: int = 0

    def __getitem__(self, name):
        return self.tables[name]


def run_study(
    config: InferenceConfig,
    *,
    jobs: int = 1,
    backend: str | None = None,
    cache_dir=None,
    progress: bool = True,
) -> InferenceResult:
    """Run the parts of ``config`` and return their tidy tables: ``inference_coverage_runs``,
    ``inference_coverage``, ``inference_map_runs``, ``inference_map_slopes``,
    ``inference_map_coverage``, ``inference_laws_runs``, ``inference_laws_slopes``,
    ``inference_laws_targets``."""
    world = inference_world(config.world_seed)
    ctx = build_context(world, config)
    ns = fingerprint(CACHE_VERSION, world.psi, world.theta_star, world.B, config.level)
    tables: dict = {}
    computed = 0
    common = dict(shared=ctx, jobs=jobs, backend=backend, progress=progress, cache_dir=cache_dir)
    if "coverage" in config.parts:
        tasks = [
            Task({"n": int(n), "rep": r}, (config.base_seed, 1, int(n), r))
            for n in config.ns
            for r in range(config.reps)
        ]
        res = run_sweep(
            coverage_task, tasks, namespace=f"inference-coverage-{ns}", desc="coverage", **common
        )
        computed += res.n_computed
        runs = res.frame()
        tables["inference_coverage_runs"] = runs
        tables["inference_coverage"] = coverage_summary(runs, config.level)
    if "map" in config.parts:
        ex = ",".join(f"{a:g}" for a in config.exponents)
        cs = ";".join(f"{f}:" + ",".join(f"{c:.10g}" for c in cc) for f, cc in config.map_constants)
        tasks = [
            Task(
                {"n": int(n), "rep": r, "exponents": ex, "constants": cs},
                (config.base_seed, 2, int(n), r),
            )
            for n in config.map_ns
            for r in range(config.map_reps)
        ]
        res = run_sweep(
            _map_task_str, tasks, namespace=f"inference-map-{ns}", desc="radius map", **common
        )
        computed += res.n_computed
        runs = res.frame().drop(columns=["exponents", "constants"])
        tables["inference_map_runs"] = runs
        sl, cov = map_summary(runs, n_boot=config.n_boot, seed=config.base_seed)
        tables["inference_map_slopes"] = sl
        tables["inference_map_coverage"] = cov
    if "laws" in config.parts:
        tasks = [
            Task(
                {"law": law, "method": m, "n": int(n), "seed": s},
                (
                    config.base_seed,
                    3,
                    LAWS.index(law),
                    ("dpo", "kldpo", "wdpo").index(m),
                    int(n),
                    s,
                ),
            )
            for law in config.laws
            for m in ("dpo", "kldpo", "wdpo")
            for n in config.law_ns
            for s in range(config.law_seeds)
        ]
        res = run_sweep(
            law_task, tasks, namespace=f"inference-laws-{ns}", desc="feature laws", **common
        )
        computed += res.n_computed
        runs = res.frame()
        tables["inference_laws_runs"] = runs
        tables["inference_laws_slopes"] = law_slopes(
            runs, n_boot=config.n_boot, seed=config.base_seed
        )
        tables["inference_laws_targets"] = pd.DataFrame(
            [
                {
                    "law": law,
                    "method": m,
                    "rho": LAW_RADII.get(m, 0.0),
                    "theta_target": ctx.law_targets[(law, m)],
                    "population_finite": bool(ctx.law_targets.get((law, m, "finite"), True)),
                }
                for law in config.laws
                for m in ("dpo", "kldpo", "wdpo")
            ]
        )
    return InferenceResult(config, tables, computed)


def _map_task_str(params: dict, seed, ctx: InferenceContext) -> list[dict]:
    """:func:`map_task` with the exponents and the constants (``"kl:c1,c2;w:c1,c2"``) passed
    as strings (task parameters must be JSON scalars)."""
    p = dict(params)
    p["exponents"] = [float(a) for a in str(params["exponents"]).split(",")]
    p["constants"] = {
        f: [float(c) for c in cc.split(",")]
        for f, cc in (part.split(":") for part in str(params["constants"]).split(";") if part)
    }
    return map_task(p, seed, ctx)


# ---------------------------------------------------------------------------- rates adapter
class ContinuousRatesContext(RatesContext):
    """A :class:`rdpo_theory.studies.rates.RatesContext` for a
    :class:`~rdpo_theory.continuous.ContinuousWorld`: the population risks of the rates
    study come from quadrature instead of a finite population, so
    :func:`rdpo_theory.studies.rates.run_one` runs on continuous worlds unchanged."""

    def family_risk(self, family: str, theta, rho: float, data=None) -> float:
        if data is not None:
            return super().family_risk(family, theta, rho, data)
        th = float(np.asarray(theta, dtype=float).ravel()[0])
        cw = self.world
        if family == "dpo":
            return cw.risk(th)
        if family == "kl":
            return cw.kl_value(th, rho)[0]
        if family == "w":
            return cw.w1_value(th, rho)
        raise InputError(f"family {family!r} has no population objective on a continuous world")


_FAMILY_METHOD = {"dpo": "dpo", "kl": "kldpo", "w": "wdpo"}


def continuous_rates_context(
    cw: ContinuousWorld,
    methods=("dpo", "kldpo-exact", "wdpo-exact"),
    rhos=(0.02,),
    *,
    solver: str = "fast",
) -> ContinuousRatesContext:
    """The rates study's context on a continuous world: exact (quadrature) population targets
    for the exact methods of :data:`rdpo_theory.studies.rates.METHODS` (families dpo, kl, w;
    the approximate methods and finite candidates need a finite population)."""
    ctx = ContinuousRatesContext(
        world=cw,
        beta=cw.beta,
        B=cw.B,
        tref=np.zeros(1),
        solver=solver,
        lam0=1.0,
        candidates=None,
        cost=None,
    )
    for name in methods:
        spec = RATES_METHODS[name]
        if not spec.exact or spec.family not in _FAMILY_METHOD:
            raise InputError(f"method {name!r} needs a finite world (exact dpo/kl/w methods only)")
        for rho in rhos if spec.robust else (0.0,):
            opt = cw.optimum(_FAMILY_METHOD[spec.family], rho)
            th = np.array([opt["theta"]])
            ctx.family_targets[(spec.family, rho)] = (th, float(opt["value"]))
            ctx.targets[(name, rho)] = th
    return ctx


def continuous_rates(
    cw: ContinuousWorld,
    *,
    ns,
    seeds: int,
    methods=("dpo", "kldpo-exact", "wdpo-exact"),
    rhos=(0.02,),
    base_seed: int = 0,
    n_boot: int = 1000,
    jobs: int = 1,
    backend: str | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rates study (:func:`rdpo_theory.studies.rates.run_one` per (n, seed, method, rho),
    :func:`~rdpo_theory.studies.rates.slopes`) on a continuous world. Returns ``(runs,
    slopes)`` in the rates study's columns."""
    ctx = continuous_rates_context(cw, methods, rhos)
    tasks = [
        Task({"n": int(n), "seed": s, "method": m, "rho": float(rho)}, (base_seed, int(n), s))
        for m in methods
        for rho in (rhos if RATES_METHODS[m].robust else (0.0,))
        for n in ns
        for s in range(seeds)
    ]
    ns_key = fingerprint(CACHE_VERSION, "continuous-rates", cw.law, cw.theta_star, cw.beta, cw.B)
    res = run_sweep(
        rates_run_one,
        tasks,
        namespace=ns_key,
        shared=ctx,
        jobs=jobs,
        backend=backend,
        progress=progress,
        desc=f"rates on {cw.name}",
    )
    runs = res.frame()
    return runs, slopes(runs, n_boot=n_boot, seed=base_seed)
