"""Per-pair preference losses and their gradients (numpy).

Notation (docs/theory.md#dpo-loss, docs/theory.md#log-linear-policies,
docs/theory.md#baselines): for a log-linear policy the implicit reward margin of
pair i is ``h_i = (theta - theta_ref) . x_i``; with signed label ``sy_i = 2 y_i - 1`` the
oriented, scaled margin is

    m_i = sy_i * beta * h_i,

and the DPO loss is ``l_i = softplus(-m_i) = -log sigmoid(m_i)`` (nats). Every loss here is a
function of the margin ``m`` alone, so the same formula serves log-linear data and language
models, where ``beta * h`` comes from log-probabilities. The torch mirror is
``rdpo_theory.torch.losses``; tests check the two agree.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, log_expit, logsumexp

from . import _validate as V
from .data import PreferenceData, as_data

# the ball kernels live with their ambiguity sets (one copy; re-exported here)
from .divergences.chi2 import chi2_divergence, chi2_objective, chi2_weights  # noqa: F401
from .divergences.cvar import cvar_objective, cvar_weights  # noqa: F401
from .divergences.kl import kl_divergence  # noqa: F401
from .errors import InputError
from .options import NONNEGATIVE, POSITIVE, Interval, Options, check, declare

#: Label smoothing of cDPO: ``eps in [0, 1/2]``.
CDPO_EPS = [Interval(float, 0, 0.5, closed="both")]
#: Known flip rate of rDPO: ``eps in [0, 1/2)`` (at 1/2 the labels carry no information and
#: the ``1 / (1 - 2 eps)`` correction is undefined; beyond, the labels are inverted).
RDPO_EPS = [Interval(float, 0, 0.5, closed="left")]
#: The CVaR level: the worst ``level`` fraction of the loss distribution, in (0, 1].
CVAR_LEVEL = [Interval(float, 0, 1, closed="right")]


# ---------------------------------------------------------------------------- margins
@declare({"beta": POSITIVE})
def margins(theta, X, y, *, beta: float, theta_ref=None) -> np.ndarray:
    """Oriented scaled margins ``m_i = (2 y_i - 1) * beta * (theta - theta_ref) . x_i``.

    Parameters
    ----------
    theta : array_like, shape (d,)
    X : array_like, shape (n, d)
    y : array_like, shape (n,), labels in {0, 1}
    beta : float > 0
    theta_ref : array_like, shape (d,), optional (default 0)

    Returns
    -------
    ndarray, shape (n,)
    """
    return _margins(theta, X, y, beta, theta_ref)


def _margins(theta, X, y, beta, theta_ref) -> np.ndarray:
    """:func:`margins` without the argument checks (callers checked beta once)."""
    X = np.asarray(X, dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64)
    delta = theta if theta_ref is None else theta - np.asarray(theta_ref, dtype=np.float64)
    sy = 2.0 * np.asarray(y, dtype=np.float64) - 1.0
    return sy * beta * (X @ delta)


# ---------------------------------------------------------------------------- DPO
def dpo_loss(m) -> np.ndarray:
    """DPO per-pair loss ``l(m) = softplus(-m) = -log sigmoid(m)``, elementwise, stable."""
    return -log_expit(np.asarray(m, dtype=np.float64))


def dpo_loss_grad(m) -> np.ndarray:
    """Derivative ``dl/dm = -sigmoid(-m)``, elementwise."""
    return -expit(-np.asarray(m, dtype=np.float64))


@declare({"beta": POSITIVE})
def dpo_losses(theta, data: PreferenceData, *, beta: float, theta_ref=None) -> np.ndarray:
    """Per-pair DPO losses ``l_i(theta)``, shape (n,)."""
    data = as_data(data)
    return dpo_loss(_margins(theta, data.X, data.y, beta, theta_ref))


@declare({"beta": POSITIVE})
def dpo_risk(theta, data: PreferenceData, *, beta: float, theta_ref=None) -> float:
    """Weighted mean DPO loss ``L(theta) = sum_i p_i l_i(theta)`` (nats)."""
    data = as_data(data)
    m = _margins(theta, data.X, data.y, beta, theta_ref)
    return float(data.weights @ dpo_loss(m))


@declare({"beta": POSITIVE})
def dpo_risk_grad(theta, data: PreferenceData, *, beta: float, theta_ref=None) -> np.ndarray:
    """Gradient of :func:`dpo_risk` in theta:
    ``sum_i p_i * (-sigmoid(-m_i)) * sy_i * beta * x_i``, shape (d,)."""
    data = as_data(data)
    m = _margins(theta, data.X, data.y, beta, theta_ref)
    coef = data.weights * dpo_loss_grad(m) * data.signed_labels * beta
    return data.X.T @ coef


@declare({"beta": POSITIVE})
def dpo_risk_hessian(theta, data: PreferenceData, *, beta: float, theta_ref=None) -> np.ndarray:
    """Hessian ``sum_i p_i beta^2 sigmoid(m_i) sigmoid(-m_i) x_i x_i^T``, shape (d, d)."""
    data = as_data(data)
    m = _margins(theta, data.X, data.y, beta, theta_ref)
    c = data.weights * beta**2 * expit(m) * expit(-m)
    return (data.X * c[:, None]).T @ data.X


def check_beta(beta) -> float:
    """The DPO temperature ``beta > 0`` as a float, checked by :func:`rdpo_theory.options.check`
    (for modules whose functions are not declared yet; a declared function has ``"beta":
    POSITIVE`` next to its signature instead)."""
    return float(check("beta", beta, POSITIVE))


# ---------------------------------------------------------------------------- KLDPO / WDPO
# numpy mirrors of rdpo_theory.torch.losses (docs/theory.md#algorithm-1-wdpo,
# docs/theory.md#algorithm-2-kldpo); tests check they agree.
@V.renamed_keyword("base_weights", "weights")
@declare({"tau": POSITIVE, "variant": [Options(("normalized", "clipped"))], "clip": POSITIVE})
def kl_weights(
    l, *, tau: float, variant: str = "normalized", clip: float = 10.0, weights=None
) -> np.ndarray:
    """KLDPO weights of per-pair losses ``l`` (n,), no gradient through them.

    ``normalized`` (Algorithm 2): ``w_i = n softmax_i((l_i - mean l) / tau)`` (mean 1);
    ``clipped`` (the paper's code): ``w_i = min(exp((l_i - mean l) / tau), clip)``.
    The KLDPO loss is ``mean_i w_i l_i``. With data ``weights`` p (n,): the
    centre is ``sum_i p_i l_i``, ``normalized`` gives ``w_i = q_i / p_i`` with
    ``q_i ∝ p_i exp(l_i / tau)``, and the loss is ``sum_i p_i w_i l_i``.
    """
    from scipy.special import logsumexp, softmax

    l = V.as_vector(l, "l")
    if weights is not None:
        p = V.as_weights(weights, l.shape[0], "weights")
        z = (l - p @ l) / tau
        if variant == "normalized":
            with np.errstate(divide="ignore"):
                return np.exp(z - logsumexp(z, b=p))
        if variant == "clipped":
            return np.minimum(np.exp(z), clip)
    z = (l - l.mean()) / tau
    if variant == "normalized":
        return l.shape[0] * softmax(z)
    return np.minimum(np.exp(z), clip)  # variant == "clipped" (declared)


@declare({"tau": POSITIVE})
def kl_tilted_value(l, *, tau: float) -> float:
    """``tau * log mean_i exp(l_i / tau)``: the KL dual at a fixed multiplier ``lam = tau``,
    whose gradient normalized KLDPO follows."""
    from scipy.special import logsumexp

    l = V.as_vector(l, "l")
    return float(tau * (logsumexp(l / tau) - np.log(l.shape[0])))


@declare({"beta": POSITIVE})
def wdpo_input_grad_sq_norms(theta, X, y, *, beta: float, theta_ref=None) -> np.ndarray:
    """``||grad_x l_i||_2^2 = beta^2 ||theta - theta_ref||^2 sigmoid(-m_i)^2`` for log-linear
    pairs (``grad_x l = -sy beta (theta - theta_ref) sigmoid(-m)``), shape (n,)."""
    theta = np.asarray(theta, dtype=np.float64)
    delta = theta if theta_ref is None else theta - np.asarray(theta_ref, dtype=np.float64)
    m = _margins(theta, X, y, beta, theta_ref)
    return beta**2 * float(delta @ delta) * expit(-m) ** 2


@declare({"rho0": NONNEGATIVE, "variant": [Options(("sqrt-mean", "per-pair"))]})
def wdpo_objective(l, sq_norms, *, rho0: float, variant: str = "sqrt-mean", weights=None) -> float:
    """WDPO objective from per-pair losses and squared input-gradient norms, both (n,).

    ``sqrt-mean`` (Algorithm 1): ``mean l + rho0 sqrt(mean sq)``;
    ``per-pair`` (the paper's code): ``mean (l + rho0 sq)``. With probability ``weights`` p
    every ``mean_i`` becomes ``sum_i p_i``.
    """
    l = V.as_vector(l, "l")
    sq = V.as_vector(sq_norms, "sq_norms", length=l.shape[0])
    p = V.as_weights(weights, l.shape[0], "weights")
    if variant == "sqrt-mean":
        return float(p @ l + rho0 * np.sqrt(p @ sq))
    return float(p @ (l + rho0 * sq))  # variant == "per-pair" (declared)


# ============================================================================ baselines
# docs/theory.md#baselines. Per-pair baselines are functions of the oriented scaled margin m;
# aggregate ones (Dr. DPO, group-robust, chi-square, CVaR) act on a vector of per-pair losses
# with probability weights p. The torch mirrors are in ``rdpo_theory.torch.baselines`` and the
# exact programs in ``rdpo_theory.exact.baselines``.
def check_eps(eps, *, method: str = "rdpo") -> float:
    """A label-noise rate as a float, checked by :func:`rdpo_theory.options.check` against
    :data:`CDPO_EPS` (``method="cdpo"``, label smoothing in ``[0, 1/2]``) or :data:`RDPO_EPS`
    (``method="rdpo"``, a known flip rate in ``[0, 1/2)``). For modules whose functions are not
    declared yet; declared functions name the constant next to their signature."""
    if method not in ("cdpo", "rdpo"):
        raise ValueError(f"method must be 'cdpo' or 'rdpo', got {method!r}")
    return float(check("eps", eps, CDPO_EPS if method == "cdpo" else RDPO_EPS))


@declare({"eps": CDPO_EPS})
def cdpo_loss(m, *, eps: float) -> np.ndarray:
    """Conservative DPO (label smoothing ``eps``):
    ``l(m) = (1 - eps) softplus(-m) + eps softplus(m)`` (nats), elementwise. Convex in m."""
    m = np.asarray(m, dtype=np.float64)
    return -(1.0 - eps) * log_expit(m) - eps * log_expit(-m)


@declare({"eps": CDPO_EPS})
def cdpo_loss_grad(m, *, eps: float) -> np.ndarray:
    """``dl/dm = -(1 - eps) sigmoid(-m) + eps sigmoid(m)``, elementwise."""
    m = np.asarray(m, dtype=np.float64)
    return -(1.0 - eps) * expit(-m) + eps * expit(m)


@declare({"eps": RDPO_EPS})
def rdpo_loss(m, *, eps: float) -> np.ndarray:
    """Robust DPO for a known flip rate ``eps < 1/2`` (Chowdhury et al. 2024):
    ``l(m) = ((1 - eps) softplus(-m) - eps softplus(m)) / (1 - 2 eps)`` (nats), elementwise.

    Since ``softplus(m) = softplus(-m) + m`` this equals ``softplus(-m) - eps m / (1 - 2 eps)``:
    the DPO loss minus a linear term. So rDPO is convex in m (and in theta for log-linear
    policies), with the same curvature as DPO, but it is unbounded below along directions of
    large margins; its minimiser may lie at infinity unless the parameter set is bounded.
    Its expectation over flipped labels is the clean DPO loss (unbiasedness).
    """
    m = np.asarray(m, dtype=np.float64)
    return -log_expit(m) - eps * m / (1.0 - 2.0 * eps)


@declare({"eps": RDPO_EPS})
def rdpo_loss_grad(m, *, eps: float) -> np.ndarray:
    """``dl/dm = -sigmoid(-m) - eps / (1 - 2 eps)``, elementwise."""
    m = np.asarray(m, dtype=np.float64)
    return -expit(-m) - eps / (1.0 - 2.0 * eps)


@declare({"beta": POSITIVE})
def ipo_loss(m, *, beta: float) -> np.ndarray:
    """IPO (Azar et al. 2024) on the oriented margin ``h = m / beta``:
    ``l = (h - 1 / (2 beta))^2``, elementwise (TRL's ``loss_type="ipo"``). Convex (a square)."""
    m = np.asarray(m, dtype=np.float64)
    return (m / beta - 0.5 / beta) ** 2


@declare({"beta": POSITIVE})
def ipo_loss_grad(m, *, beta: float) -> np.ndarray:
    """``dl/dm = 2 (m / beta - 1 / (2 beta)) / beta``, elementwise."""
    m = np.asarray(m, dtype=np.float64)
    return 2.0 * (m / beta - 0.5 / beta) / beta


def _losses_and_weights(losses, weights) -> tuple[np.ndarray, np.ndarray]:
    lo = V.as_vector(losses, "losses")
    if lo.shape[0] == 0:
        raise InputError("losses is empty")
    return lo, V.as_weights(weights, lo.shape[0], "weights")


@declare({"beta_prime": POSITIVE})
def drdpo_objective(losses, *, beta_prime: float, weights=None) -> float:
    """Dr. DPO (Wu et al. 2025): ``-beta' log sum_i p_i exp(-l_i / beta')`` (nats).

    A soft minimum of the losses: it down-weights high-loss (likely mislabelled) pairs, the
    opposite of KLDPO's soft maximum. It is not convex in theta. As ``beta' -> inf`` it tends
    to the mean loss.

    Parameters
    ----------
    losses : array_like, shape (n,)
        Per-pair losses ``l_i`` (DPO losses in Dr. DPO).
    beta_prime : float > 0
    weights : array_like, shape (n,), optional
        Probability weights ``p_i`` (default uniform).
    """
    lo, p = _losses_and_weights(losses, weights)
    bp = float(beta_prime)
    z = -lo / bp
    keep = p > 0
    return float(-bp * logsumexp(z[keep], b=p[keep]))


@declare({"beta_prime": POSITIVE})
def drdpo_weights(losses, *, beta_prime: float, weights=None) -> np.ndarray:
    """Gradient weights of :func:`drdpo_objective`:
    ``w_i = p_i exp(-l_i / beta') / sum_j p_j exp(-l_j / beta')``, shape (n,), summing to 1."""
    lo, p = _losses_and_weights(losses, weights)
    bp = float(beta_prime)
    with np.errstate(divide="ignore"):
        z = np.log(p) - lo / bp
    return np.exp(z - logsumexp(z))


def group_indices(groups, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, index)``: the distinct group labels (G,) and each pair's group index (n,)."""
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise InputError(f"groups must have shape ({n},), one label per pair, got {g.shape}")
    if g.dtype.kind == "f" and not np.all(np.isfinite(g)):
        raise InputError("groups contains NaN or inf")
    labels, index = np.unique(g, return_inverse=True)
    return labels, index


def group_losses(losses, groups, *, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-group mean losses ``L_g = sum_{i in g} p_i l_i / P_g`` with ``P_g = sum_{i in g} p_i``.

    Returns ``(labels (G,), L (G,))``. Every group must carry positive mass.
    """
    lo, p = _losses_and_weights(losses, weights)
    labels, idx = group_indices(groups, lo.shape[0])
    mass = np.bincount(idx, weights=p, minlength=labels.shape[0])
    if np.any(mass <= 0):
        raise InputError(f"groups {labels[mass <= 0].tolist()} have zero weight")
    return labels, np.bincount(idx, weights=p * lo, minlength=labels.shape[0]) / mass


def group_robust_objective(losses, groups, *, weights=None) -> float:
    """Group-robust DPO (Ramesh et al. 2024): ``max_g L_g = max over group weights alpha in the
    simplex of sum_g alpha_g L_g`` (nats), with ``L_g`` from :func:`group_losses`."""
    return float(np.max(group_losses(losses, groups, weights=weights)[1]))


def group_robust_weights(losses, groups, *, weights=None) -> np.ndarray:
    """Best-response pair weights: ``q_i = p_i / P_g*`` on the worst group ``g*`` (the first one
    on ties), 0 elsewhere; shape (n,), summing to 1. ``q . l`` is the group-robust objective."""
    lo, p = _losses_and_weights(losses, weights)
    _, L = group_losses(lo, groups, weights=p)
    _, idx = group_indices(groups, lo.shape[0])
    sel = idx == int(np.argmax(L))
    q = np.where(sel, p, 0.0)
    return q / q.sum()
