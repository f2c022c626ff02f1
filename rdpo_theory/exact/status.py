"""The status and regime values an :class:`~rdpo_theory.exact.ExactResult` can carry.

Every exact solver of a convex problem returns ``status == STATUS_OPTIMAL`` (a certified
answer; anything else raises :class:`~rdpo_theory.errors.SolverError`) and one of the
``REGIME_*`` values below, which says which case of the problem the answer is in
(docs/theory.md#kl-regimes, docs/theory.md#wasserstein-dro, docs/theory.md#baselines). The
solvers of the objectives that are not convex minimisations (chi-PO, docs/theory.md#chipo;
winsorised DPO, docs/theory.md#winsor-dpo) return ``status == STATUS_LOCAL`` with
``regime == REGIME_LOCAL`` and no optimality gap: a local answer, never certified.
"""

from __future__ import annotations

#: The only status of a returned result: the solver certified optimality.
STATUS_OPTIMAL = "optimal"

#: The status of a local answer (a multi-start local minimum, or a fixed point of a training
#: update that minimises no stated objective): never certified, no optimality gap.
STATUS_LOCAL = "local"

#: A non-robust objective (DPO, IPO, cDPO, rDPO): nothing to be robust against.
REGIME_NOMINAL = "nominal"
#: A robust method at radius rho = 0: it reduces to exact DPO.
REGIME_DPO = "dpo"
#: The robust optimum has a positive dual multiplier (KL lam* > 0; chi-square, CVaR, group DRO
#: with theta away from theta_ref).
REGIME_INTERIOR = "interior"
#: KLDPO with lam* = 0: the adversary puts all mass on the maximal losses.
REGIME_MAX_LOSS = "max-loss"
#: The minimiser is theta_ref: every loss is log 2 and the adversary gains nothing.
REGIME_COLLAPSE = "collapse"
#: Continuous W1 WDPO: the robust objective is DPO plus a norm penalty.
REGIME_PENALTY = "penalty"
#: WDPO over a finite candidate support (a transport program).
REGIME_FINITE = "finite"
#: Continuous W_p WDPO with p > 1: each pair's margin is shifted by the adversary.
REGIME_SHIFT = "shift"

#: The answer to a problem that is not a convex minimisation (status ``"local"``).
REGIME_LOCAL = "local"

#: Every regime value a result can carry.
REGIMES = (
    REGIME_NOMINAL,
    REGIME_DPO,
    REGIME_INTERIOR,
    REGIME_MAX_LOSS,
    REGIME_COLLAPSE,
    REGIME_PENALTY,
    REGIME_FINITE,
    REGIME_SHIFT,
    REGIME_LOCAL,
)
