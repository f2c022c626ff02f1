"""Finite log-linear preference worlds with exact population laws
(docs/theory.md#log-linear-policies, docs/theory.md#shift-families).

A world has ``S`` contexts, ``A`` actions per context and features ``psi[s, a] in R^d`` with
``||psi||_2 <= 1``. Log-linear policies are ``pi_theta(a|s) ∝ exp(theta . psi[s, a])``. Pairs
are drawn as ``s ~ mu0``, ``a1, a2 ~ pi0(.|s)`` independently, and labelled by Bradley-Terry on a
reward table ``r[s, a]``: ``P(y=1 | s, a1, a2) = sigmoid(r[s, a1] - r[s, a2])``. When the table
is ``r = beta (theta* - theta_ref) . psi`` the world is realizable and DPO's population optimum
is ``theta*``.

The data space Z = {(s, a1, a2, y)} has ``2 S A^2`` points and is enumerated with exact
probabilities by :meth:`World.population`, so population objectives are exact weighted sums.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.special import expit, log_softmax, softmax

from . import _validate as V
from .data import PreferenceData
from .errors import InputError
from .options import (
    NONE,
    NONNEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    PROBABILITY,
    SEED,
    Instance,
    Interval,
    Options,
    declare,
    option,
    validate_fields,
)
from .rng import make_rng

#: How a random world draws its behaviour policy and context law.
LAWS = [Options(("uniform", "dirichlet"))]
#: The two reward mixtures of :func:`mixture_reward`.
MIXTURES = [Options(("convex", "geometric"))]


@dataclass(frozen=True)
class Population:
    """A world's data space Z with exact probabilities.

    Attributes
    ----------
    data : PreferenceData
        ``X`` (|Z|, d), ``y`` (|Z|,), ``weights`` = exact P0 probabilities.
    s, a1, a2 : ndarray of int, shape (|Z|,)
        Context and action indices of each point.
    """

    data: PreferenceData
    s: np.ndarray
    a1: np.ndarray
    a2: np.ndarray

    @property
    def size(self) -> int:
        return self.data.n


@dataclass(frozen=True, eq=False)
class World:
    """A finite log-linear preference world.

    Parameters
    ----------
    psi : array_like, shape (S, A, d)
        Features, each of Euclidean norm <= 1.
    mu0 : array_like, shape (S,)
        Context law, summing to 1.
    pi0 : array_like, shape (S, A)
        Behaviour (sampling) policy, each row summing to 1.
    beta : float > 0
        DPO temperature.
    B : float > 0
        Radius of the parameter set Theta = {||theta||_2 <= B}.
    theta_star : array_like, shape (d,), optional
        Realizing parameter. When ``rewards`` is omitted it defines the label model
        ``r = beta (theta_star - theta_ref) . psi``.
    theta_ref : array_like, shape (d,), optional
        Reference parameter (default 0, the uniform policy).
    rewards : array_like, shape (S, A), optional
        Bradley-Terry reward table for labels. Overrides ``theta_star``'s table.
    name : str
    """

    psi: np.ndarray
    mu0: np.ndarray
    pi0: np.ndarray
    beta: float = option(help="DPO temperature beta > 0", constraints=POSITIVE)
    B: float = option(help="radius of the parameter ball ||theta|| <= B", constraints=POSITIVE)
    theta_star: np.ndarray | None = None
    theta_ref: np.ndarray | None = None
    rewards: np.ndarray | None = None
    name: str = "world"
    #: True when the label rewards were derived from theta_star (then :meth:`replace`
    #: re-derives them after changes to psi, beta, theta_star or theta_ref).
    derived_rewards: bool = dataclasses.field(default=False, init=False, repr=False)

    def __post_init__(self):
        psi = np.asarray(self.psi, dtype=np.float64)
        if psi.ndim != 3 or 0 in psi.shape:
            raise InputError(f"psi must have shape (S, A, d) with S, A, d >= 1, got {psi.shape}")
        if not np.all(np.isfinite(psi)):
            raise InputError("psi contains NaN or inf")
        if np.max(np.linalg.norm(psi, axis=-1)) > 1 + 1e-9:
            raise InputError("psi must have ||psi[s, a]||_2 <= 1 for every (s, a)")
        S, A, d = psi.shape
        mu0 = V.as_weights(self.mu0, S, "mu0")
        pi0 = np.array(self.pi0, dtype=np.float64)  # a copy: rows are renormalised
        if pi0.shape != (S, A):
            raise InputError(f"pi0 must have shape (S, A) = {(S, A)}, got {pi0.shape}")
        for s in range(S):
            pi0[s] = V.as_weights(pi0[s], A, f"pi0[{s}]")
        validate_fields(self)
        beta, B = float(self.beta), float(self.B)
        theta_ref = V.as_theta(self.theta_ref, d, "theta_ref")
        theta_star = None
        if self.theta_star is not None:
            theta_star = V.as_vector(self.theta_star, "theta_star", length=d)
        if self.rewards is None:
            if theta_star is None:
                raise InputError("give theta_star or rewards: the label model is undefined")
            rewards = beta * (psi @ (theta_star - theta_ref))
            object.__setattr__(self, "derived_rewards", True)
        else:
            rewards = np.asarray(self.rewards, dtype=np.float64)
            if rewards.shape != (S, A):
                raise InputError(f"rewards must have shape (S, A) = {(S, A)}, got {rewards.shape}")
            if not np.all(np.isfinite(rewards)):
                raise InputError("rewards contains NaN or inf")
        for k, v in dict(
            psi=psi,
            mu0=mu0,
            pi0=pi0,
            beta=beta,
            B=B,
            theta_star=theta_star,
            theta_ref=theta_ref,
            rewards=rewards,
        ).items():
            if isinstance(v, np.ndarray):
                v.setflags(write=False)
            object.__setattr__(self, k, v)

    # ------------------------------------------------------------------ sizes
    @property
    def n_contexts(self) -> int:
        return int(self.psi.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.psi.shape[1])

    @property
    def dim(self) -> int:
        return int(self.psi.shape[2])

    def replace(self, **changes) -> World:
        """A new world with some fields changed (validated again).

        Label rewards derived from ``theta_star`` are re-derived unless ``rewards`` is given."""
        if self.derived_rewards and "rewards" not in changes:
            changes["rewards"] = None
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ data space Z
    @cached_property
    def population(self) -> Population:
        """Every (s, a1, a2, y) with its exact probability under P0.

        Order: s, then a1, then a2, then y in (0, 1). Pairs with a1 = a2 are included (x = 0).
        """
        S, A, _ = self.psi.shape
        s, a1, a2, yy = np.meshgrid(
            np.arange(S), np.arange(A), np.arange(A), np.arange(2), indexing="ij"
        )
        s, a1, a2, yy = (t.ravel() for t in (s, a1, a2, yy))
        X = self.psi[s, a1] - self.psi[s, a2]
        p1 = expit(self.rewards[s, a1] - self.rewards[s, a2])
        py = np.where(yy == 1, p1, 1.0 - p1)
        w = self.mu0[s] * self.pi0[s, a1] * self.pi0[s, a2] * py
        w = w / w.sum()
        return Population(PreferenceData(X, yy.astype(float), w), s, a1, a2)

    def candidates(self) -> tuple[np.ndarray, np.ndarray]:
        """``(Xc, yc)``: all of Z, the Wasserstein adversary's candidate set."""
        pop = self.population.data
        return pop.X, pop.y

    @declare({"method": [Options(("dpo", "kldpo", "wdpo"))], "rho": NONNEGATIVE})
    def robust_optimum(self, method: str, rho: float = 0.0, **kwargs):
        """The exact population optimum of ``method`` over Theta (an ``ExactResult``).

        ``method`` is ``"dpo"``, ``"kldpo"`` (theta^KL(rho)) or ``"wdpo"`` (theta^W(rho)), solved
        on the exact P0 over Z with this world's ``beta``, ``theta_ref`` and radius ``B``
        (override any of them, e.g. ``radius=None``, through ``kwargs``). WDPO's adversary moves
        mass over all of Z (``candidates=self.candidates()``) unless ``candidates`` is given.
        """
        from .exact import dpo, kldpo, wdpo

        kwargs.setdefault("beta", self.beta)
        kwargs.setdefault("theta_ref", self.theta_ref)
        kwargs.setdefault("radius", self.B)
        data = self.population.data
        if method == "dpo":
            return dpo(data, **kwargs)
        if method == "kldpo":
            return kldpo(data, rho=rho, **kwargs)
        kwargs.setdefault("candidates", self.candidates())
        return wdpo(data, rho=rho, **kwargs)

    def coverage(self) -> float:
        """``lambda_min(Sigma_P0)`` with ``Sigma_P0 = E_P0[x x^T]`` (Assumption 2's lam0 at P0)."""
        return float(np.linalg.eigvalsh(self.population.data.second_moment())[0])

    # ------------------------------------------------------------------ sampling
    @declare({"n": POSITIVE_INT, "seed": SEED})
    def sample_indices(self, n: int, seed) -> np.ndarray:
        """Indices into Z of ``n`` i.i.d. draws from P0, reproducible from ``seed``."""
        w = self.population.data.weights
        return make_rng(seed).choice(w.shape[0], size=n, p=w)

    @declare({"n": POSITIVE_INT, "seed": SEED})
    def sample(self, n: int, seed=0) -> PreferenceData:
        """``n`` i.i.d. pairs from P0 as rows (uniform weights)."""
        idx = self.sample_indices(n, seed)
        pop = self.population.data
        return PreferenceData(pop.X[idx], pop.y[idx])

    @declare({"n": POSITIVE_INT, "seed": SEED, "keep_zeros": ["boolean"]})
    def empirical(self, n: int, seed=0, *, keep_zeros: bool = False) -> PreferenceData:
        """The empirical law of the same ``n`` draws as :meth:`sample`, aggregated over Z.

        Rows are the points of Z that were drawn (all of Z with ``keep_zeros``), weights are
        counts / n. Exact solvers then cost O(|Z|) whatever n is.
        """
        idx = self.sample_indices(n, seed)
        pop = self.population.data
        counts = np.bincount(idx, minlength=pop.n).astype(float)
        keep = np.ones(pop.n, bool) if keep_zeros else counts > 0
        return PreferenceData(pop.X[keep], pop.y[keep], counts[keep] / n)

    # ------------------------------------------------------------------ policies
    def logits(self, theta) -> np.ndarray:
        """``theta . psi[s, a]``, shape (S, A)."""
        return self.psi @ V.as_vector(theta, "theta", length=self.dim)

    def policy(self, theta) -> np.ndarray:
        """``pi_theta(a|s)``, shape (S, A), rows summing to 1."""
        return softmax(self.logits(theta), axis=1)

    def reward_table(self, theta) -> np.ndarray:
        """Linear reward ``beta (theta - theta_ref) . psi[s, a]``, shape (S, A)."""
        return self.beta * (self.logits(theta) - self.psi @ self.theta_ref)

    def classifier_reward_table(self, theta) -> np.ndarray:
        """A positive, classifier-like reward ``sigmoid(theta . psi[s, a])`` in (0, 1), (S, A).

        Used for the geometric mixture, which needs positive rewards (the paper's rewards are
        classifier probabilities)."""
        return expit(self.logits(theta))

    def _as_table(self, reward) -> np.ndarray:
        if reward is None:
            return self.rewards
        r = np.asarray(reward, dtype=np.float64)
        if r.ndim == 1:
            return self.reward_table(r)
        if r.shape != (self.n_contexts, self.n_actions):
            raise InputError(f"reward must be a parameter (d,) or a table (S, A), got {r.shape}")
        if not np.all(np.isfinite(r)):
            raise InputError("reward contains NaN or inf")
        return r

    def expected_reward(self, theta, reward=None) -> float:
        """``E_{s~mu0, a~pi_theta(.|s)} r[s, a]`` for a reward table (S, A), a reward
        parameter (d,) (linear table), or None (the world's label rewards)."""
        r = self._as_table(reward)
        return float(self.mu0 @ np.sum(self.policy(theta) * r, axis=1))

    def policy_reward(self, pi, reward=None) -> float:
        """Expected reward of an arbitrary policy table ``pi`` (S, A)."""
        pi = np.asarray(pi, dtype=np.float64)
        if pi.shape != (self.n_contexts, self.n_actions):
            raise InputError(f"pi must have shape (S, A), got {pi.shape}")
        return float(self.mu0 @ np.sum(pi * self._as_table(reward), axis=1))

    def kl_to_ref(self, theta) -> float:
        """``E_{s~mu0} KL(pi_theta(.|s) || pi_ref(.|s))`` in nats."""
        lp = log_softmax(self.logits(theta), axis=1)
        lr = log_softmax(self.psi @ self.theta_ref, axis=1)
        return float(self.mu0 @ np.sum(np.exp(lp) * (lp - lr), axis=1))

    def kl_optimal_policy(self, reward=None) -> np.ndarray:
        """The KL-regularised optimum ``pi*(a|s) ∝ pi_ref(a|s) exp(r[s, a] / beta)``, (S, A).

        This is what DPO's population optimum targets when labels follow ``r``."""
        r = self._as_table(reward)
        return softmax(self.psi @ self.theta_ref + r / self.beta, axis=1)

    def best_action_reward(self, reward=None) -> float:
        """The unregularised ceiling ``E_s max_a r[s, a]``."""
        return float(self.mu0 @ self._as_table(reward).max(axis=1))

    # ------------------------------------------------------------------ constructors
    @classmethod
    @declare(
        {
            "n_contexts": POSITIVE_INT,
            "n_actions": [Interval(int, 2, None, closed="left")],
            "dim": POSITIVE_INT,
            "beta": POSITIVE,
            "theta_norm": NONNEGATIVE,
            "B": [*POSITIVE, NONE],
            "behaviour": LAWS,
            "contexts": LAWS,
            "seed": SEED,
            "name": [Instance(str, name="str"), NONE],
        }
    )
    def random(
        cls,
        n_contexts: int = 8,
        n_actions: int = 4,
        dim: int = 3,
        *,
        beta: float = 1.0,
        theta_norm: float = 1.0,
        B: float | None = None,
        behaviour: str = "uniform",
        contexts: str = "uniform",
        seed=0,
        name: str | None = None,
    ) -> World:
        """A random realizable world.

        Features are Gaussian directions scaled to norms in [0.5, 1]; ``theta*`` is a uniform
        direction of norm ``theta_norm``; ``B`` defaults to ``2 * theta_norm``. ``behaviour``
        and ``contexts`` are ``"uniform"`` or ``"dirichlet"`` (Dirichlet(1) draws).
        """
        theta_norm = float(theta_norm)
        rng = make_rng(seed)
        g = rng.standard_normal((n_contexts, n_actions, dim))
        g /= np.linalg.norm(g, axis=-1, keepdims=True)
        psi = g * rng.uniform(0.5, 1.0, size=(n_contexts, n_actions, 1))
        u = rng.standard_normal(dim)
        theta_star = theta_norm * u / np.linalg.norm(u)
        pi0 = _law(rng, behaviour, (n_contexts, n_actions))
        mu0 = _law(rng, contexts, (n_contexts,))
        B = 2.0 * max(theta_norm, 0.5) if B is None else B
        nm = name or f"random-S{n_contexts}-A{n_actions}-d{dim}"
        return cls(psi, mu0, pi0, beta, B, theta_star=theta_star, name=nm)

    @classmethod
    @declare({"beta": POSITIVE})
    def toy(cls, *, beta: float = 1.0) -> World:
        """A hand-checkable world: 2 contexts, 2 actions, d = 2, uniform mu0 and pi0.

        ``psi[0] = [(1, 0), (0, 0)]``, ``psi[1] = [(0, 1), (0, 0)]``, ``theta* = (1, -0.5)``.
        Off-diagonal pairs have ``x = ±e_1`` (context 0) or ``±e_2`` (context 1), so e.g.
        ``P(s=0, a1=0, a2=1, y=1) = 1/8 * sigmoid(beta)`` and ``Sigma_P0 = I / 4``.
        """
        psi = np.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]])
        return cls(
            psi,
            [0.5, 0.5],
            np.full((2, 2), 0.5),
            beta,
            2.0,
            theta_star=np.array([1.0, -0.5]),
            name="toy",
        )


def _law(rng, kind: str, shape) -> np.ndarray:
    """A uniform or Dirichlet(1) law (``kind`` in :data:`LAWS`) of the given shape."""
    if kind == "uniform":
        return np.full(shape, 1.0 / shape[-1])
    return rng.dirichlet(np.ones(shape[-1]), size=shape[:-1] or None)


# ---------------------------------------------------------------------------- shift families
@declare({"t": PROBABILITY})
def context_shift(world: World, mu0=None, *, toward=None, t: float = 1.0) -> World:
    """Reweight the context law: ``mu0`` explicitly, or ``(1 - t) mu0 + t * toward``."""
    if (mu0 is None) == (toward is None):
        raise InputError("give exactly one of mu0 or toward")
    if toward is not None:
        target = V.as_weights(toward, world.n_contexts, "toward")
        mu0 = (1 - t) * world.mu0 + t * target
    return world.replace(mu0=mu0, name=f"{world.name}|context-shift")


@declare({"t": PROBABILITY})
def behaviour_shift(world: World, pi0=None, *, toward=None, t: float = 1.0) -> World:
    """Change the behaviour policy: ``pi0`` (S, A) explicitly, or ``(1 - t) pi0 + t * toward``
    where ``toward`` is a policy table (S, A) or a parameter (d,) giving ``pi_toward``."""
    if (pi0 is None) == (toward is None):
        raise InputError("give exactly one of pi0 or toward")
    if toward is not None:
        tw = np.asarray(toward, dtype=np.float64)
        target = world.policy(tw) if tw.ndim == 1 else tw
        if target.shape != world.pi0.shape:
            raise InputError(f"toward must be (d,) or (S, A), got shape {tw.shape}")
        pi0 = (1 - t) * world.pi0 + t * target
    return world.replace(pi0=pi0, name=f"{world.name}|behaviour-shift")


@declare({"alpha": PROBABILITY, "mixture": MIXTURES})
def mixture_reward(r1, r2, alpha: float, mixture: str = "convex") -> np.ndarray:
    """Mixed reward table (docs/theory.md#shift-families).

    ``convex``: ``alpha r1 + (1 - alpha) r2``; ``geometric``: ``r1^alpha r2^(1 - alpha)``
    (requires ``r1, r2 > 0``).
    """
    r1 = np.asarray(r1, dtype=np.float64)
    r2 = np.asarray(r2, dtype=np.float64)
    if r1.shape != r2.shape:
        raise InputError(f"r1 and r2 must have the same shape, got {r1.shape} and {r2.shape}")
    if mixture == "geometric":
        if np.any(r1 <= 0) or np.any(r2 <= 0):
            raise InputError("the geometric mixture needs positive rewards r1, r2")
        return np.exp(alpha * np.log(r1) + (1 - alpha) * np.log(r2))
    return alpha * r1 + (1 - alpha) * r2  # "convex"


@declare({"alpha": PROBABILITY, "mixture": MIXTURES, "label_scale": POSITIVE})
def preference_shift(
    world: World, theta1, theta2, alpha: float, *, mixture: str = "convex", label_scale: float = 1.0
) -> World:
    """Relabel the world by Bradley-Terry on a reward mixture of two parameters.

    ``convex`` mixes the linear tables ``beta (theta_k - theta_ref) . psi``; it is realizable
    with ``theta* = alpha theta1 + (1 - alpha) theta2``. ``geometric`` mixes the positive
    classifier-like tables ``sigmoid(theta_k . psi)`` and is not realizable. Labels follow
    ``sigmoid(label_scale * (r[a1] - r[a2]))``.
    """
    label_scale = float(label_scale)
    t1 = V.as_vector(theta1, "theta1", length=world.dim)
    t2 = V.as_vector(theta2, "theta2", length=world.dim)
    if mixture == "convex":
        r = mixture_reward(world.reward_table(t1), world.reward_table(t2), alpha, "convex")
        star = alpha * t1 + (1 - alpha) * t2 if label_scale == 1.0 else None
    else:
        r = mixture_reward(
            world.classifier_reward_table(t1), world.classifier_reward_table(t2), alpha, mixture
        )
        star = None
    return world.replace(
        rewards=label_scale * r, theta_star=star, name=f"{world.name}|{mixture}-alpha={alpha:g}"
    )


# ---------------------------------------------------------------------------- continuous data
@declare(
    {"n": POSITIVE_INT, "dim": POSITIVE_INT, "beta": POSITIVE, "seed": SEED, "chunk": POSITIVE_INT}
)
def gaussian_preferences(
    n: int, dim: int, *, theta_star, beta: float = 1.0, theta_ref=None, seed=0, chunk: int = 200_000
) -> PreferenceData:
    """Continuous-feature pairs for large-n experiments.

    ``psi1, psi2`` are standard Gaussian vectors normalised to unit norm, ``x = psi1 - psi2``,
    and ``y ~ Bernoulli(sigmoid(beta (theta* - theta_ref) . x))``. Generated in chunks so the
    peak memory is about the size of X (n * dim * 8 bytes).
    """
    beta = float(beta)
    ts = V.as_vector(theta_star, "theta_star", length=dim)
    tr = V.as_theta(theta_ref, dim)
    rng = make_rng(seed)
    X = np.empty((n, dim))
    y = np.empty(n)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        g = rng.standard_normal((2, hi - lo, dim))
        g /= np.linalg.norm(g, axis=-1, keepdims=True)
        X[lo:hi] = g[0] - g[1]
        y[lo:hi] = rng.random(hi - lo) < expit(beta * (X[lo:hi] @ (ts - tr)))
    return PreferenceData(X, y)


# ---------------------------------------------------------------------------- built-in worlds
def _toy(seed: int = 0) -> World:
    return World.toy()


def _random(seed: int = 0) -> World:
    return World.random(8, 4, 3, seed=seed)


def _random_large(seed: int = 0) -> World:
    return World.random(20, 6, 8, seed=seed)


#: Built-in worlds by name (``rdpo solve --world``, ``rdpo rates --world``, the rates study):
#: name -> ``function(seed) -> World``.
BUILTIN_WORLDS = {"toy": _toy, "random": _random, "random-large": _random_large}


@declare({"name": [Options(sorted(BUILTIN_WORLDS))], "seed": SEED})
def builtin_world(name: str, seed: int = 0) -> World:
    """The built-in world ``name`` (see :data:`BUILTIN_WORLDS`) drawn with ``seed``."""
    return BUILTIN_WORLDS[name](seed)
