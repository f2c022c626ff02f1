"""Sample-complexity study: empirical estimation-error rates against the bounds
(docs/theory.md#bounds).

On a finite world every population quantity is exact: the targets theta* (DPO),
theta^W(rho) and theta^KL(rho) are exact population optima over Z, and an empirical law of n
draws is a weight vector on Z (``World.empirical``), so every exact solve costs O(|Z|)
whatever n is. For a geometric grid of n and S seeds the study records, per
(n, seed, method, rho):

* ``error = ||theta_n - theta_target||_2`` (the method's own population optimum),
* ``error_family``: the distance to the exact robust target of the method's family (differs
  from ``error`` only for the approximate algorithms),
* ``err_sigma = ||theta_n - theta_target||_{Sigma_D + lam0 I}`` (Proposition 1's norm),
* ``excess_risk``: the family's exact population robust objective at theta_n minus its value
  at the exact target (DPO risk; KL sup over the ball around P0; W sup over the ball),
* the solver status and whether the constraint ``||theta|| <= B`` is active;
* ``optimality_gap``: the exact solver's certified bound on its distance to the minimax value
  (nats; NaN for approximate methods). An exact answer that cannot be certified raises
  SolverError, and the run is recorded as an error (``ok = False``), never as a result.

:func:`slopes` fits ``log(mean error) ~ a + b log n`` per (method, rho) with a percentile
bootstrap over seeds; :func:`bounds_table` evaluates Proposition 1 / Theorems 1-2 at delta and
compares them with the observed ``(1 - delta)`` quantile over seeds.

Methods live in the registry :data:`METHODS` (name -> :class:`MethodSpec`); adding one is one
:func:`register_method` call. Runs go through :func:`rdpo_theory.studies.sweep.run_sweep`
(joblib, SeedSequence streams addressed by ``(base_seed, n, seed)``, per-run cache).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import options as O
from .. import theory as T
from ..data import PreferenceData
from ..errors import InputError, SolverError
from ..exact.wasserstein import default_cost
from ..methods import listed
from ..options import POSITIVE_INT, check
from ..worlds import BUILTIN_WORLDS, World, builtin_world
from .sweep import Task, fingerprint, run_sweep

#: Bump when a change alters per-run results, so old cache entries are not reused.
CACHE_VERSION = "rates-2"

QUICK_NS = (50, 110, 240, 530, 1200, 2600, 5800, 12800, 20000)
FULL_NS = (50, 120, 300, 700, 1700, 4000, 10000, 24000, 56000, 130000, 320000, 1000000)


# ---------------------------------------------------------------------------- method registry
@dataclass
class Fit:
    """An estimator's answer: ``theta`` (d,), a status string, the dual multiplier if any, and
    the exact solver's certified ``optimality_gap`` (nats; None for approximate methods)."""

    theta: np.ndarray
    status: str
    dual: float | None = None
    path: str = ""
    optimality_gap: float | None = None


@dataclass(frozen=True)
class MethodSpec:
    """A registered estimator.

    Attributes
    ----------
    name : str
    family : {"dpo", "kl", "w", "w-finite"}
        Which exact population objective measures its excess risk and gives ``error_family``.
    fit : callable ``(data: PreferenceData, ctx: RatesContext, rho: float) -> Fit``
        Must be a module-level function (pickled to workers).
    robust : bool
        Uses the radius rho (False: run once with rho = 0).
    exact : bool
        An exact solver (its target is the family's exact population optimum).
    bound : {"prop1", "thm1", "thm2"} or None
        Which published bound applies.
    description : str
    """

    name: str
    family: str
    fit: Callable[..., Fit]
    robust: bool = True
    exact: bool = True
    bound: str | None = None
    description: str = ""


METHODS: dict[str, MethodSpec] = {}
FAMILIES = ("dpo", "kl", "w", "w-finite")


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add (or replace) a method in :data:`METHODS`."""
    if spec.family not in FAMILIES:
        raise InputError(f"family must be one of {FAMILIES}, got {spec.family!r}")
    METHODS[spec.name] = spec
    return spec


def _with_fallback(ctx, fast_call, cvxpy_call) -> tuple[Any, str]:
    """Run the fast exact path; if it cannot certify its answer (SolverError), the cvxpy path.

    Both are exact solvers that raise unless optimal, so a fallback never lowers the standard;
    the returned path name is recorded in the run's ``path`` column."""
    if ctx.solver == "fast":
        try:
            return fast_call(), "fast"
        except SolverError:
            return cvxpy_call(), "cvxpy (fast path failed)"
    return cvxpy_call(), "cvxpy"


def _fit_dpo(data, ctx, rho) -> Fit:
    """Exact DPO on ``||theta|| <= B`` by ``exact.dpo`` on the context's path."""
    from ..exact import dpo

    kw = {"beta": ctx.beta, "theta_ref": ctx.tref, "radius": ctx.B}
    r, path = _with_fallback(
        ctx, lambda: dpo(data, solver="fast", **kw), lambda: dpo(data, solver="cvxpy", **kw)
    )
    return Fit(r.theta, r.status, path=path, optimality_gap=r.optimality_gap)


def _fit_kldpo(data, ctx, rho) -> Fit:
    from ..exact import kldpo

    kw = {"rho": rho, "beta": ctx.beta, "theta_ref": ctx.tref, "radius": ctx.B}
    # the fast path certifies its value with the exact tilted worst case (scalar root find)
    r, path = _with_fallback(
        ctx,
        lambda: kldpo(data, solver="fast", certificate="root", **kw),
        lambda: kldpo(data, solver="cvxpy", **kw),
    )
    return Fit(r.theta, r.status, r.dual, path, r.optimality_gap)


def _fit_wdpo(data, ctx, rho) -> Fit:
    from ..exact import wdpo

    kw = {
        "rho": rho,
        "beta": ctx.beta,
        "p": 1,
        "kappa": math.inf,
        "theta_ref": ctx.tref,
        "radius": ctx.B,
    }
    r, path = _with_fallback(
        ctx, lambda: wdpo(data, solver="fast", **kw), lambda: wdpo(data, solver="cvxpy", **kw)
    )
    return Fit(r.theta, r.status, r.dual, path, r.optimality_gap)


def _fit_wdpo_finite(data, ctx, rho) -> Fit:
    """Finite-candidate WDPO (candidates = all of Z); cvxpy only (no fast path exists)."""
    from ..exact import wdpo

    r = wdpo(
        data,
        rho=rho,
        beta=ctx.beta,
        p=1,
        kappa=math.inf,
        theta_ref=ctx.tref,
        radius=ctx.B,
        candidates=(ctx.candidates.X, ctx.candidates.y),
        solver="cvxpy",
    )
    return Fit(r.theta, r.status, r.dual, "cvxpy", r.optimality_gap)


def _approx_status(res) -> str:
    return "converged" if res.converged else "not_converged"


def _fit_alg1(data, ctx, rho, *, variant: str) -> Fit:
    from ..approx import wdpo

    r = wdpo(
        data,
        rho0=rho,
        beta=ctx.beta,
        variant=variant,
        penalty="closed-form",
        theta_ref=ctx.tref,
        **ctx.approx_options,
    )
    return Fit(r.theta, _approx_status(r), path="approx (torch, full batch)")


def _fit_alg2(data, ctx, rho, *, variant: str) -> Fit:
    from ..approx import kldpo

    r = kldpo(
        data,
        tau=ctx.tau[rho],
        beta=ctx.beta,
        variant=variant,
        theta_ref=ctx.tref,
        **ctx.approx_options,
    )
    return Fit(r.theta, _approx_status(r), ctx.tau[rho], "approx (torch, full batch)")


# Workers look methods up by name in this registry (the spec itself is never pickled), so a
# method registered at run time in ``__main__`` is visible to process backends only if it is
# registered at import of an importable module; ``backend="threading"`` always sees it.
register_method(
    MethodSpec(
        "dpo",
        "dpo",
        _fit_dpo,
        robust=False,
        bound="prop1",
        description="exact DPO (weighted logistic regression, ||theta|| <= B)",
    )
)
register_method(
    MethodSpec(
        "kldpo-exact",
        "kl",
        _fit_kldpo,
        bound="thm2",
        description="exact KLDPO at radius rho (nats)",
    )
)
register_method(
    MethodSpec(
        "wdpo-exact",
        "w",
        _fit_wdpo,
        bound="thm1",
        description="exact WDPO, continuous x, p = 1, labels fixed",
    )
)
register_method(
    MethodSpec(
        "wdpo-finite",
        "w-finite",
        _fit_wdpo_finite,
        bound="thm1",
        description="exact WDPO, p = 1, adversary on the candidates Z",
    )
)
register_method(
    MethodSpec(
        "wdpo-alg1",
        "w",
        partial(_fit_alg1, variant="sqrt-mean"),
        exact=False,
        description="Algorithm 1 (sqrt-mean gradient regulariser), rho0 = rho",
    )
)
register_method(
    MethodSpec(
        "wdpo-per-pair",
        "w",
        partial(_fit_alg1, variant="per-pair"),
        exact=False,
        description="Algorithm 1, per-pair variant (paper's code), rho0 = rho",
    )
)
register_method(
    MethodSpec(
        "kldpo-alg2",
        "kl",
        partial(_fit_alg2, variant="normalized"),
        exact=False,
        description="Algorithm 2 (normalized weights), tau = population lam*",
    )
)
register_method(
    MethodSpec(
        "kldpo-clipped",
        "kl",
        partial(_fit_alg2, variant="clipped"),
        exact=False,
        description="Algorithm 2, clipped weights (paper's code), tau = lam*",
    )
)

QUICK_METHODS = listed("rates-quick")  # the method lists live in rdpo_theory.methods
FULL_METHODS = listed("rates-full")


# ---------------------------------------------------------------------------- study context
@dataclass
class RatesContext:
    """Everything a run needs besides its (n, seed, method, rho): picklable, built once."""

    world: World
    beta: float
    B: float
    tref: np.ndarray
    solver: str
    lam0: float
    candidates: PreferenceData
    cost: np.ndarray
    targets: dict = field(default_factory=dict)  # (method, rho) -> theta
    family_targets: dict = field(default_factory=dict)  # (family, rho) -> (theta, risk)
    tau: dict = field(default_factory=dict)  # rho -> population KLDPO lam* (Algorithm 2's tau)
    approx_options: dict = field(default_factory=dict)

    def family_risk(self, family: str, theta, rho: float, data=None) -> float:
        """The family's exact population (or ``data``) robust risk at ``theta``
        (:func:`rdpo_theory.exact.robust_risk`)."""
        from ..exact import robust_risk

        data = self.world.population.data if data is None else data
        kw = {"beta": self.beta, "theta_ref": self.tref}
        if family == "dpo":
            return robust_risk(theta, data, method="dpo", **kw)
        if family == "kl":
            return robust_risk(theta, data, method="kldpo", rho=rho, **kw)
        if family == "w":
            return robust_risk(theta, data, method="wdpo", rho=rho, **kw)
        if family == "w-finite":
            return robust_risk(
                theta,
                data,
                method="wdpo",
                rho=rho,
                candidates=self.candidates,
                cost=self.cost,
                **kw,
            )
        raise InputError(f"unknown family {family!r}")


def _family_fit(family: str):
    return {"dpo": _fit_dpo, "kl": _fit_kldpo, "w": _fit_wdpo, "w-finite": _fit_wdpo_finite}[family]


def build_context(
    world: World,
    methods: Sequence[str],
    rhos: Sequence[float],
    *,
    solver: str = "fast",
    approx_options: dict | None = None,
) -> RatesContext:
    """Solve every population target exactly (the world's Z with P0 weights)."""
    pop = world.population.data
    Xc, yc = world.candidates()
    ctx = RatesContext(
        world=world,
        beta=world.beta,
        B=world.B,
        tref=np.asarray(world.theta_ref, float),
        solver=solver,
        lam0=T.coverage_p0(pop),
        candidates=PreferenceData(Xc, yc),
        cost=default_cost(pop.X, pop.y, Xc, yc, math.inf),
        approx_options=dict(
            approx_options or {"max_steps": 4000, "gtol": 1e-7, "learning_rate": 0.05}
        ),
    )
    for name in methods:
        spec = METHODS[name]
        for rho in rhos if spec.robust else [0.0]:
            fk = (spec.family, rho)
            if fk not in ctx.family_targets:
                try:
                    f = _family_fit(spec.family)(pop, ctx, rho)
                except SolverError as exc:
                    raise SolverError(
                        f"the population target of {name!r} at rho = {rho} could not be "
                        f"certified: {exc}",
                        status=exc.status,
                        hint="leave this method out (--methods) or change rho",
                    ) from exc
                ctx.family_targets[fk] = (f.theta, ctx.family_risk(spec.family, f.theta, rho))
                if spec.family == "kl":
                    if not f.dual or f.dual <= 0:
                        raise InputError(
                            f"rho = {rho} puts population KLDPO in the max-loss regime "
                            "(lam* = 0); choose a smaller rho"
                        )
                    ctx.tau[rho] = float(f.dual)
    for name in methods:  # approximate methods target their own population optimum
        spec = METHODS[name]
        for rho in rhos if spec.robust else [0.0]:
            if spec.exact:
                ctx.targets[(name, rho)] = ctx.family_targets[(spec.family, rho)][0]
            else:
                ctx.targets[(name, rho)] = spec.fit(pop, ctx, rho).theta
    return ctx


# ---------------------------------------------------------------------------- one run
def run_one(params: dict, seed, ctx: RatesContext) -> dict:
    """One (n, seed, method, rho) run: draw the empirical law, fit, measure. Sweep function."""
    n, method, rho = int(params["n"]), params["method"], float(params["rho"])
    spec = METHODS[method]
    data = ctx.world.empirical(n, seed)
    row: dict[str, Any] = {"family": spec.family, "support": data.n}
    t0 = time.perf_counter()
    try:
        fit = spec.fit(data, ctx, rho)
    except SolverError as exc:
        row.update(
            status=f"error: {exc.status}",
            reason=str(exc)[:500],
            ok=False,
            seconds=time.perf_counter() - t0,
        )
        return row
    row["seconds"] = time.perf_counter() - t0
    target = ctx.targets[(method, rho)]
    ftheta, frisk = ctx.family_targets[(spec.family, rho)]
    v = fit.theta - target
    Sigma = data.second_moment() + ctx.lam0 * np.eye(data.d)
    row.update(
        status=fit.status,
        path=fit.path,
        ok=True,
        error=float(np.linalg.norm(v)),
        error_family=float(np.linalg.norm(fit.theta - ftheta)),
        err_sigma=float(np.sqrt(max(v @ Sigma @ v, 0.0))),
        excess_risk=ctx.family_risk(spec.family, fit.theta, rho) - frisk,
        theta_norm=float(np.linalg.norm(fit.theta)),
        on_boundary=bool(np.linalg.norm(fit.theta) >= ctx.B * (1 - 1e-6)),
        dual=np.nan if fit.dual is None else float(fit.dual),
        optimality_gap=np.nan if fit.optimality_gap is None else float(fit.optimality_gap),
    )
    return row


# ---------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class RatesConfig:
    """A rates study.

    Parameters
    ----------
    world : str
        A built-in world name (:data:`rdpo_theory.worlds.BUILTIN_WORLDS`).
    world_seed : int
    ns : sequence of int >= 2
        Sample sizes (sorted, distinct).
    seeds : int >= 2
        Seeds per n.
    rhos : sequence of float > 0
        Radii of the robust methods (nats for KL, x-distance for W).
    methods : sequence of str
        Names in :data:`METHODS`.
    delta : float in (0, 1)
        Confidence of the bounds (observed quantile 1 - delta).
    base_seed : int >= 0
    solver : {"fast", "cvxpy"}
        Exact robust solver path.
    n_boot : int
        Bootstrap resamples for slope intervals.
    """

    world: str = O.option(
        "random", help="built-in world", choices=sorted(BUILTIN_WORLDS), metavar="WORLD"
    )
    world_seed: int = O.option(0, help="seed of the world", constraints=O.NONNEGATIVE_INT)
    ns: tuple = O.option(QUICK_NS, help="sample sizes (integers >= 2, two distinct)", cli=False)
    seeds: int = O.option(20, help="seeds per n", constraints=[O.Interval(int, 2, None)])
    rhos: tuple = O.option(
        (0.005,), help="radii of the robust methods (nats for KL, x-distance for W)", cli=False
    )
    methods: tuple = O.option(QUICK_METHODS, help="names in METHODS", cli=False)
    delta: float = O.option(
        0.05, help="confidence of the bounds (observed quantile 1 - delta)", constraints=O.OPEN_UNIT
    )
    base_seed: int = O.option(0, help="root of the random streams", constraints=O.NONNEGATIVE_INT)
    solver: str = O.option("fast", help="exact robust solver path", choices=("fast", "cvxpy"))
    n_boot: int = O.option(
        1000, help="bootstrap resamples for the slope intervals", constraints=O.POSITIVE_INT
    )

    def __post_init__(self):
        O.validate_fields(self)
        ns = tuple(self.ns)
        if not ns:
            raise InputError("ns is empty: give at least two sample sizes")
        for n in ns:
            O.check("ns", n, [O.Interval(int, 2, None)], owner="RatesConfig")
        if len(set(ns)) < 2:
            raise InputError(f"ns needs at least two distinct sample sizes, got {ns}")
        rhos = tuple(self.rhos)
        if not rhos:
            raise InputError("rhos is empty: give at least one radius")
        for r in rhos:
            O.check("rho", r, O.POSITIVE, owner="RatesConfig")
        methods = tuple(self.methods)
        if not methods:
            raise InputError("methods is empty")
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise InputError(f"methods {unknown} are unknown; known: {sorted(METHODS)}")
        object.__setattr__(self, "ns", tuple(sorted(int(n) for n in set(ns))))
        object.__setattr__(self, "rhos", tuple(float(r) for r in rhos))
        object.__setattr__(self, "methods", methods)

    def make_world(self) -> World:
        return builtin_world(self.world, self.world_seed)

    def tasks(self) -> list[Task]:
        out = []
        for method in self.methods:
            spec = METHODS[method]
            for rho in self.rhos if spec.robust else (0.0,):
                for n in self.ns:
                    for s in range(self.seeds):
                        out.append(
                            Task(
                                {"n": n, "seed": s, "method": method, "rho": rho},
                                (self.base_seed, n, s),
                            )
                        )
        return out


def quick_config(**over) -> RatesConfig:
    """The ``--quick`` study: 9 n in [50, 20000], 20 seeds, DPO, KLDPO, WDPO (exact, fast
    paths) and Algorithms 1-2, rho = 0.005 (below the radius where the targets collapse to 0)."""
    return RatesConfig(**over)


def full_config(**over) -> RatesConfig:
    """The ``--full`` study: 12 n in [50, 1e6], 20 seeds, every method in FULL_METHODS,
    rho in {0.003, 0.01}."""
    kw = {"ns": FULL_NS, "methods": FULL_METHODS, "rhos": (0.003, 0.01)}
    kw.update(over)
    return RatesConfig(**kw)


# ---------------------------------------------------------------------------- analysis
def slopes(
    runs: pd.DataFrame,
    *,
    metric: str = "error",
    n_boot: int = 1000,
    seed: int = 0,
    min_n: int | None = None,
) -> pd.DataFrame:
    """Log-log slope of the mean ``metric`` against n, per (method, rho), with a bootstrap CI.

    The point estimate is the least-squares slope of ``log mean_s metric(n, s)`` on ``log n``;
    the 95% interval is the percentile interval over ``n_boot`` resamples of the seeds (with
    replacement, the same seed set at every n: seeds are the independent unit). Runs that did
    not solve are left out of the means at their n; a (method, rho) whose mean is <= 0 at some
    n (e.g. a collapsed target with zero error) gets NaN.

    Returns
    -------
    DataFrame with ``method, rho, metric, slope, ci_lo, ci_hi, n_min, n_max, seeds,
    contains_half, contains_quarter``.
    """
    check("n_boot", n_boot, POSITIVE_INT, owner="slopes")
    ok = runs[runs["ok"].astype(bool)] if "ok" in runs else runs
    if min_n is not None:
        ok = ok[ok["n"] >= min_n]
    out = []
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    for (method, rho), g in ok.groupby(["method", "rho"], sort=False):
        M = g.pivot_table(index="seed", columns="n", values=metric, aggfunc="first")
        M = M.dropna(axis=0, how="all")  # a failed run is a NaN cell: nan-means skip it
        ns = M.columns.to_numpy(dtype=float)
        A = M.to_numpy()
        row = {
            "method": method,
            "rho": rho,
            "metric": metric,
            "n_min": int(ns.min()),
            "n_max": int(ns.max()),
            "seeds": A.shape[0],
        }
        if A.shape[0] < 2 or ns.size < 2 or not np.all(np.nanmean(A, axis=0) > 0):
            row.update(slope=np.nan, ci_lo=np.nan, ci_hi=np.nan)
        else:
            x = np.log(ns)
            xc = x - x.mean()

            idx = rng.integers(0, A.shape[0], size=(n_boot, A.shape[0]))
            with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resampled columns
                boots = (np.log(np.nanmean(A[idx], axis=1)) @ xc) / (xc @ xc)
            boots = boots[np.isfinite(boots)]
            row.update(
                slope=float((np.log(np.nanmean(A, axis=0)) @ xc) / (xc @ xc)),
                ci_lo=float(np.quantile(boots, 0.025)),
                ci_hi=float(np.quantile(boots, 0.975)),
            )
        row["contains_half"] = bool(row["ci_lo"] <= -0.5 <= row["ci_hi"])
        row["contains_quarter"] = bool(row["ci_lo"] <= -0.25 <= row["ci_hi"])
        out.append(row)
    return pd.DataFrame(out)


def constants_table(ctx: RatesContext, runs: pd.DataFrame, config: RatesConfig) -> pd.DataFrame:
    """Per (method, rho): the bound's constants, with the coverage bracket.

    Columns: ``method, rho, bound, d, beta, B, gamma, K, lam0_lower, lam0_upper,
    lam0_method, lam_lo, lam_hi, lam_lo_method``.
    """
    w = ctx.world
    pop = w.population.data
    cov: dict = {}
    rows = []
    for method in config.methods:
        spec = METHODS[method]
        if spec.bound is None:
            continue
        for rho in config.rhos if spec.robust else (0.0,):
            r = {
                "method": method,
                "rho": rho,
                "bound": spec.bound,
                "d": w.dim,
                "beta": ctx.beta,
                "B": ctx.B,
                "gamma": T.gamma(ctx.beta, ctx.B),
                "K": T.K(ctx.beta, ctx.B),
                "lam_lo": np.nan,
                "lam_hi": np.nan,
                "lam_lo_method": "",
            }
            if spec.family == "dpo":
                r.update(lam0_lower=ctx.lam0, lam0_upper=ctx.lam0, lam0_method="exact")
            else:
                key = (spec.family, rho)
                if key not in cov:
                    if spec.family == "kl":
                        cov[key] = T.coverage_kl(pop, rho)
                    elif spec.family == "w":
                        cov[key] = T.coverage_wasserstein(pop, rho)
                    else:
                        cov[key] = T.coverage_wasserstein(
                            pop, rho, candidates=ctx.candidates, cost=ctx.cost
                        )
                c = cov[key]
                r.update(
                    lam0_lower=c.lower,
                    lam0_upper=c.upper,
                    lam0_method=f"{c.lower_method}; {c.upper_method}",
                )
            if spec.bound == "thm2":
                g = runs[(runs["method"] == method) & (runs["rho"] == rho) & runs["ok"]]
                duals = np.concatenate([g["dual"].to_numpy(float), [ctx.tau[rho]]])
                duals = duals[np.isfinite(duals) & (duals > 0)]
                r.update(
                    lam_lo=float(duals.min()) if duals.size else np.nan,
                    lam_hi=T.kl_multiplier_upper(rho, ctx.beta, ctx.B),
                    lam_lo_method="estimate: smallest observed lam* (population and runs)",
                )
            rows.append(r)
    return pd.DataFrame(rows)


def bound_values(const: pd.Series, n, delta: float, which: str) -> np.ndarray:
    """The bound of a constants row at sample sizes n, using ``lam0_lower`` (``which =
    "certified"``: a valid bound whenever the reconstruction is) or ``lam0_upper``
    (``"attained"``: the smallest the bound can be). ``inf`` where lam0 is 0."""
    lam0 = const["lam0_lower"] if which == "certified" else const["lam0_upper"]
    n = np.asarray(n, dtype=float)
    if not lam0 > 0:
        return np.full(n.shape, np.inf)
    b = const["bound"]
    if b == "prop1":
        return T.proposition1(n, int(const["d"]), delta, const["beta"], const["B"], lam0)
    if b == "thm1":
        return T.theorem1(n, delta, const["beta"], const["B"], lam0)
    if b == "thm2":
        if not const["lam_lo"] > 0:
            return np.full(n.shape, np.inf)
        return T.theorem2(
            n, delta, const["beta"], const["B"], lam0, const["lam_lo"], const["lam_hi"]
        )
    raise InputError(f"unknown bound {b!r}")


def bounds_table(runs: pd.DataFrame, constants: pd.DataFrame, *, delta: float) -> pd.DataFrame:
    """Bound vs observed ``(1 - delta)`` quantile over seeds, per (method, rho, n).

    The observed metric is ``err_sigma`` for Proposition 1 (its norm ``Sigma_D + lam0 I``) and
    ``error`` for Theorems 1-2. ``violated`` marks an observed quantile above the certified
    bound (a contradiction of the reconstructed statement); ``above_attained`` marks one above
    the bound evaluated with the attained (optimistic) coverage value.
    """
    ok = runs[runs["ok"].astype(bool)]
    out = []
    for _, c in constants.iterrows():
        g = ok[(ok["method"] == c["method"]) & (ok["rho"] == c["rho"])]
        metric = "err_sigma" if c["bound"] == "prop1" else "error"
        for n, gn in g.groupby("n"):
            q = float(np.quantile(gn[metric], 1 - delta))
            bc = float(bound_values(c, n, delta, "certified"))
            ba = float(bound_values(c, n, delta, "attained"))
            out.append(
                {
                    "method": c["method"],
                    "rho": c["rho"],
                    "n": int(n),
                    "bound": c["bound"],
                    "metric": metric,
                    "observed_quantile": q,
                    "bound_certified": bc,
                    "bound_attained": ba,
                    "violated": bool(q > bc),
                    "above_attained": bool(q > ba),
                    "runs_above_certified": int(np.sum(gn[metric] > bc)),
                    "seeds": int(len(gn)),
                }
            )
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------- the study
@dataclass
class RatesResult:
    """Tables of a rates study (all tidy DataFrames)."""

    runs: pd.DataFrame
    slopes: pd.DataFrame
    constants: pd.DataFrame
    bounds: pd.DataFrame
    seconds: float
    n_cached: int
    n_computed: int

    def tables(self, prefix: str = "rates") -> dict[str, pd.DataFrame]:
        """The four tables by file stem: ``{prefix}_runs``, ``_slopes``, ``_constants``,
        ``_bounds`` (the command layer writes them as CSV)."""
        return {
            f"{prefix}_{k}": getattr(self, k) for k in ("runs", "slopes", "constants", "bounds")
        }


def run_study(
    config: RatesConfig,
    *,
    jobs: int = 1,
    backend: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> RatesResult:
    """Run (or resume) a rates study and return its tables.

    Parameters
    ----------
    config : RatesConfig
    jobs : int
        joblib ``n_jobs``.
    backend : str, optional
        joblib backend (``"loky"``, ``"threading"``, ``"dask"``, ``"ray"``; see
        :mod:`rdpo_theory.studies.sweep`).
    cache_dir : path, optional
        Per-run cache root; reruns and extended grids reuse finished runs.
    progress : bool
    """
    t0 = time.perf_counter()
    world = config.make_world()
    ctx = build_context(world, config.methods, config.rhos, solver=config.solver)
    namespace = "rates-" + fingerprint(
        CACHE_VERSION,
        world.psi,
        world.mu0,
        world.pi0,
        world.rewards,
        world.beta,
        world.B,
        world.theta_ref,
        config.solver,
        ctx.approx_options,
    )
    res = run_sweep(
        run_one,
        config.tasks(),
        namespace=namespace,
        cache_dir=cache_dir,
        shared=ctx,
        jobs=jobs,
        backend=backend,
        progress=progress,
        desc="rates",
    )
    runs = res.frame()
    for col in ("error", "error_family", "err_sigma", "excess_risk", "theta_norm", "dual"):
        if col not in runs:
            runs[col] = np.nan
    runs["ok"] = runs["ok"].astype(bool)
    runs.insert(0, "world", world.name)
    sl = pd.concat(
        [slopes(runs, metric=m, n_boot=config.n_boot) for m in ("error", "excess_risk")],
        ignore_index=True,
    )
    const = constants_table(ctx, runs, config)
    bnd = bounds_table(runs, const, delta=config.delta)
    return RatesResult(runs, sl, const, bnd, time.perf_counter() - t0, res.n_cached, res.n_computed)
