"""What Algorithms 1 and 2 optimise at the batch sizes language-model training uses
(docs/theory.md#minibatch-fixed-point).

On the approximation study's world (:func:`rdpo_theory.studies.approx_vs_exact.make_world`, an
empirical sample of size n), for an intended radius (KL radius rho with ``tau = lam*(rho)``;
W_2 radius rho with ``rho0 = rho``) and each estimator (KLDPO ``normalized`` and ``clipped``,
WDPO ``sqrt-mean`` and ``per-pair``; normaliser ``batch`` or ``running``) and normalisation
group size B, the minibatch fixed point ``theta_B`` (:func:`rdpo_theory.minibatch.fixed_point`)
is compared with the exact robust solutions:

* ``theta_dist``: ``||theta_B - theta*(rho)||``, the distance to the intended exact optimum;
* ``effective_radius``: the radius whose exact optimum is nearest to ``theta_B`` (KLDPO: the
  exact KL path; WDPO: the exact continuous W_2 path, and ``effective_radius_w1`` on the W_1
  path), with ``off_path`` the distance from ``theta_B`` to that path;
* ``implied_rho`` (KLDPO): ``KL(q || p)`` of the full-data weights at ``theta_B``;
* ``robust_gap``: the exact robust objective at ``theta_B`` under the intended radius minus
  the optimum (nats);
* ``reward_alpha=*``: the mixed-reward evaluation of the approximation study.

Each has a Monte Carlo standard error (``*_se``) from independent batch sets. The layouts of
:data:`rdpo_theory.minibatch.LAYOUTS` map to their group sizes; a table of long SGD runs with
iterate averaging checks the fixed points.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ..errors import SolverError
from ..minibatch import LAYOUTS, Estimator, fixed_point
from .approx_vs_exact import ApproxConfig, evaluate_rewards, exact_kl, make_world


def kl_robust_value(theta, data, rho, beta) -> float:
    """The exact KL robust risk at ``theta`` (:func:`rdpo_theory.exact.robust_risk`)."""
    from ..exact import robust_risk

    return robust_risk(theta, data, method="kldpo", rho=rho, beta=beta)


def w2_robust_value(theta, data, rho, beta) -> float:
    """The exact continuous W_2 robust risk at ``theta``."""
    from ..exact import robust_risk

    return robust_risk(theta, data, method="wdpo", rho=rho, p=2.0, beta=beta)


#: (method, variant, normalizer) of the study.
ESTIMATORS = (
    ("kldpo", "normalized", "batch"),
    ("kldpo", "normalized", "running"),
    ("kldpo", "clipped", "batch"),
    ("wdpo", "sqrt-mean", "batch"),
    ("wdpo", "sqrt-mean", "running"),
    ("wdpo", "per-pair", "batch"),
)


@dataclass(frozen=True)
class MinibatchConfig:
    """Sizes of the study.

    ``kl_radii``: intended KL radii (nats); ``w_fractions``: intended W_2 radii as fractions of
    the collapse radius ``||sum_i p_i sy_i x_i||``; ``batch_sizes``: group sizes B (the full
    batch is always added); ``batches``/``sets``: SAA batches per set and independent sets;
    ``decay``: EMA weight of the running normalisers; ``kl_path``/``w_path``: radii of the exact
    paths (KL in nats; W as fractions of the collapse radius); ``sgd_steps``: length of the SGD
    check runs at ``sgd_batch`` (0 skips them).
    """

    n: int = 2000
    data_seed: int = 0
    kl_radii: tuple[float, ...] = (0.01,)
    w_fractions: tuple[float, ...] = (0.15,)
    batch_sizes: tuple[int, ...] = (1, 4, 32, 128)
    batches: int = 200
    sets: int = 3
    decay: float = 0.01
    kl_path: tuple[float, ...] = tuple(np.round(np.geomspace(1e-4, 0.06, 16), 6))
    w_path: tuple[float, ...] = (0.03, 0.08, 0.15, 0.25, 0.4, 0.6)
    sgd_batch: int = 4
    sgd_steps: int = 6000
    sgd_lr: float = 0.02
    seed: int = 0

    @classmethod
    def quick(cls) -> MinibatchConfig:
        return cls()

    @classmethod
    def full(cls) -> MinibatchConfig:
        return cls(
            kl_radii=(0.003, 0.01, 0.03),
            w_fractions=(0.05, 0.15, 0.35),
            batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            batches=1000,
            sets=5,
            kl_path=tuple(np.round(np.geomspace(1e-4, 0.08, 30), 6)),
            w_path=(0.01, 0.03, 0.05, 0.08, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8),
            sgd_steps=40000,
        )


def make_data(cfg: MinibatchConfig):
    """``(data, world, r1, r2)``: the approximation study's world and an empirical sample."""
    world, r1, r2 = make_world(ApproxConfig())
    return world.empirical(cfg.n, cfg.data_seed), world, r1, r2


def collapse_radius(data) -> float:
    """``||sum_i p_i sy_i x_i||``: the W radius scale of the approximation study."""
    return float(np.linalg.norm((data.weights * data.signed_labels) @ data.X))


# ---------------------------------------------------------------------------- exact paths
def _exact_theta(family: str, data, radius: float, beta: float) -> np.ndarray:
    from ..exact import dpo as exact_dpo
    from ..exact import kldpo as exact_kldpo
    from ..exact import wdpo as exact_wdpo

    if radius == 0:
        return exact_dpo(data, beta=beta, solver="fast").theta
    if family == "kl":
        try:
            return exact_kldpo(data, rho=radius, beta=beta, solver="fast").theta
        except SolverError:  # the conic program as a second chance
            return exact_kldpo(data, rho=radius, beta=beta, solver="cvxpy").theta
    p = 2 if family == "w2" else 1
    return exact_wdpo(data, rho=radius, beta=beta, p=p, solver="fast").theta


def exact_path(family: str, data, radii, beta: float, *, jobs: int = 1) -> pd.DataFrame:
    """The exact optima along ``radii`` (0 added): columns ``radius``, ``theta0..``."""
    from joblib import Parallel, delayed

    radii = [0.0] + sorted(float(r) for r in radii if r > 0)
    thetas = Parallel(n_jobs=jobs)(delayed(_exact_theta)(family, data, r, beta) for r in radii)
    df = pd.DataFrame(np.asarray(thetas), columns=[f"theta{j}" for j in range(data.d)])
    df.insert(0, "radius", radii)
    return df


def project_onto_path(theta, path: pd.DataFrame) -> tuple[float, float, int]:
    """``(radius, distance, segment)``: the nearest point of the polyline through the path's
    optima, its radius by linear interpolation, and the index of the segment's start."""
    P = path[[c for c in path.columns if c.startswith("theta")]].to_numpy()
    r = path["radius"].to_numpy()
    best = (math.inf, 0.0, 0)
    for k in range(len(P) - 1):
        seg = P[k + 1] - P[k]
        L = float(seg @ seg)
        t = 0.0 if L == 0 else float(np.clip((theta - P[k]) @ seg / L, 0.0, 1.0))
        dist = float(np.linalg.norm(theta - (P[k] + t * seg)))
        if dist < best[0]:
            best = (dist, r[k] + t * (r[k + 1] - r[k]), k)
    return best[1], best[0], best[2]


def refine_on_path(theta, path: pd.DataFrame, family: str, data, beta: float):
    """``(radius, distance)``: a bounded 1-d search over the radius of the exact solver's
    distance to ``theta``, bracketed by the polyline projection's neighbouring grid radii."""
    from scipy.optimize import minimize_scalar

    rad, dist, k = project_onto_path(theta, path)
    r = path["radius"].to_numpy()
    lo, hi = r[max(k - 1, 0)], r[min(k + 2, len(r) - 1)]
    if hi <= lo:
        return rad, dist

    def f(x):
        return float(np.linalg.norm(_exact_theta(family, data, x, beta) - theta))

    sol = minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4 * hi})
    return (float(sol.x), float(sol.fun)) if sol.fun < dist else (rad, dist)


# ---------------------------------------------------------------------------- one cell
def run_cell(params: dict, shared: dict) -> dict:
    """One (family, radius, estimator, B) cell: the fixed point and its meaning."""
    _quiet()
    from ..approx import kl_implied

    cfg: MinibatchConfig = shared["cfg"]
    data, beta = shared["data"], shared["beta"]
    ref = shared["reference"][(params["family"], params["radius"])]
    rho, hyper = ref["rho"], ref["hyper"]
    est = Estimator(
        params["method"], params["variant"], hyper, params["normalizer"], decay=cfg.decay
    )
    B = params["B"]
    fp = fixed_point(
        data,
        est,
        beta=beta,
        batch_size=None if B == 0 else B,
        batches=cfg.batches,
        sets=cfg.sets,
        seed=np.random.SeedSequence(
            [cfg.seed, B, zlib.crc32(f"{params['family']}/{params['radius']}/{est}".encode())]
        ),
        theta0=ref["full"].get((params["variant"], params["normalizer"])),
    )
    kl = params["family"] == "kl"
    path_name = "kl" if kl else "w2"

    def value(t):
        return kl_robust_value(t, data, rho, beta) if kl else w2_robust_value(t, data, rho, beta)

    def per_set(fn):
        vals = np.array([fn(t) for t in fp.thetas])
        se = vals.std(ddof=1) / math.sqrt(len(vals)) if len(vals) > 1 else 0.0
        return float(se)

    row = dict(params, rho=rho, hyper=hyper, batch=("full" if B == 0 else str(B)))
    row["theta_dist"] = float(np.linalg.norm(fp.theta - ref["theta"]))
    row["theta_dist_se"] = per_set(lambda t: np.linalg.norm(t - ref["theta"]))
    path = shared["paths"][path_name]
    refine = kl  # the W_2 solver is too slow for a 1-d search: polyline projection
    if refine:
        row["effective_radius"], row["off_path"] = refine_on_path(fp.theta, path, "kl", data, beta)
    else:
        row["effective_radius"], row["off_path"] = project_onto_path(fp.theta, path)[:2]
    row["effective_radius_se"] = per_set(lambda t: project_onto_path(t, path)[0])
    row["off_path_se"] = per_set(lambda t: project_onto_path(t, path)[1])
    row["effective_ratio"] = row["effective_radius"] / rho
    if not kl:
        row["effective_radius_w1"], row["off_path_w1"] = refine_on_path(
            fp.theta, shared["paths"]["w1"], "w1", data, beta
        )
        row["effective_radius_w1_se"] = per_set(
            lambda t: project_onto_path(t, shared["paths"]["w1"])[0]
        )
    else:
        row["implied_rho"] = kl_implied(
            fp.theta, data, tau=hyper, beta=beta, variant=est.variant, clip=est.clip
        )[1]
        row["implied_rho_se"] = per_set(
            lambda t: kl_implied(t, data, tau=hyper, beta=beta, variant=est.variant, clip=est.clip)[
                1
            ]
        )
    # the exact reference's certified optimality gap (its robust value is within it of the
    # minimax value), so robust_gap is measured against a certified optimum
    row["exact_optimality_gap"] = ref["optimality_gap"]
    row["robust_gap"] = float(value(fp.theta) - ref["opt"])
    row["robust_gap_se"] = per_set(value)
    row["mc_error"] = float(np.linalg.norm(fp.theta_se))
    row["residual"] = fp.residual
    row.update({f"theta{j}": float(t) for j, t in enumerate(fp.theta)})
    row.update(evaluate_rewards(shared["world"], shared["r1"], shared["r2"], fp.theta))
    return row


def _references(cfg: MinibatchConfig, data, beta: float) -> dict:
    """Exact optimum, value and hyperparameter per (family, intended radius)."""
    from ..exact import wdpo as exact_wdpo

    ref = {}
    for r in cfg.kl_radii:
        ex = exact_kl(data, r, beta)
        ref[("kl", r)] = {
            "rho": r,
            "hyper": float(ex.dual),
            "theta": ex.theta,
            "opt": kl_robust_value(ex.theta, data, r, beta),
            "optimality_gap": ex.optimality_gap,
            "full": {},
        }
    g = collapse_radius(data)
    for f in cfg.w_fractions:
        rho = f * g
        ex = exact_wdpo(data, rho=rho, beta=beta, p=2, solver="fast")
        ref[("w2", f)] = {
            "rho": rho,
            "hyper": rho,
            "theta": ex.theta,
            "opt": w2_robust_value(ex.theta, data, rho, beta),
            "optimality_gap": ex.optimality_gap,
            "full": {},
        }
    return ref


def _quiet():
    import warnings

    # torch.func has no batching rule for clamp_ (the clipped weights): a slower loop, same values
    warnings.filterwarnings("ignore", message="There is a performance drop")


def tables(
    cfg: MinibatchConfig | None = None,
    *,
    quick: bool = True,
    jobs: int = -1,
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """Run the study and return its tables by file stem:

    * ``minibatch_runs``: one row per (family, radius, method, variant, normalizer, B) with
      ``batch`` ("full" or B), ``theta_dist``, ``effective_radius``, ``effective_ratio``
      (effective / intended radius), ``off_path``, ``implied_rho`` (KL),
      ``effective_radius_w1``/``off_path_w1`` (W), ``robust_gap``, ``mc_error``
      (norm of the standard error of theta_B), ``*_se``, ``theta*``, ``reward_alpha=*``;
    * ``minibatch_layouts``: the LLM layouts (:data:`rdpo_theory.minibatch.LAYOUTS`) with their
      group size and the row of that B;
    * ``minibatch_sgd``: long SGD runs with tail averaging at ``sgd_batch`` against the fixed
      point (``sgd_to_fixed_point``) and the intended exact optimum.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    cfg = cfg or (MinibatchConfig.quick() if quick else MinibatchConfig.full())
    data, world, r1, r2 = make_data(cfg)
    beta = world.beta
    g = collapse_radius(data)
    paths = {
        "kl": exact_path("kl", data, cfg.kl_path, beta, jobs=jobs),
        "w2": exact_path("w2", data, [f * g for f in cfg.w_path], beta, jobs=jobs),
        "w1": exact_path("w1", data, [f * g for f in cfg.w_path], beta, jobs=jobs),
    }
    reference = _references(cfg, data, beta)
    shared = {
        "cfg": cfg,
        "data": data,
        "beta": beta,
        "world": world,
        "r1": r1,
        "r2": r2,
        "paths": paths,
        "reference": reference,
    }
    cells = []
    for fam, radius in reference:
        for method, variant, normalizer in ESTIMATORS:
            if (method == "kldpo") != (fam == "kl"):
                continue
            for B in (0,) + tuple(cfg.batch_sizes):
                cells.append(
                    dict(
                        family=fam,
                        radius=radius,
                        method=method,
                        variant=variant,
                        normalizer=normalizer,
                        B=B,
                    )
                )
    it = tqdm(cells, desc="minibatch fixed points", disable=not progress)
    rows = Parallel(n_jobs=jobs)(delayed(run_cell)(c, shared) for c in it)
    runs = pd.DataFrame(rows)
    for k, v in asdict(cfg).items():
        if isinstance(v, (int, float)):
            runs[f"cfg_{k}"] = v
    return {
        "minibatch_runs": runs,
        "minibatch_layouts": layout_table(runs),
        "minibatch_sgd": sgd_table(cfg, shared, runs, jobs=jobs),
    }


def layout_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Each layout of :data:`rdpo_theory.minibatch.LAYOUTS` joined with the rows of its group
    size: columns ``layout``, ``workers``, ``micro_batch``, ``accumulation``, ``gather``,
    ``normalize``, ``global_batch``, ``group_size`` and the run columns."""
    out = []
    for lay in LAYOUTS:
        sub = runs[runs["B"] == lay.group_size]
        for _, r in sub.iterrows():
            d = {
                "layout": lay.name,
                "workers": lay.workers,
                "micro_batch": lay.micro_batch,
                "accumulation": lay.accumulation,
                "gather": lay.gather,
                "normalize": lay.normalize,
                "global_batch": lay.global_batch,
                "group_size": lay.group_size,
            }
            d.update(r.to_dict())
            out.append(d)
    return pd.DataFrame(out)


def _sgd_run(params, shared):
    from .. import approx

    cfg: MinibatchConfig = shared["cfg"]
    ref = shared["reference"][(params["family"], params["radius"])]
    kw = dict(
        beta=shared["beta"],
        batch_size=cfg.sgd_batch,
        normalizer=params["normalizer"],
        decay=cfg.decay,
        optimizer="sgd",
        lr=cfg.sgd_lr,
        max_steps=cfg.sgd_steps,
        gtol=0.0,
        seed=cfg.seed,
        theta0=ref["theta"],
    )
    if params["method"] == "kldpo":
        res = approx.kldpo(shared["data"], tau=ref["hyper"], variant=params["variant"], **kw)
    else:
        res = approx.wdpo(
            shared["data"],
            rho0=ref["hyper"],
            variant=params["variant"],
            penalty="closed-form",
            **kw,
        )
    return res


def sgd_table(cfg: MinibatchConfig, shared: dict, runs: pd.DataFrame, *, jobs=1) -> pd.DataFrame:
    """Long SGD runs (constant step ``sgd_lr``, ``sgd_steps`` steps from the intended exact
    optimum, so no transient; the returned theta is the average of the second half of the
    iterates) at ``B = sgd_batch`` against the fixed point."""
    from joblib import Parallel, delayed

    if cfg.sgd_steps == 0:
        return pd.DataFrame()
    fam0 = {"kl": cfg.kl_radii[0], "w2": cfg.w_fractions[0]}
    todo = [
        dict(family=fam, radius=fam0[fam], method=m, variant=v, normalizer=nz)
        for fam, m, v, nz in (
            ("kl", "kldpo", "normalized", "batch"),
            ("kl", "kldpo", "normalized", "running"),
            ("w2", "wdpo", "sqrt-mean", "batch"),
            ("w2", "wdpo", "sqrt-mean", "running"),
        )
    ]
    results = Parallel(n_jobs=jobs)(delayed(_sgd_run)(p, shared) for p in todo)
    d = shared["data"].d
    rows = []
    for p, res in zip(todo, results):
        sel = runs[
            (runs["family"] == p["family"])
            & (runs["radius"] == p["radius"])
            & (runs["variant"] == p["variant"])
            & (runs["normalizer"] == p["normalizer"])
            & (runs["B"] == cfg.sgd_batch)
        ].iloc[0]
        fp = np.array([sel[f"theta{j}"] for j in range(d)])
        ex = shared["reference"][(p["family"], p["radius"])]["theta"]
        rows.append(
            dict(
                p,
                B=cfg.sgd_batch,
                steps=res.steps,
                lr=cfg.sgd_lr,
                average_from=res.extras["average_from"],
                sgd_to_fixed_point=float(np.linalg.norm(res.theta - fp)),
                sgd_last_to_fixed_point=float(np.linalg.norm(res.theta_last - fp)),
                sgd_to_exact=float(np.linalg.norm(res.theta - ex)),
                fixed_point_to_exact=float(np.linalg.norm(fp - ex)),
                fixed_point_mc_error=float(sel["mc_error"]),
                cpu_seconds=res.extras["cpu_seconds"],
            )
        )
    return pd.DataFrame(rows)
