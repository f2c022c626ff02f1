"""Robustness audit of a trained model from its per-pair losses (docs/theory.md#kl-dual).

Given per-pair losses ``l`` (n,) of any model on a preference set (DPO losses from
log-probabilities, or any other per-pair loss) with nominal weights ``p`` (default uniform),
the audit answers: how large can the mean loss become when the pairs are reweighted by an
adversary within a divergence ball around ``p``?

    worst_loss(rho) = sup { sum_i q_i l_i : q in the simplex, D(q || p) <= rho }.

Every ball is an ambiguity set of :mod:`rdpo_theory.divergences` (docs/theory.md#ambiguity-sets),
solved exactly by the code the exact solvers use at their optimum; ``divergence`` is its family
id or a set object:

* ``"kl"``: ``D = KL(q || p)``; the worst case is the tilted law ``q ∝ p exp(l / lam)`` whose
  KL equals rho (a scalar root in lam, ``divergences.kl.kl_lambda_for_theta``), or ``p``
  restricted to the argmax set when ``rho >= -log P(argmax l)`` (docs/theory.md#kl-regimes).
* ``"chi2"``: ``D = 1/2 sum_i p_i (q_i / p_i - 1)^2`` (the project's convention, with the 1/2);
  the sorted closed form of ``divergences.chi2.chi2_weights`` (docs/theory.md#baselines).
* ``"cvar"``: ``q_i <= p_i / alpha``; rho is the level alpha in (0, 1] (smaller is
  more adversarial); ``divergences.cvar.cvar_weights``;
* every other family id of :data:`rdpo_theory.divergences.DIVERGENCES`, or a set object (a
  set with parameters).

The ball size is called ``rho`` (``radius`` is a deprecated alias: in this package ``radius``
is the parameter ball ``||theta|| <= B``); the tables keep their ``radius`` column.

A radius with a meaning (docs/theory.md#subpopulation-radius): every subpopulation of mass
``>= alpha`` (the law ``p`` conditioned on a set of mass alpha) lies in the KL ball of radius
``log(1 / alpha)``, the chi-square ball of radius ``(1 - alpha) / (2 alpha)`` and the CVaR ball
of level alpha; :func:`radius_for_subpopulation` returns these. So ``worst_loss`` at that radius
bounds the mean loss of every group holding at least an alpha share of the data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import _validate as V
from . import divergences as D
from . import losses as L
from .errors import InputError
from .options import NONNEGATIVE, POSITIVE_INT, Interval, declare

#: The divergence balls audited by default (``check_divergence`` also takes
#: every id of :data:`rdpo_theory.divergences.DIVERGENCES` and any
#: :class:`rdpo_theory.divergences.AmbiguitySet` that reweights).
DIVERGENCES = ("kl", "chi2", "cvar")
#: The four per-pair log-prob columns of an audit table (TRL names, nats): policy chosen,
#: policy rejected, reference chosen, reference rejected.
LOGP_COLUMNS = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps")


def check_divergence(divergence) -> str:
    """Validate a divergence (a family id of :data:`rdpo_theory.divergences.DIVERGENCES` or a
    set object); returns it."""
    if isinstance(divergence, D.AmbiguitySet) or divergence in D.DIVERGENCES:
        return divergence
    raise InputError(
        f"The 'divergence' parameter must be one of {D.DIVERGENCES}. Got {divergence!r} instead."
    )


def ambiguity_set(divergence) -> D.AmbiguitySet:
    """The :class:`~rdpo_theory.divergences.AmbiguitySet` of a divergence id (or the set)."""
    return D.get(check_divergence(divergence))


def _check_rho(rho, divergence) -> float:
    """A KL or chi-square radius ``>= 0``, or a CVaR level in (0, 1]."""
    ball = ambiguity_set(divergence)
    if isinstance(ball, D.CVaR):
        a = V.positive(rho, "rho (the CVaR level alpha)")
        if a > 1:
            raise InputError(f"The CVaR level alpha must lie in (0, 1]. Got {a} instead.")
        return a
    return ball.check(rho, "rho")


@V.renamed_keyword("radius", "rho")
def check_radius(rho, divergence: str) -> float:
    """A KL or chi-square radius ``>= 0``, or a CVaR level in (0, 1]."""
    return _check_rho(rho, divergence)


def _losses_weights(losses, weights):
    lo = V.as_vector(losses, "losses")
    if lo.shape[0] == 0:
        raise InputError("losses is empty: need at least one pair")
    return lo, V.as_weights(weights, lo.shape[0], "weights")


@V.renamed_keyword("radius", "rho")
@declare({"rho": NONNEGATIVE})
def worst_case(losses, *, weights=None, divergence: str = "kl", rho: float) -> np.ndarray:
    """The adversary's law ``q`` (n,) attaining ``sup { E_q l : D(q || p) <= rho }``.

    Parameters
    ----------
    losses : array_like, shape (n,)
        Per-pair losses (nats).
    weights : array_like, shape (n,), optional
        Nominal probabilities ``p`` (default uniform 1/n).
    divergence : str (a family id of divergences.DIVERGENCES) or an AmbiguitySet
    rho : float
        KL or chi-square radius (>= 0), or the CVaR level alpha in (0, 1] (``radius``: a
        deprecated alias).

    Returns
    -------
    ndarray, shape (n,)
        ``q``, summing to 1, zero where ``p`` is zero.

    Raises
    ------
    SolverError
        KL only: the scalar root does not reproduce the radius (losses spread beyond float64).
    """
    lo, p = _losses_weights(losses, weights)
    r = _check_rho(rho, divergence)
    return ambiguity_set(divergence).best_response(lo, p, r)


def ball_size(q, p, divergence: str) -> float:
    """The size of the smallest ball around ``p`` containing ``q``: ``KL(q || p)``,
    ``1/2 sum_i p_i (q_i / p_i - 1)^2``, or for CVaR the largest level
    ``alpha = 1 / max_i (q_i / p_i)`` with ``q <= p / alpha``."""
    return ambiguity_set(divergence).divergence(q, p)


def _summary(lo, p, q) -> dict:
    k = p > 0
    return {
        "nominal_loss": float(p @ lo),
        "worst_loss": float(q @ lo),
        "ess": float(1.0 / np.sum(q**2)),
        "ess_fraction": float(np.sum(p**2) / np.sum(q**2)),
        "max_weight": float(q.max()),
        "max_ratio": float(np.max(q[k] / p[k])),
    }


@V.renamed_keyword("radii", "rhos")
def profile(losses, *, weights=None, divergence: str = "kl", rhos) -> pd.DataFrame:
    """Exact robustness profile of per-pair losses over a list of radii.

    Parameters
    ----------
    losses : array_like, shape (n,)
        Per-pair losses ``l_i`` (nats).
    weights : array_like, shape (n,), optional
        Nominal probabilities ``p`` (default uniform).
    divergence : str (a family id of divergences.DIVERGENCES) or an AmbiguitySet
    rhos : sequence of float
        KL/chi-square radii (>= 0) or CVaR levels in (0, 1] (``radii``: a deprecated alias).

    Returns
    -------
    DataFrame
        One row per ball size: ``divergence, radius`` (the ball size rho), ``nominal_loss`` (``sum p
        l``), ``worst_loss`` (``sum q l`` at the exact worst case q, see :func:`worst_case`),
        ``ess`` (Kish effective sample size ``1 / sum q_i^2``, in pairs), ``ess_fraction`` (``ess``
        over the nominal ``1 / sum p_i^2``), ``max_weight`` (``max q_i``), ``max_ratio`` (``max q_i
        / p_i``, how much the most upweighted pair gains) and ``ball_size`` (the divergence of q
        from p; equals the radius unless the ball reaches the max loss).
    """
    lo, p = _losses_weights(losses, weights)
    ball = ambiguity_set(divergence)
    name = divergence if isinstance(divergence, str) else repr(divergence)
    rhos = np.atleast_1d(np.asarray(rhos, dtype=np.float64))
    if rhos.size == 0:
        raise InputError("rhos is empty: give at least one ball size")
    rows = []
    for r in rhos:
        q = worst_case(lo, weights=p, divergence=ball, rho=float(r))
        rows.append(
            {"divergence": name, "radius": float(r)}
            | _summary(lo, p, q)
            | {"ball_size": ball.divergence(q, p)}
        )
    return pd.DataFrame(rows)


@V.renamed_keyword("radius", "rho")
@declare({"rho": NONNEGATIVE})
def worst_case_error(margins, *, weights=None, divergence: str = "kl", rho: float) -> float:
    """Largest preference error rate over the ball: ``sup_q q({i : m_i < 0})``.

    With ``P = p({m < 0})`` the answer is, exactly:
    KL: the ``s`` in ``[P, 1]`` with ``s log(s/P) + (1-s) log((1-s)/(1-P)) = rho`` (1 when
    ``rho >= log(1/P)``), found as the KL worst case of the 0/1 losses (a scalar root);
    chi-square: ``min(1, P + sqrt(2 rho P (1 - P)))``; CVaR: ``min(1, P / alpha)``.

    Parameters
    ----------
    margins : array_like, shape (n,)
        Oriented margins ``m_i`` (e.g. ``beta`` times the log-ratio difference of chosen
        over rejected); a pair is an error when ``m_i < 0``.
    weights, divergence, rho : as in :func:`worst_case`.

    Returns
    -------
    float in [0, 1]
    """
    m = V.as_vector(margins, "margins")
    err = (m < 0).astype(np.float64)
    q = worst_case(err, weights=weights, divergence=divergence, rho=rho)
    return float(min(1.0, q @ err))


@V.renamed_keyword("radius", "rho")
@declare({"rho": NONNEGATIVE, "k": POSITIVE_INT})
def top_pairs(
    losses, *, weights=None, divergence: str = "kl", rho: float, k: int = 10
) -> pd.DataFrame:
    """The ``k`` pairs the worst case upweights most.

    Returns
    -------
    DataFrame
        Columns ``index`` (position in ``losses``), ``loss``, ``weight`` (p), ``worst_weight``
        (q) and ``ratio`` (q / p), sorted by ratio then loss, decreasing; at most k rows.
    """
    lo, p = _losses_weights(losses, weights)
    q = worst_case(lo, weights=p, divergence=divergence, rho=rho)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(p > 0, q / p, 0.0)
    order = np.lexsort((-lo, -ratio))[: int(k)]
    return pd.DataFrame(
        {
            "index": order,
            "loss": lo[order],
            "weight": p[order],
            "worst_weight": q[order],
            "ratio": ratio[order],
        }
    )


def group_profile(losses, groups, *, weights=None) -> pd.DataFrame:
    """Mean loss per group and the worst group.

    Parameters
    ----------
    losses : array_like, shape (n,)
    groups : array_like, shape (n,)
        One label per pair.
    weights : array_like, shape (n,), optional

    Returns
    -------
    DataFrame
        One row per group: ``group``, ``n_pairs``, ``share`` (``P_g = sum_{i in g} p_i``),
        ``loss`` (``sum_{i in g} p_i l_i / P_g``), ``worst`` (True on the group of largest
        loss), ``covering_kl_radius`` (``log(1 / P_g)``, the KL radius whose worst case bounds
        this group's loss).
    """
    lo, p = _losses_weights(losses, weights)
    labels, gl = L.group_losses(lo, groups, weights=p)
    _, idx = L.group_indices(groups, lo.shape[0])
    share = np.bincount(idx, weights=p, minlength=labels.shape[0])
    count = np.bincount(idx, minlength=labels.shape[0])
    worst = np.zeros(labels.shape[0], dtype=bool)
    worst[int(np.argmax(gl))] = True
    return pd.DataFrame(
        {
            "group": labels,
            "n_pairs": count,
            "share": share,
            "loss": gl,
            "worst": worst,
            "covering_kl_radius": -np.log(share),
        }
    )


@declare({"alpha": [Interval(float, 0, 1, closed="right")]})
def radius_for_subpopulation(alpha: float, divergence: str = "kl") -> float:
    """The smallest ball size whose ball contains every subpopulation of mass ``>= alpha``.

    A subpopulation of mass alpha is ``q = p 1_S / alpha`` with ``p(S) = alpha``. Its
    divergence from p is ``KL = log(1 / alpha)`` and
    ``chi2 = 1/2 [alpha (1/alpha - 1)^2 + (1 - alpha)] = (1 - alpha) / (2 alpha)`` (the project's
    chi-square carries a factor 1/2); it satisfies ``q <= p / alpha``, so the CVaR level is
    alpha itself. Larger subpopulations have smaller divergences
    (docs/theory.md#subpopulation-radius). Each set's
    :meth:`~rdpo_theory.divergences.AmbiguitySet.radius_for_subpopulation` computes it.

    Parameters
    ----------
    alpha : float in (0, 1]
        The smallest share to cover (e.g. the smallest group's share of the data).
    divergence : str (a family id of divergences.DIVERGENCES) or an AmbiguitySet

    Returns
    -------
    float
        KL or chi-square radius, or the CVaR level.
    """
    return ambiguity_set(divergence).radius_for_subpopulation(alpha)
