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
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from .. import options as O
from ..errors import InputError
from ..methods import listed, loss_variant
from ..minibatch import (
    LAYOUTS,
    Estimator,
    clipped_closed_form,
    exact_fixed_point,
    fixed_point,
    has_objective,
)
from .approx_vs_exact import ApproxConfig, evaluate_rewards, exact_kl, make_world


def kl_robust_value(theta, data, rho, beta) -> float:
    """The exact KL robust risk at ``theta`` (:func:`rdpo_theory.exact.robust_risk`)."""
    from ..exact import robust_risk

    return robust_risk(theta, data, method="kldpo", rho=rho, beta=beta)


def w2_robust_value(theta, data, rho, beta) -> float:
    """The exact continuous W_2 robust risk at ``theta``."""
    from ..exact import robust_risk

    return robust_risk(theta, data, method="wdpo", rho=rho, p=2.0, beta=beta)


#: Effective radii below this (nats, resp. units of x) are reported as 0, the DPO optimum: the
#: exact KL solver does not certify radii of 1e-16, and theta*(rho) is within about
#: sqrt(2 * 1e-12) = 1.4e-6 of the DPO optimum there.
TINY_RADIUS = 1e-12

#: The normalizers run for each estimator of the registry's "minibatch" list.
NORMALIZERS = {
    "kldpo-alg2": ("batch", "running"),
    "kldpo-clipped": ("batch",),
    "wdpo-alg1": ("batch", "running"),
    "wdpo-per-pair": ("batch",),
}

#: Most multisets the study enumerates for an exact theta_B (KLDPO normalized, batch): on its
#: world of 253 distinct pairs B = 1 and 2 are exact, larger B sampled.
EXACT_LIMIT = 3_000_000
#: The same for the root-found estimators (clipped, WDPO; one vmapped torch pass over every
#: multiset per evaluation): B = 1 on the study's world.
EXACT_ROOT_LIMIT = 2_000

#: (method, variant, normalizer) of the study.
ESTIMATORS = tuple((*loss_variant(m), nz) for m in listed("minibatch") for nz in NORMALIZERS[m])


@dataclass(frozen=True)
class MinibatchConfig:
    """Sizes of the study.

    ``kl_radii``: intended KL radii (nats); ``w_fractions``: intended W_2 radii as fractions of
    the collapse radius ``||sum_i p_i sy_i x_i||``; ``batch_sizes``: group sizes B (the full
    batch is always added); ``batches``/``sets``: SAA batches per set and independent sets;
    ``decay``: EMA weight of the running normalisers; ``kl_path``/``w1_path``/``w2_path``: radii
    of the exact paths (KL in nats; W as fractions of the collapse radius; the intended radii
    are added; the W_2 solver is the slow one, so its path is dense only where the fixed points
    land); ``decays``: EMA weights of the running normalisers' decay sweep at ``decay_batch``
    (empty skips it); ``sgd_steps``: length of the SGD check runs at ``sgd_batch`` (0 skips
    them) for the families ``sgd_families`` (the quick size checks KL only: there theta_B is
    0.1 from the exact optimum, more than the noise of the averaged SGD iterate; WDPO's theta_B
    at B = 4 is 0.02 from it, below that noise, so its check needs the full size's longer
    runs).
    """

    n: int = O.option(2000, help="pairs of the data set", constraints=O.POSITIVE_INT)
    data_seed: int = O.option(0, help="seed of the data set", constraints=O.NONNEGATIVE_INT)
    kl_radii: tuple[float, ...] = O.option((0.01,), help="intended KL radii (nats)", cli=False)
    w_fractions: tuple[float, ...] = O.option(
        (0.15,), help="intended W_2 radii (fractions of the collapse radius)", cli=False
    )
    batch_sizes: tuple[int, ...] = O.option(
        (1, 2, 4, 32, 128), help="normalisation group sizes B (the full batch is added)", cli=False
    )
    batches: int = O.option(200, help="SAA batches per set", constraints=O.POSITIVE_INT)
    sets: int = O.option(3, help="independent SAA sets", constraints=O.POSITIVE_INT)
    decay: float = O.option(
        0.01, help="EMA weight of the running normalisers", constraints=O.OPEN_UNIT
    )
    kl_path: tuple[float, ...] = O.option(
        tuple(np.round(np.geomspace(1e-4, 0.06, 16), 6)),
        help="radii of the exact KL path (nats)",
        cli=False,
    )
    w1_path: tuple[float, ...] = O.option(
        (0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25), help="W_1 path (fractions)", cli=False
    )
    w2_path: tuple[float, ...] = O.option(
        (0.05, 0.1, 0.13, 0.17, 0.2), help="W_2 path (fractions)", cli=False
    )
    sgd_batch: int = O.option(4, help="batch of the SGD check runs", constraints=O.POSITIVE_INT)
    sgd_steps: int = O.option(
        6000, help="steps of the SGD check runs (0 skips them)", constraints=O.NONNEGATIVE_INT
    )
    sgd_lr: float = O.option(0.02, help="step size of the SGD check runs", constraints=O.POSITIVE)
    sgd_families: tuple[str, ...] = O.option(("kl",), help="families of the SGD check", cli=False)
    decays: tuple[float, ...] = O.option(
        (0.003, 0.01, 0.03, 0.1, 0.3), help="decay sweep (empty skips it)", cli=False
    )
    decay_batch: int = O.option(4, help="group size of the decay sweep", constraints=O.POSITIVE_INT)
    seed: int = O.option(0, help="root of the SAA and SGD streams", constraints=O.NONNEGATIVE_INT)

    def __post_init__(self):
        O.validate_fields(self)

    @classmethod
    def quick(cls, **changes) -> MinibatchConfig:
        return cls(**changes)

    @classmethod
    def full(cls, **changes) -> MinibatchConfig:
        base = dict(
            kl_radii=(0.003, 0.01, 0.03),
            w_fractions=(0.05, 0.15, 0.35),
            batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            batches=1000,
            sets=5,
            kl_path=tuple(np.round(np.geomspace(1e-4, 0.08, 30), 6)),
            w1_path=(0.01, 0.03, 0.05, 0.08, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8),
            w2_path=(0.01, 0.03, 0.05, 0.08, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8),
            sgd_steps=40000,
            sgd_families=("kl", "w2"),
        )
        return cls(**{**base, **changes})


def make_data(cfg: MinibatchConfig):
    """``(data, world, r1, r2)``: the approximation study's world and an empirical sample."""
    world, r1, r2 = make_world(ApproxConfig())
    return world.empirical(cfg.n, cfg.data_seed), world, r1, r2


def collapse_radius(data) -> float:
    """``||sum_i p_i sy_i x_i||``: the W radius scale of the approximation study."""
    return float(np.linalg.norm((data.weights * data.signed_labels) @ data.X))


# ---------------------------------------------------------------------------- exact paths
def exact_solution(family: str, data, radius: float, beta: float):
    """The certified exact optimum (:class:`rdpo_theory.exact.ExactResult`) of ``family``
    ("kl", "w1" or "w2": :func:`rdpo_theory.exact.kldpo`, :func:`~rdpo_theory.exact.wdpo`
    with p = 1 or 2) at ``radius``; DPO at 0. The fast paths (KLDPO falls back to its conic
    program by itself when Newton ends uncertified)."""
    from ..exact import dpo as exact_dpo
    from ..exact import kldpo as exact_kldpo
    from ..exact import wdpo as exact_wdpo

    if radius == 0:
        return exact_dpo(data, beta=beta, solver="fast")
    if family == "kl":
        return exact_kldpo(data, rho=radius, beta=beta, solver="fast")
    p = 2 if family == "w2" else 1
    return exact_wdpo(data, rho=radius, beta=beta, p=p, solver="fast")


def _exact_theta(family: str, data, radius: float, beta: float) -> np.ndarray:
    return exact_solution(family, data, radius, beta).theta


def exact_solutions(radii: dict, data, beta: float, *, jobs: int = 1, progress=False) -> dict:
    """``{(family, radius): ExactResult}`` for every family of ``radii`` (family -> radii,
    0 added), all solves in one joblib pool."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    todo = sorted({(f, float(r)) for f, rs in radii.items() for r in (0.0, *rs) if r >= 0})
    it = tqdm(todo, desc="minibatch exact paths", disable=not progress)
    res = Parallel(n_jobs=jobs)(delayed(exact_solution)(f, data, r, beta) for f, r in it)
    return dict(zip(todo, res))


def exact_paths(radii: dict, data, beta: float, *, jobs: int = 1, solutions=None) -> dict:
    """``{family: DataFrame}`` of the exact optima along ``radii`` (family -> radii, 0 added):
    columns ``radius``, ``theta0..`` (from ``solutions`` of :func:`exact_solutions` when
    given)."""
    solutions = (
        solutions if solutions is not None else exact_solutions(radii, data, beta, jobs=jobs)
    )
    out = {}
    for fam in radii:
        rs = sorted(r for f, r in solutions if f == fam)
        df = pd.DataFrame(
            np.asarray([solutions[(fam, r)].theta for r in rs]),
            columns=[f"theta{j}" for j in range(data.d)],
        )
        df.insert(0, "radius", rs)
        out[fam] = df
    return out


def exact_path(family: str, data, radii, beta: float, *, jobs: int = 1) -> pd.DataFrame:
    """The exact optima along ``radii`` (0 added): columns ``radius``, ``theta0..``."""
    return exact_paths({family: radii}, data, beta, jobs=jobs)[family]


def _path_arrays(path: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return path["radius"].to_numpy(), path[
        [c for c in path.columns if c.startswith("theta")]
    ].to_numpy()


def path_coordinate(family: str, radius):
    """The coordinate in which the exact path is smooth: ``sqrt(rho)`` for KL (for small rho
    the KL robust risk is ``E l + sqrt(2 rho Var l) + O(rho)``, so theta* moves like
    sqrt(rho)), the radius itself for W_1 and W_2 (``E l + rho ||grad_x l||``-type penalties,
    linear in rho)."""
    r = np.asarray(radius, dtype=float)
    return np.sqrt(r) if family == "kl" else r


def path_spline(family: str, path: pd.DataFrame):
    """Cubic spline (not-a-knot) through the path's exact optima in :func:`path_coordinate`."""
    from scipy.interpolate import CubicSpline

    r, P = _path_arrays(path)
    return CubicSpline(path_coordinate(family, r), P, axis=0)


def project_onto_path(theta, path: pd.DataFrame) -> tuple[float, float, int]:
    """``(radius, distance, segment)``: the nearest point of the polyline through the path's
    optima, its radius by linear interpolation, and the index of the segment's start."""
    r, P = _path_arrays(path)
    best = (math.inf, 0.0, 0)
    for k in range(len(P) - 1):
        seg = P[k + 1] - P[k]
        L = float(seg @ seg)
        t = 0.0 if L == 0 else float(np.clip((theta - P[k]) @ seg / L, 0.0, 1.0))
        dist = float(np.linalg.norm(theta - (P[k] + t * seg)))
        if dist < best[0]:
            best = (dist, r[k] + t * (r[k + 1] - r[k]), k)
    return best[1], best[0], best[2]


def nearest_on_path(theta, path: pd.DataFrame, family: str, spline=None) -> tuple[float, float]:
    """``(radius, distance)`` of the point of the exact path nearest to ``theta``: a bounded
    1-d search along the cubic spline of :func:`path_spline`, bracketed by the neighbours of
    the nearest polyline segment. No solver call; its accuracy is the spline's interpolation
    error (:func:`path_interpolation_error`)."""
    from scipy.optimize import minimize_scalar

    theta = np.asarray(theta, dtype=float)
    spline = spline if spline is not None else path_spline(family, path)
    rad, dist, k = project_onto_path(theta, path)
    s = path_coordinate(family, path["radius"].to_numpy())
    lo, hi = s[max(k - 1, 0)], s[min(k + 2, len(s) - 1)]
    if hi <= lo:
        return rad, dist

    def f(x):
        return float(np.linalg.norm(spline(x) - theta))

    sol = minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10 * hi})
    x = float(sol.x)
    return (x * x if family == "kl" else x), float(sol.fun)


def path_interpolation_error(family: str, path: pd.DataFrame) -> float:
    """Largest distance between an interior exact optimum of the path and the spline through
    the other optima (leave one out): an upper estimate of the spline's interpolation error
    at the path's own spacing (the left-out spline has twice the spacing there)."""
    from scipy.interpolate import CubicSpline

    r, P = _path_arrays(path)
    s = path_coordinate(family, r)
    if len(s) < 5:
        return math.nan
    err = 0.0
    for k in range(1, len(s) - 1):
        keep = np.arange(len(s)) != k
        err = max(err, float(np.linalg.norm(CubicSpline(s[keep], P[keep], axis=0)(s[k]) - P[k])))
    return err


# ---------------------------------------------------------------------------- one cell
def solve_cell(params: dict, shared: dict):
    """The fixed point of one (family, radius, estimator, B) cell (:func:`fixed_point`)."""
    cfg: MinibatchConfig = shared["cfg"]
    ref = shared["reference"][(params["family"], params["radius"])]
    est = Estimator(
        params["method"],
        params["variant"],
        ref["hyper"],
        params["normalizer"],
        decay=params.get("decay", cfg.decay),
    )
    B = params["B"]
    with _worker():
        if B and est.variant == "clipped":  # closed form: exact KLDPO at tau B / (B - 1)
            fp = clipped_closed_form(shared["data"], est, beta=shared["beta"], batch_size=B)
            if fp is not None:
                return fp
        if B and est.normalizer == "batch":  # the exact batch law where it can be enumerated
            try:
                return exact_fixed_point(
                    shared["data"],
                    est,
                    beta=shared["beta"],
                    batch_size=B,
                    theta0=ref["full"][params["variant"]],
                    limit=EXACT_LIMIT if has_objective(est) else EXACT_ROOT_LIMIT,
                )
            except InputError:
                pass
        return fixed_point(
            shared["data"],
            est,
            beta=shared["beta"],
            batch_size=None if B == 0 else B,
            batches=cfg.batches,
            sets=cfg.sets,
            seed=np.random.SeedSequence(
                [cfg.seed, B, zlib.crc32(f"{params['family']}/{params['radius']}/{est}".encode())]
            ),
            theta0=ref["full"][params["variant"]],
        )


def measure(theta, family: str, radius, shared: dict, *, verify: bool) -> dict:
    """What one theta means: its exact robust value under the intended radius (``value``),
    its effective radius and off-path distance on the family's exact path (spline:
    ``effective_radius``, ``off_path``; with ``verify`` also ``off_path_verified``, the
    distance to the exact optimum solved at that radius; KL and W_1, whose exact solvers are
    cheap) and, for W, on the W_1 path."""
    data, beta = shared["data"], shared["beta"]
    ref = shared["reference"][(family, radius)]
    kl = family == "kl"
    with _worker():
        out = {"value": (kl_robust_value if kl else w2_robust_value)(theta, data, ref["rho"], beta)}
        name = "kl" if kl else "w2"
        out["effective_radius"], out["off_path"] = nearest_on_path(
            theta, shared["paths"][name], name, shared["splines"][name]
        )
        if not kl:
            out["effective_radius_w1"], out["off_path_w1"] = nearest_on_path(
                theta, shared["paths"]["w1"], "w1", shared["splines"]["w1"]
            )
        if verify:  # the certified exact optimum at the effective radius (KL and W_1: cheap)
            for fam in ("kl",) if kl else ("w1",):
                sfx = "" if kl else "_w1"
                if out["effective_radius" + sfx] < TINY_RADIUS:  # DPO (the exact solvers
                    out["effective_radius" + sfx] = 0.0  # do not certify rho ~ 1e-16)
                th = _exact_theta(fam, data, out["effective_radius" + sfx], beta)
                out["off_path" + sfx + "_verified"] = float(np.linalg.norm(th - theta))
    return out


def cell_row(params: dict, fp, measures: dict, shared: dict) -> dict:
    """The table row of one cell from its fixed point and the measures of its thetas
    (``measures[key(theta)]``, :func:`theta_key`)."""
    from ..approx import kl_implied

    data, beta = shared["data"], shared["beta"]
    fam, radius = params["family"], params["radius"]
    ref = shared["reference"][(fam, radius)]
    rho, hyper, B = ref["rho"], ref["hyper"], params["B"]
    kl = fam == "kl"
    est = fp.estimator
    mean = measures[theta_key(fam, radius, fp.theta)]
    sets = [measures[theta_key(fam, radius, t)] for t in fp.thetas]

    def se(vals):
        vals = np.asarray(vals, dtype=float)
        return float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else 0.0

    row = dict(params, rho=rho, hyper=hyper, batch=("full" if B == 0 else str(B)))
    row["theta_dist"] = float(np.linalg.norm(fp.theta - ref["theta"]))
    row["theta_dist_se"] = se([np.linalg.norm(t - ref["theta"]) for t in fp.thetas])
    row["effective_radius"] = mean["effective_radius"]
    # the distance to a certified exact optimum where one is cheap to solve (KL), else to the
    # spline through the exact path (interpolation error in path_interp_error)
    row["off_path"] = mean.get("off_path_verified", mean["off_path"])
    row["path_interp_error"] = shared["interp_error"]["kl" if kl else "w2"]
    row["effective_radius_se"] = se([m["effective_radius"] for m in sets])
    row["off_path_se"] = se([m["off_path"] for m in sets])
    row["effective_ratio"] = row["effective_radius"] / rho
    # how far theta_B is from the family's exact path, as a fraction of its displacement from
    # the intended optimum (exact where the batch law was enumerated: ``exact``)
    row["off_path_frac"] = row["off_path"] / row["theta_dist"] if B else math.nan
    row["exact"] = bool(fp.info.get("exact", False))
    if kl:
        implied = [
            kl_implied(t, data, tau=hyper, beta=beta, variant=est.variant, clip=est.clip)[1]
            for t in (fp.theta, *fp.thetas)
        ]
        row["implied_rho"], row["implied_rho_se"] = implied[0], se(implied[1:])
    else:
        row["effective_radius_w1"] = mean["effective_radius_w1"]
        row["off_path_w1"] = mean["off_path_w1_verified"]
        row["effective_radius_w1_se"] = se([m["effective_radius_w1"] for m in sets])
    # the exact reference's certified optimality gap (its robust value is within it of the
    # minimax value), so robust_gap is measured against a certified optimum
    row["exact_optimality_gap"] = ref["optimality_gap"]
    row["robust_gap"] = float(mean["value"] - ref["opt"])
    row["robust_gap_se"] = se([m["value"] for m in sets])
    row["mc_error"] = float(np.linalg.norm(fp.theta_se))
    row["residual"] = fp.residual
    row.update({f"theta{j}": float(t) for j, t in enumerate(fp.theta)})
    row.update(evaluate_rewards(shared["world"], shared["r1"], shared["r2"], fp.theta))
    return row


def theta_key(family: str, radius, theta) -> tuple:
    """Key of one theta's measures: equal fixed points (WDPO per-pair at every B; the running
    and batch normalisers in full batch) are measured once."""
    return (family, radius, np.asarray(theta, dtype=float).tobytes())


def _references(cfg: MinibatchConfig, data, beta: float, solutions: dict) -> dict:
    """Exact optimum, value and hyperparameter per (family, intended radius); the W_2 optima
    from ``solutions`` (:func:`exact_solutions`)."""
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
        ex = solutions[("w2", float(rho))]
        ref[("w2", f)] = {
            "rho": rho,
            "hyper": rho,
            "theta": ex.theta,
            "opt": w2_robust_value(ex.theta, data, rho, beta),
            "optimality_gap": ex.optimality_gap,
            "full": {},
        }
    # the full-batch root of each variant (the running normaliser's is the batch one): the
    # start of every root finder of that variant
    for (fam, _r), rf in ref.items():
        for method, variant, _ in ESTIMATORS:
            if (method == "kldpo") == (fam == "kl") and variant not in rf["full"]:
                est = Estimator(method, variant, rf["hyper"], decay=cfg.decay)
                with _worker():
                    rf["full"][variant] = fixed_point(data, est, beta=beta, batch_size=None).theta
    return ref


@contextmanager
def _worker():
    """One torch thread (the batched tensors are small: a second thread only adds
    synchronisation, many times the arithmetic on a shared 2-core machine) and no warning
    that torch.func has no batching rule for clamp_ (the clipped weights: a slower loop, same
    values)."""
    import warnings

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="There is a performance drop")
            yield
    finally:
        torch.set_num_threads(threads)


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
    radii = {  # the W_2 path also holds the intended radii: their optima are the references
        "kl": (*cfg.kl_path, *cfg.kl_radii),
        "w1": [f * g for f in cfg.w1_path],
        "w2": [f * g for f in (*cfg.w2_path, *cfg.w_fractions)],
    }
    solutions = exact_solutions(radii, data, beta, jobs=jobs, progress=progress)
    paths = exact_paths(radii, data, beta, solutions=solutions)
    reference = _references(cfg, data, beta, solutions)
    shared = {
        "cfg": cfg,
        "data": data,
        "beta": beta,
        "world": world,
        "r1": r1,
        "r2": r2,
        "paths": paths,
        "splines": {fam: path_spline(fam, p) for fam, p in paths.items()},
        "interp_error": {fam: path_interpolation_error(fam, p) for fam, p in paths.items()},
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
    # 1. the fixed points, with the decay sweep and the SGD check runs in the same pool
    sweep = decay_cells(cfg, reference)
    sgd = sgd_runs(cfg) if cfg.sgd_steps > 0 else []
    tasks = [delayed(solve_cell)(c, shared) for c in cells + sweep]
    tasks += [delayed(_sgd_run)(p, shared) for p in sgd]
    it = tqdm(tasks, desc="minibatch fixed points", disable=not progress)
    out = Parallel(n_jobs=jobs)(it)
    k = len(cells)
    fps, sweep_fps, sgd_results = out[:k], out[k : k + len(sweep)], out[k + len(sweep) :]
    # 2. what each distinct theta means (the mean root of a cell, verified on the exact path,
    # and the root of each batch set for the Monte Carlo errors)
    todo: dict = {}
    for c, fp in zip(cells, fps):
        for t, verify in [(fp.theta, True)] + [(t, False) for t in fp.thetas]:
            key = theta_key(c["family"], c["radius"], t)
            old = todo.get(key)
            todo[key] = (t, c["family"], c["radius"], verify or (old is not None and old[3]))
    keys = list(todo)
    it = tqdm(keys, desc="minibatch exact measures", disable=not progress)
    vals = Parallel(n_jobs=jobs)(
        delayed(measure)(todo[k][0], todo[k][1], todo[k][2], shared, verify=todo[k][3]) for k in it
    )
    measures = dict(zip(keys, vals))
    runs = pd.DataFrame([cell_row(c, fp, measures, shared) for c, fp in zip(cells, fps)])
    for k, v in asdict(cfg).items():
        if isinstance(v, (int, float)):
            runs[f"cfg_{k}"] = v
    return {
        "minibatch_runs": runs,
        "minibatch_layouts": layout_table(runs),
        "minibatch_sgd": sgd_table(cfg, shared, runs, sgd, sgd_results),
        "minibatch_decay": decay_table(sweep, sweep_fps, shared),
    }


def decay_cells(cfg: MinibatchConfig, reference: dict) -> list[dict]:
    """The running normalisers (KLDPO normalized, WDPO sqrt-mean) at ``B = decay_batch`` and
    the first intended radius of each family, for each EMA weight of ``cfg.decays``."""
    first = {}
    for fam, r in reference:
        first.setdefault(fam, r)
    return [
        dict(
            family=fam,
            radius=first[fam],
            method=m,
            variant=v,
            normalizer="running",
            B=cfg.decay_batch,
            decay=float(a),
        )
        for fam, m, v in (("kl", "kldpo", "normalized"), ("w2", "wdpo", "sqrt-mean"))
        if fam in first
        for a in cfg.decays
    ]


def decay_table(cells: list[dict], fps: list, shared: dict) -> pd.DataFrame:
    """The decay sweep: the running fixed point's distance to the full-batch fixed point of the
    same estimator (``to_full``, what the running normaliser targets: exact KLDPO at
    ``tau = lam*``; the full-batch sqrt-mean root for WDPO) with its Monte Carlo standard error,
    and its effective radius on the exact path (spline, :func:`nearest_on_path`)."""
    rows = []
    for c, fp in zip(cells, fps):
        ref = shared["reference"][(c["family"], c["radius"])]
        full = ref["full"][c["variant"]]
        name = "kl" if c["family"] == "kl" else "w2"
        dists = [np.linalg.norm(t - full) for t in fp.thetas]
        rad = nearest_on_path(fp.theta, shared["paths"][name], name, shared["splines"][name])[0]
        rows.append(
            dict(
                c,
                rho=ref["rho"],
                hyper=ref["hyper"],
                to_full=float(np.linalg.norm(fp.theta - full)),
                to_full_se=float(np.std(dists, ddof=1) / math.sqrt(len(dists)))
                if len(dists) > 1
                else 0.0,
                to_exact=float(np.linalg.norm(fp.theta - ref["theta"])),
                effective_ratio=rad / ref["rho"],
                mc_error=float(np.linalg.norm(fp.theta_se)),
                burn_in=fp.info["burn_in"],
            )
        )
    return pd.DataFrame(rows)


def layout_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Each layout of :data:`rdpo_theory.minibatch.LAYOUTS` joined with the rows of its group
    size: columns ``layout``, ``workers``, ``micro_batch``, ``accumulation``, ``gather``,
    ``layout_normalizer``, ``global_batch``, ``group_size`` and the run columns."""
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
                "layout_normalizer": lay.normalizer,
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


def sgd_runs(cfg: MinibatchConfig) -> list[dict]:
    """The SGD check runs: KLDPO normalized and WDPO sqrt-mean, batch and running, at the
    first intended radius of each family of ``cfg.sgd_families``."""
    fam0 = {"kl": cfg.kl_radii[0], "w2": cfg.w_fractions[0]}
    return [
        dict(family=fam, radius=fam0[fam], method=m, variant=v, normalizer=nz)
        for fam, m, v, nz in (
            ("kl", "kldpo", "normalized", "batch"),
            ("kl", "kldpo", "normalized", "running"),
            ("w2", "wdpo", "sqrt-mean", "batch"),
            ("w2", "wdpo", "sqrt-mean", "running"),
        )
        if fam in cfg.sgd_families
    ]


def sgd_table(
    cfg: MinibatchConfig, shared: dict, runs: pd.DataFrame, todo: list, results: list
) -> pd.DataFrame:
    """Long SGD runs (constant step ``sgd_lr``, ``sgd_steps`` steps from the intended exact
    optimum, so no transient; the returned theta is the average of the second half of the
    iterates) at ``B = sgd_batch`` (:func:`sgd_runs`, results of :func:`approx.kldpo` /
    :func:`approx.wdpo`) against the fixed point."""
    if not todo:
        return pd.DataFrame()
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
