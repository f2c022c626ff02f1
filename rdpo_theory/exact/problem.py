"""The one setup object of the exact solvers: validated data, beta, theta_ref and radius."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from .. import _validate as V
from ..data import PreferenceData, as_data
from ..errors import InputError, SolverError
from ..options import NAME, POSITIVE, RADIUS, SOLVER
from .ball import project_ball
from .passes import Rows

#: The parameters every exact solver shares, declared once (``rdpo_theory.options.declare``):
#: each solver declares ``{**SOLVE_CONSTRAINTS, <its own>}`` next to its signature.
SOLVE_CONSTRAINTS = {"beta": POSITIVE, "radius": RADIUS, "solver": SOLVER, "cvxpy_solver": NAME}


def is_row_storage(X) -> bool:
    """Whether ``X`` is a feature matrix the fast paths read in place, through passes
    (:class:`.passes.Rows`): a ``numpy.memmap``, a float32 numpy array (promoted chunk by
    chunk, sums in float64), a torch tensor or a dask array."""
    if isinstance(X, np.memmap) or (isinstance(X, np.ndarray) and X.dtype == np.float32):
        return True
    mod = type(X).__module__
    return mod.startswith("torch") or mod.startswith("dask")


def _host_vector(v):
    """A length-n vector (labels, weights) from torch or dask as numpy; others unchanged."""
    if v is None:
        return None
    mod = type(v).__module__
    if mod.startswith("torch"):
        return v.detach().cpu().numpy()
    if mod.startswith("dask"):
        return v.compute()
    return v


@dataclass(frozen=True)
class RowsData:
    """Preference pairs whose features stay in their storage (memmap, torch, dask).

    The data stand for the pairs ``(x_scale * X[i], y[i])`` with weights ``weights``; ``X`` is
    only read through passes (:class:`.passes.Rows`), never copied whole. Built by
    :func:`rows_data`, which validates ``X`` in one pass (shape, dtype, NaN/inf naming the
    row) and keeps the per-row ``max |X_ij|`` (``row_abs_max``, unscaled) from that pass.
    """

    X: object
    y: np.ndarray
    weights: np.ndarray
    row_abs_max: np.ndarray = field(repr=False)
    x_scale: float = 1.0

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        return int(self.X.shape[1])

    @property
    def signed_labels(self) -> np.ndarray:
        return 2.0 * self.y - 1.0


def rows_data(X, y, weights) -> RowsData:
    """Validate ``X`` (left in its storage: one pass, no copy), ``y`` and ``weights`` into a
    :class:`RowsData`. The same checks and messages as :class:`..data.PreferenceData`."""
    if y is None:
        raise InputError("y is required when X is an array")
    n, _ = V.row_storage_shape(X, "X")
    y = V.as_labels(_host_vector(y), n, "y")
    w = V.as_weights(_host_vector(weights), n, "weights")
    amax = Rows(X).row_abs_max()
    V.finite_rows(amax, "X")
    for arr in (y, w, amax):
        arr.setflags(write=False)
    return RowsData(X, y, w, amax)


def x_abs_max(data) -> float:
    """``max_ij |x_ij|`` of a PreferenceData (in memory) or a :class:`RowsData` (kept from its
    validation pass); 0 for an all-zero X."""
    if isinstance(data, RowsData):
        return float(data.row_abs_max.max(initial=0.0)) * data.x_scale
    return float(np.abs(data.X).max(initial=0.0))


#: Stored entries up to this size (and down to its inverse) keep their squares, hence every
#: Gram product, inside float64 range, so a :class:`RowsData` may rescale them after the
#: products (``x_scale``); other data are divided in a copy first.
IN_PLACE_RANGE = 2.0**60


def in_place_ok(row_abs_max) -> bool:
    """Whether data whose rows have these ``max |x_ij|`` may be rescaled in place."""
    top = float(np.max(row_abs_max, initial=0.0))
    return top == 0.0 or 1.0 / IN_PLACE_RANGE <= top <= IN_PLACE_RANGE


def divide_x(data, s: float):
    """The same pairs with features ``x / s`` (weights, labels unchanged): for a
    :class:`RowsData` whose entries allow it (:func:`in_place_ok`) the same storage with
    ``x_scale / s``; otherwise a new in-memory PreferenceData (a copy)."""
    if isinstance(data, RowsData):
        if in_place_ok(data.row_abs_max):
            return replace(data, x_scale=data.x_scale / s)
        X = Rows(data.X).take(np.arange(data.n)) * data.x_scale
        return PreferenceData(X / s, data.y, data.weights)
    return PreferenceData(data.X / s, data.y, data.weights)


@dataclass(frozen=True)
class Problem:
    """Validated common inputs of an exact solve (docs/theory.md#log-linear-policies).

    ``c = sy * beta`` (n,) multiplies ``x_i . (theta - theta_ref)`` into the margin
    ``m_i = c_i x_i . (theta - theta_ref)``; ``radius`` is None when unconstrained (an
    infinite radius is stored as None).
    """

    data: PreferenceData | RowsData
    beta: float
    tref: np.ndarray
    radius: float | None

    @property
    def c(self) -> np.ndarray:
        return self.data.signed_labels * self.beta

    @property
    def bounded(self) -> bool:
        """Whether ``||theta|| <= radius`` constrains the solve."""
        return self.radius is not None

    @cached_property
    def rows(self) -> Rows:
        """The data ``X`` as :class:`.passes.Rows`: one pass counter for the whole solve."""
        data = self.data
        if not isinstance(data, RowsData):
            return Rows(data.X)
        rows = Rows(data.X, scale=None if data.x_scale == 1.0 else np.full(data.n, data.x_scale))
        rows.data_absmax[0] = float(data.row_abs_max.max(initial=0.0))  # from validation
        return rows

    @cached_property
    def row_abs_max(self) -> np.ndarray:
        """``max_j |X_ij|`` per row (n,) of the stored X (before ``x_scale``): one pass in row
        chunks (no n x d temporary), or none for :class:`RowsData`, whose validation pass
        kept it."""
        data = self.data
        if isinstance(data, RowsData):
            return data.row_abs_max
        out = Rows(data.X).row_abs_max()
        self.rows.counter[0] += 1
        self.rows.data_absmax[0] = float(out.max(initial=0.0))
        return out

    @property
    def x_abs_max(self) -> float:
        """``max_ij |x_ij|`` of the data (0 for X = 0)."""
        scale = self.data.x_scale if isinstance(self.data, RowsData) else 1.0
        return float(self.row_abs_max.max(initial=0.0)) * scale

    @cached_property
    def informative(self) -> np.ndarray:
        """Mask (n,) of rows that move the loss: positive weight and ``x != 0``."""
        return (self.data.weights > 0) & (self.row_abs_max > 0)

    def informative_rows_source(self):
        """``(take, n)``: the informative rows ``sy_i beta x_i`` as a callable ``take(idx)``
        (sorted indices into them; a dense copy of those rows only) and their number, for the
        separability test (:func:`rdpo_theory.exact.dpo.recession_direction`)."""
        keep = np.flatnonzero(self.informative)

        def take(idx):
            rows = keep[np.asarray(idx, dtype=int)]
            return self.dense_rows(rows) * self.c[rows, None]

        return take, int(keep.size)

    def dense_rows(self, idx) -> np.ndarray:
        """Rows ``x_i`` (``idx``: a mask or sorted indices) as an in-memory float64 array; a
        copy of those rows for :class:`RowsData` (used by the conic fallbacks only)."""
        data = self.data
        if isinstance(data, RowsData):
            idx = np.flatnonzero(idx) if np.asarray(idx).dtype == bool else np.asarray(idx)
            return self.rows.take(idx) * data.x_scale
        return data.X[idx]

    def in_memory(self) -> Problem:
        """The same problem with X as an in-memory PreferenceData (a full copy for
        :class:`RowsData`; paths without a pass formulation, e.g. conic programs)."""
        data = self.data
        if not isinstance(data, RowsData):
            return self
        X = self.dense_rows(np.arange(data.n))
        return Problem(PreferenceData(X, data.y, data.weights), self.beta, self.tref, self.radius)

    def margins(self, theta) -> np.ndarray:
        return self.c * self.rows.matvec(np.asarray(theta, dtype=float) - self.tref)

    def feasible_ref(self) -> np.ndarray:
        """``theta_ref`` projected onto the parameter ball."""
        return project_ball(self.tref, self.radius)


def prepare(X, y, weights, *, beta, theta_ref, radius, in_place: bool = False) -> Problem:
    """Validate the data every exact solver shares into a :class:`Problem`. ``beta`` and
    ``radius`` were checked by the solver's declaration (:data:`SOLVE_CONSTRAINTS`), once per
    call; an infinite radius is stored as None.

    ``in_place=True`` (the fast paths): a memmap, torch tensor or dask ``X`` is validated in
    one pass and kept in its storage (:class:`RowsData`); otherwise ``X`` is copied into an
    in-memory float64 PreferenceData."""
    if isinstance(X, RowsData):
        data = X
    elif in_place and is_row_storage(X):
        data = rows_data(X, y, weights)
    elif y is not None or weights is not None:
        data = as_data(X, y, weights)
    else:
        data = as_data(X)
    r = None if radius is None or not np.isfinite(radius) else float(radius)
    return Problem(data, float(beta), V.as_theta(theta_ref, data.d), r)


@dataclass(frozen=True)
class Scale:
    """Exact change of units that puts a continuous robust problem at unit scale.

    The losses see ``beta x_i . (theta - theta_ref)`` only, so with ``s = 2^k`` the power of
    two nearest ``max_ij |x_ij|`` (division by it is exact) and ``S = beta s``:
    ``x' = x / s``, ``beta' = 1``, ``theta' = S theta``, ``theta_ref' = S theta_ref``,
    ``radius' = S radius``, and a transport radius in units of x becomes ``rho / s``. Every
    loss, margin and robust value is unchanged, so tolerances written for unit-scale
    problems hold from 1e-300 to 1e300. Scales whose images are not finite in float64
    raise :class:`SolverError` saying so.
    """

    s: float
    S: float
    problem: Problem
    radius: float | None = None  # the caller's parameter bound, in the caller's units

    @classmethod
    def of(cls, prob: Problem, what: str, *, in_place: bool = False) -> Scale:
        """``in_place=True`` (the fast paths): the scaled problem reads the same X through
        the pass layer with the factor ``1 / s`` (exact, a power of two) instead of a copy."""
        xmax = prob.x_abs_max
        s = 1.0 if xmax == 0.0 else float(2.0 ** np.round(np.log2(xmax)))
        S = prob.beta * s
        with np.errstate(over="ignore", invalid="ignore"):
            tref = prob.tref * S
        radius = None if prob.radius is None else prob.radius * S
        ok = np.isfinite(S) and S > 0 and np.all(np.isfinite(tref))
        ok = ok and (radius is None or (np.isfinite(radius) and radius > 0))
        if not ok:
            raise SolverError(
                f"{what}: the problem's scale is outside the range float64 can represent "
                f"(beta = {prob.beta:.3g}, max |x| = {xmax:.3g}, ||theta_ref|| = "
                f"{float(np.linalg.norm(prob.tref)):.3g}, radius = {prob.radius}): theta "
                "would be scaled by beta * max|x|, which over- or underflows.",
                status="scale_out_of_range",
                hint="rescale X or beta so that beta * max|x| lies within about 1e-300..1e300.",
            )
        data = prob.data
        if in_place and not isinstance(data, RowsData) and in_place_ok(prob.row_abs_max):
            data = RowsData(data.X, data.y, data.weights, prob.row_abs_max)
        return cls(s, S, Problem(divide_x(data, s), 1.0, tref, radius), prob.radius)

    def theta(self, theta_scaled, what: str = "exact solver") -> np.ndarray:
        """Back to the caller's units: ``theta = theta' / S``, projected on the caller's ball
        against round-off. Raises :class:`SolverError` when ``theta`` leaves float64 range
        (e.g. ``dpo(X * 1e-320)``, whose minimiser has size about 1e320)."""
        with np.errstate(over="ignore"):  # an overflow is refused just below
            out = np.asarray(theta_scaled, dtype=float) / self.S
        if not np.all(np.isfinite(out)):
            raise SolverError(
                f"{what}: the minimiser has size {np.linalg.norm(theta_scaled):.3g} / "
                f"{self.S:.3g}, outside float64 range.",
                status="scale_out_of_range",
                hint="rescale beta or X (the problem's scale is outside floating-point range).",
            )
        return project_ball(out, self.radius)
