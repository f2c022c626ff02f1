"""Reproducible random streams. Every seed goes through :class:`numpy.random.SeedSequence`."""

from __future__ import annotations

import numpy as np


def make_rng(seed) -> np.random.Generator:
    """A Generator from an int, a SeedSequence, a Generator (returned as is) or None."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    return np.random.default_rng(np.random.SeedSequence(seed))


def spawn_seeds(seed, k: int) -> list[np.random.SeedSequence]:
    """``k`` independent child SeedSequences of ``seed``, stable across runs and platforms."""
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return ss.spawn(k)


def stream_seed(*keys: int) -> np.random.SeedSequence:
    """A SeedSequence addressed by a tuple of non-negative ints, e.g. ``(base, n, seed_index)``.

    The same keys always give the same stream, whatever else a sweep computes, so runs can be
    cached and resumed in any order.
    """
    return np.random.SeedSequence([int(k) for k in keys])
