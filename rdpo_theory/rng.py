"""Reproducible random streams. Every seed goes through :class:`numpy.random.SeedSequence`."""

from __future__ import annotations

import numpy as np

from ._validate import seed as _check_seed
from .errors import InputError


def make_rng(seed) -> np.random.Generator:
    """A Generator from an int >= 0, a SeedSequence, a Generator (returned as is) or None.
    Anything else (``-1``, ``"abc"``, ``True``) raises :class:`~rdpo_theory.errors.InputError`
    naming ``seed``."""
    seed = _check_seed(seed)
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    return np.random.default_rng(np.random.SeedSequence(seed))


def spawn_seeds(seed, k: int) -> list[np.random.SeedSequence]:
    """``k`` independent child SeedSequences of ``seed``, stable across runs and platforms."""
    seed = _check_seed(seed)
    if isinstance(seed, np.random.Generator):
        raise InputError("seed must be an integer or a SeedSequence to spawn from, not a Generator")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return ss.spawn(k)


def stream_seed(*keys: int) -> np.random.SeedSequence:
    """A SeedSequence addressed by a tuple of non-negative ints, e.g. ``(base, n, seed_index)``.

    The same keys always give the same stream, whatever else a sweep computes, so runs can be
    cached and resumed in any order.
    """
    return np.random.SeedSequence(_check_seed(list(keys), "seed keys"))
