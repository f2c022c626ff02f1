"""The one interface every ambiguity set implements (docs/theory.md#ambiguity-sets).

An ambiguity set is a ball ``{Q : D(Q || P) <= rho}`` around the nominal law P of the
preference pairs. For losses ``l`` (n,) (nats) fixed on the support of ``p`` (n,), each set
answers, exactly:

* :meth:`AmbiguitySet.supremum`: ``sup { E_q l : q in ball(p, rho) }`` with the worst-case law
  ``q`` (the tilt) and the dual variables that certify it (:class:`Supremum`);
* :meth:`AmbiguitySet.dual_value`: the dual objective at any dual point, an upper bound of the
  supremum by weak duality;
* :meth:`AmbiguitySet.divergence`: the size of the smallest ball containing a law ``q``;
* :meth:`AmbiguitySet.radius_for_subpopulation`: the ball size that contains every
  subpopulation of share ``>= alpha`` (docs/theory.md#subpopulation-radius);
* :meth:`AmbiguitySet.pair_weights` / :meth:`AmbiguitySet.torch_pair_weights`: the per-pair
  weights ``q`` (summing to 1) that the scalable algorithms hold fixed in ``sum_i q_i l_i``, in
  numpy and in torch (torch is imported inside the method only);
* :attr:`AmbiguitySet.anchor`: the section of docs/theory.md that states the set's dual.

Importing :mod:`rdpo_theory.divergences` loads numpy (and scipy on first use) only: never torch
or cvxpy, so the torch backend can use the sets without the exact solvers' dependencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import _validate as V
from ..errors import InputError


@dataclass
class Supremum:
    """The exact supremum of ``E_q l`` over a ball at fixed losses.

    Attributes
    ----------
    value : float
        ``sup_q E_q l`` (nats).
    worst_case : ndarray (n,)
        A law attaining it (sums to 1, zero where ``p`` is zero).
    dual : dict
        The optimal dual variables (``{"lam": ...}`` for KL, ``{"eta": ...}`` for chi-square,
        CVaR); :meth:`AmbiguitySet.dual_value` at them is the value.
    regime : str
        ``"nominal"`` (``q = p``), ``"interior"`` (the constraint binds) or ``"max-loss"``
        (the ball holds ``p`` restricted to the argmax set).
    """

    value: float
    worst_case: np.ndarray
    dual: dict = field(default_factory=dict)
    regime: str = "interior"


def losses_weights(losses, weights) -> tuple[np.ndarray, np.ndarray]:
    """``(l, p)``: validated losses (n,), n >= 1, and probability weights (default uniform)."""
    lo = V.as_vector(losses, "losses")
    if lo.shape[0] == 0:
        raise InputError("losses is empty")
    return lo, V.as_weights(weights, lo.shape[0], "weights")


def check_alpha(alpha) -> float:
    """A subpopulation share in (0, 1]."""
    a = V.positive(alpha, "alpha")
    if a > 1:
        raise InputError(f"The 'alpha' parameter must lie in (0, 1]. Got {a} instead.")
    return a


def unit_rows(A: np.ndarray) -> np.ndarray:
    """``A`` divided by its largest absolute entry (unchanged when that is 0)."""
    amax = float(np.abs(A).max()) if A.size else 0.0
    return A / amax if amax > 0 else A


def argmax_set(lo: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Boolean mask of the support points (``p > 0``) whose loss is the largest, to a relative
    1e-14 (the tolerance of the KL root's max-loss test)."""
    pos = p > 0
    lmax = float(lo[pos].max())
    return pos & (lo >= lmax - 1e-14 * max(1.0, abs(lmax)))


class AmbiguitySet:
    """Base class of the ambiguity sets of :mod:`rdpo_theory.divergences` (one module each;
    :func:`rdpo_theory.divergences.get` builds one from its family id).

    Class attributes: ``family`` (the id in :mod:`rdpo_theory.methods`' vocabulary, e.g.
    ``"kl"``), ``parameter`` (the name of the ball size: ``"rho"``, or ``"level"`` for CVaR),
    ``weight_parameter`` (the parameter of :meth:`pair_weights`: ``"tau"`` for KL, whose
    scalable algorithm fixes the multiplier, else ``parameter``), ``anchor`` (docs/theory.md
    section).
    """

    family: str = ""
    parameter: str = "rho"
    weight_parameter: str = "rho"
    anchor: str = "docs/theory.md#ambiguity-sets"
    #: The ball size at which the ball is ``{p}`` (0 for a radius, 1 for the CVaR level).
    nominal: float = 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))

    # ------------------------------------------------------------------ ball size
    def check(self, rho, name: str | None = None) -> float:
        """A valid ball size: a radius ``>= 0`` (finite); CVaR overrides (a level in (0, 1])."""
        return V.positive(rho, name or self.parameter, allow_zero=True, allow_inf=False)

    def divergence(self, q, p) -> float:
        """The size of the smallest ball around ``p`` containing ``q`` (both (n,))."""
        raise NotImplementedError

    def contains(self, size: float, rho: float, *, rtol: float = 1e-9) -> bool:
        """Does a ball of size ``rho`` contain a law of ball size ``size`` (to ``rtol``)?"""
        return size <= rho * (1 + rtol)

    def into_ball(self, q, p, rho: float) -> np.ndarray:
        """``q`` mixed with ``p`` so that it lies in the ball (a law from a solver may leave it
        by its tolerance; weak duality needs a feasible one): ``(1 - e) q + e p`` with
        ``e = 1 - rho / D(q || p)`` (a hair more) when ``D(q || p) > rho``, since
        ``D((1 - e) q + e p) <= (1 - e) D(q || p)`` for a divergence convex in ``q``."""
        q = np.asarray(q, dtype=float)
        q = np.where(p > 0, np.clip(q, 0.0, None), 0.0)
        q = q / q.sum()
        D = self.divergence(q, p)
        if D <= rho:
            return q
        e = min(1.0, (1.0 - rho / D) * (1.0 + 1e-12) + 1e-15)
        return (1.0 - e) * q + e * p

    def radius_for_subpopulation(self, alpha: float) -> float:
        """The smallest ball size containing every subpopulation ``p 1_S / p(S)`` of share
        ``p(S) >= alpha`` (docs/theory.md#subpopulation-radius)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ supremum
    def supremum(self, losses, weights=None, *, rho: float) -> Supremum:
        """``sup { E_q l : D(q || p) <= rho }`` with its worst case and dual (see
        :class:`Supremum`); ``losses`` (n,) in nats, ``weights`` p (n,) (default uniform)."""
        raise NotImplementedError

    def worst_case(self, losses, weights=None, *, rho: float) -> np.ndarray:
        """The worst-case law ``q`` (n,) of :meth:`supremum`."""
        return self.supremum(losses, weights, rho=rho).worst_case

    def best_response(self, losses, weights, rho: float) -> np.ndarray:
        """The worst-case law ``q`` (n,) by the set's kernel alone, for the layers' inner loops
        (the audit, the exact programs' certificates, the torch losses), which validate their
        arrays once themselves: no second validation or renormalisation of ``weights`` (the
        kernels that check their input, chi-square and CVaR, still do). Default:
        :meth:`worst_case`."""
        return self.worst_case(losses, weights, rho=rho)

    def dual_value(self, losses, weights=None, *, rho: float, **dual) -> float:
        """The dual objective at the dual point ``dual`` (keywords as in
        :attr:`Supremum.dual`): ``>= supremum`` for every dual point (weak duality), equal at
        the optimum."""
        raise NotImplementedError

    def robust_risk(
        self,
        theta,
        data,
        *,
        rho: float,
        beta: float,
        theta_ref=None,
        candidates=None,
        cost=None,
        kappa: float = math.inf,
    ) -> float:
        """``sup_{Q in ball(P, rho)} E_Q l(z; theta)`` (nats) for the DPO losses of a
        log-linear policy on ``data`` (a :class:`~rdpo_theory.data.PreferenceData`).
        ``candidates``, ``cost`` and ``kappa`` (a finite set the adversary moves pairs to) are
        for :class:`~rdpo_theory.divergences.Wasserstein` only; a divergence ball refuses
        them."""
        from ..losses import dpo_losses

        self._no_transport(candidates, cost, kappa)
        lo = dpo_losses(theta, data, beta=beta, theta_ref=theta_ref)
        return self.supremum(lo, data.weights, rho=rho).value

    def _no_transport(self, candidates, cost, kappa) -> None:
        if candidates is not None or cost is not None or kappa != math.inf:
            raise InputError(
                f"candidates, cost and kappa apply to Wasserstein balls only, not to {self!r}"
            )

    # ------------------------------------------------------------------ exact (theta, eta) programs
    #: The method id of the exact DRO-DPO over this set (:func:`rdpo_theory.exact.ball_dpo`).
    dpo_method: str = ""
    #: The set's name in messages (``"exact chi-square DPO: ..."``).
    title: str = "divergence"

    def dual_penalty(self, v, vt, p, tie_mass: float, rho: float):
        """The cvxpy expression ``pen`` of the joint program ``min_{theta, eta} eta + pen`` that
        equals ``min_theta sup_ball E_q l(theta)``: ``v >= (l - eta)_+`` (n,) on the informative
        rows of weights ``p``, ``vt = (log 2 - eta)_+`` for the aggregated ``x = 0`` rows of mass
        ``tie_mass`` (docs/theory.md#ambiguity-sets)."""
        raise InputError(f"{self!r} has no joint (theta, eta) program in exact.ball_dpo")

    def balancing_law(self, A: np.ndarray, p: np.ndarray):
        """``(size, q)``: the law ``q`` closest to ``p`` in this set's ball size with
        ``sum_i q_i a_i = 0`` (rows ``a_i`` of ``A`` (n, d)), or ``(size of no law, None)`` when
        none exists; ``theta_ref`` is optimal for the exact DRO-DPO iff :meth:`contains`
        ``(size, rho)`` (:func:`rdpo_theory.exact.baselines.collapse_certificate`). Rows are
        scaled to unit size first (the zero set of ``A^T q`` does not change)."""
        raise InputError(f"{self!r} has no collapse certificate")

    # ------------------------------------------------------------------ scalable algorithms
    def pair_weights(self, losses, param: float, *, weights=None) -> np.ndarray:
        """The per-pair law ``q`` (n,) (sums to 1) that the scalable algorithms hold fixed in
        ``sum_i q_i l_i`` (no gradient through it): the best response of the ball of size
        ``param``; KL fixes the multiplier instead (``param = tau``)."""
        return self.best_response(losses, weights, param)

    def torch_pair_weights(self, per_pair, param: float, *, weights=None):
        """:meth:`pair_weights` of a torch tensor ``per_pair`` (B,), detached, in its dtype and
        device (computed by the numpy kernel in float64: B scalars). ``weights`` (B,) sum to
        1 (default ``1/B``)."""
        import torch

        p = None if weights is None else torch.as_tensor(weights).detach()
        q = self.pair_weights(
            per_pair.detach().to(torch.float64).cpu().numpy(),
            param,
            weights=None if p is None else p.to(torch.float64).cpu().numpy(),
        )
        return torch.as_tensor(q, dtype=per_pair.dtype, device=per_pair.device)


__all__ = ["AmbiguitySet", "Supremum", "argmax_set", "check_alpha", "losses_weights", "unit_rows"]
