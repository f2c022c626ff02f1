"""Passes over the rows of a feature matrix, written once for every array backend.

The fast exact paths (:mod:`.fast`) touch the n x d data only through three reductions over
rows, each one *pass* over ``X`` (docs/theory.md#exact-programs):

* ``matvec(v)``  = ``diag(s) X v``            (n,)     margins along a direction;
* ``rmatvec(w)`` = ``X^T diag(s) w``          (d,) or (d, k) for w of shape (n,) or (n, k);
* ``gram(w)``    = ``X^T diag(s^2 w) X``      (d, d)   a weighted Gram matrix (Hessians);

with an optional row scaling ``s`` (n,) (e.g. ``c_i = sy_i beta``), so ``A = diag(c) X`` is
never materialised. :class:`Rows` counts the passes (``rows.passes``), which is how the
benchmarks report cost in units of one pass (the memory-bandwidth floor of a first-order
method is one pass per gradient).

Backends. ``X`` may be a numpy array, a ``numpy.memmap`` (read in row chunks of at most
``chunk_bytes``, so peak memory is bounded by the chunk, not by n), a torch tensor (CPU or
CUDA: the products run on its device and only length-n or d-sized results come back) or a
dask array (the products are built lazily and computed by dask, on a ``distributed`` cluster
when a client is active). Storage may be float32; every product accumulates in float64 (each
chunk is promoted before the product). Vectors of length n (margins, weights) always live in
memory as float64 numpy arrays: they are d times smaller than ``X``.

The reductions are written once (:meth:`Rows._reduce` over row chunks with the ``@``
operator); a backend only says how to make a chunk float64 and how to move a vector to and
from it (:class:`_Backend`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

#: Default chunk size for out-of-core (memmap) and float32 inputs: 64 MiB of float64.
CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class _Backend:
    """How to compute on one array library: promote a chunk to float64, move vectors in and
    results out. Everything else is the ``@`` operator shared by numpy, torch and dask."""

    name: str
    f64: object  # chunk -> float64 chunk (same library)
    put: object  # numpy vector -> library vector (same device / chunking as ``like``)
    get: object  # library result -> numpy float64

    @staticmethod
    def of(X) -> _Backend:
        mod = type(X).__module__
        if mod.startswith("torch"):
            import torch

            def put(v, like):
                return torch.as_tensor(v, dtype=torch.float64, device=like.device)

            return _Backend(
                "torch",
                lambda b: b.to(torch.float64),
                put,
                lambda r: r.detach().cpu().numpy().astype(np.float64, copy=False),
            )
        if mod.startswith("dask"):
            import dask.array as da

            def put(v, like):
                v = np.asarray(v, dtype=np.float64)
                if v.shape[:1] == like.shape[:1] and v.ndim >= 1 and like.ndim == 2:
                    chunks = (like.chunks[0],) + tuple((s,) for s in v.shape[1:])
                    return da.from_array(v, chunks=chunks)
                return v

            def get(r):
                return np.asarray(r.compute() if hasattr(r, "compute") else r, dtype=np.float64)

            return _Backend("dask", lambda b: b.astype(np.float64), put, get)

        def f64(b):
            return np.asarray(b, dtype=np.float64)

        return _Backend(
            "numpy", f64, lambda v, like: np.asarray(v, dtype=np.float64), lambda r: np.asarray(r)
        )


class Rows:
    """Row reductions over ``X`` (n, d) with an optional row scaling, counted in passes.

    Parameters
    ----------
    X : numpy array, numpy.memmap, torch tensor, dask array (n, d), or a Rows
        A Rows is re-wrapped: the new object shares its data and its pass counter.
    scale : ndarray (n,), optional
        Row scaling ``s``: the object stands for ``diag(s) X``.
    chunk_bytes : int, optional
        Row chunks of at most this many bytes (as float64) for memmap and non-float64 numpy
        storage (default: the wrapped Rows' value, else ``CHUNK_BYTES``); in-memory float64
        numpy is one chunk for products with vectors.

    Attributes
    ----------
    passes : float
        Passes over ``X`` made so far, shared by every view of the same data; a pass over a
        subset of m rows (:meth:`subset`) counts ``m / n``.
    """

    def __init__(self, X, scale=None, *, chunk_bytes: int | None = None):
        self.counter = [0.0]
        self.weight = 1.0  # what one pass over these rows adds to the counter
        self.data_absmax = [None]  # max |X_ij| of the unscaled data, shared by every view
        self.data_rowsq = [None]  # ||x_i||^2 of the unscaled data, shared by every view
        if isinstance(X, Rows):  # a view: share the data and its pass counter
            self.counter, self.weight = X.counter, X.weight
            self.data_absmax, self.data_rowsq = X.data_absmax, X.data_rowsq
            chunk_bytes = X.chunk_bytes if chunk_bytes is None else chunk_bytes
            if X.scale is not None:
                scale = X.scale if scale is None else X.scale * np.asarray(scale, dtype=float)
            X = X.X
        self.X = X
        self.chunk_bytes = int(CHUNK_BYTES if chunk_bytes is None else chunk_bytes)
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float64)
        self.backend = _Backend.of(X)
        if len(X.shape) != 2:
            raise ValueError(f"X must be 2-D (n, d); got shape {tuple(X.shape)}")
        self.n, self.d = int(X.shape[0]), int(X.shape[1])
        self._absmax = None

    @property
    def passes(self) -> float:
        return self.counter[0]

    def subset(self, idx) -> Rows:
        """Rows ``idx`` (sorted) copied into memory as float64 (a subsample; its passes count
        ``len(idx) / n`` on this object's counter)."""
        idx = np.asarray(idx)
        sub = Rows(self.take(idx), None if self.scale is None else self.scale[idx])
        sub.counter, sub.weight = self.counter, self.weight * len(idx) / max(self.n, 1)
        return sub

    def scaled(self, s) -> Rows:
        """The view ``diag(s) diag(self.scale) X`` sharing data and pass counter."""
        return Rows(self, scale=s, chunk_bytes=self.chunk_bytes)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.d)

    def _chunks(self, gram: bool = False):
        """Row ranges ``(lo, hi)``: one range for in-memory float64 numpy products with
        vectors, dask (its library chunks) and float64 torch; else at most ``chunk_bytes``
        (as float64), so a float32 chunk is promoted without an n x d float64 copy."""
        X = self.X
        name = self.backend.name
        if name == "torch":  # float64 tensors in one product; others promoted chunk by chunk
            import torch

            whole = X.dtype == torch.float64
        else:
            whole = name == "dask" or (
                not gram and not isinstance(X, np.memmap) and X.dtype == np.float64
            )
        if whole or self.n == 0:
            step = max(self.n, 1)
        else:
            step = max(1, self.chunk_bytes // (8 * max(self.d, 1)))
            if gram:
                step = min(step, 1 << 15)
        return [(lo, min(lo + step, self.n)) for lo in range(0, max(self.n, 1), step)]

    def _reduce(self, fn, gram: bool = False):
        """Sum of ``fn(Xb, lo, hi)`` over row chunks (one pass); float64 numpy result."""
        self.counter[0] += self.weight
        be = self.backend
        total = None
        for lo, hi in self._chunks(gram):
            part = be.get(fn(be.f64(self.X[lo:hi]), lo, hi))
            total = part if total is None else total + part
        return total

    def _s(self, lo, hi):
        return None if self.scale is None else self.scale[lo:hi]

    # ------------------------------------------------------------------ the three passes
    def matvec(self, v) -> np.ndarray:
        """``diag(s) X v`` (n,) for v (d,), float64."""
        v = np.asarray(v, dtype=np.float64)
        out = np.empty(self.n)
        be = self.backend
        self.counter[0] += self.weight
        for lo, hi in self._chunks():
            Xb = be.f64(self.X[lo:hi])
            out[lo:hi] = be.get(Xb @ be.put(v, Xb))
        if self.scale is not None:
            out *= self.scale
        return out

    def rmatvec(self, w) -> np.ndarray:
        """``X^T diag(s) w``: (d,) for w (n,), (d, k) for w (n, k)."""
        w = np.asarray(w, dtype=np.float64)
        if self.scale is not None:
            w = w * (self.scale if w.ndim == 1 else self.scale[:, None])
        be = self.backend
        return self._reduce(lambda Xb, lo, hi: Xb.T @ be.put(w[lo:hi], Xb))

    def gram(self, w) -> np.ndarray:
        """``X^T diag(s^2 w) X`` (d, d), symmetrised."""
        w = np.asarray(w, dtype=np.float64)
        if self.scale is not None:
            w = w * self.scale**2
        be = self.backend

        def part(Xb, lo, hi):
            return Xb.T @ (Xb * be.put(w[lo:hi, None], Xb))

        G = self._reduce(part, gram=True)
        return 0.5 * (G + G.T)

    def abs_max(self) -> float:
        """``max |s_i X_ij|`` (cached; one pass the first time). A view of data whose own
        maximum is known (shared by every view) returns ``max |s_i| max |X_ij|`` without a
        pass: an upper bound, equal when ``|s|`` is constant (``c = sy beta``)."""
        if self._absmax is None and self.data_absmax[0] is not None:
            top = self.data_absmax[0]
            self._absmax = (
                top * float(np.abs(self.scale).max(initial=0.0))
                if (self.scale is not None)
                else top
            )
        if self._absmax is None:
            be = self.backend
            s = np.abs(self.scale) if self.scale is not None else None

            def part(Xb, lo, hi):
                a = abs(Xb)
                if s is not None:
                    a = a * be.put(s[lo:hi, None], Xb)
                return a.max() if hi > lo else be.put(np.zeros(()), Xb)

            self.counter[0] += self.weight
            vals = [
                float(be.get(part(be.f64(self.X[lo:hi]), lo, hi)))
                for lo, hi in self._chunks(gram=be.name == "numpy")  # bounded temporaries
            ]
            self._absmax = max(vals, default=0.0)
            if s is None:
                self.data_absmax[0] = self._absmax
        return self._absmax

    def row_abs_max(self) -> np.ndarray:
        """``max_j |s_i X_ij|`` per row (n,) (one pass). NaN or inf entries of ``X`` show as a
        non-finite value in their row, so one pass validates, finds the informative rows
        (value > 0) and the largest entry."""
        out = np.empty(self.n)
        be = self.backend
        self.counter[0] += self.weight
        for lo, hi in self._chunks(gram=be.name == "numpy"):  # bounded chunks for numpy
            a = abs(self.X[lo:hi])  # no float64 copy needed for a maximum
            if be.name == "torch":
                r = a.amax(1) if hi > lo else a.sum(1)
            else:
                r = a.max(axis=1) if hi > lo else a.sum(axis=1)
            out[lo:hi] = be.get(be.f64(r))
        if self.scale is not None:
            out *= np.abs(self.scale)
        return out

    def row_norm_max(self) -> float:
        """``max_i ||s_i x_i||_2`` (one pass)."""
        return float(np.sqrt(np.max(self.gram_diag_rows(), initial=0.0)))

    def gram_diag_rows(self) -> np.ndarray:
        """Squared row norms ``s_i^2 ||x_i||^2`` (n,) (one pass the first time for the data,
        shared by every view)."""
        if self.data_rowsq[0] is not None:
            out = self.data_rowsq[0].copy()
            return out * self.scale**2 if self.scale is not None else out
        out = np.empty(self.n)
        be = self.backend
        self.counter[0] += self.weight
        for lo, hi in self._chunks(gram=be.name == "numpy"):  # bounded temporaries
            Xb = be.f64(self.X[lo:hi])
            out[lo:hi] = be.get((Xb * Xb).sum(1))
        self.data_rowsq[0] = out.copy()
        if self.scale is not None:
            out *= self.scale**2
        return out

    def row_quadratic(self, M) -> np.ndarray:
        """``s_i^2 x_i^T M x_i`` per row (n,) for a symmetric M (d, d) (one pass, in row
        chunks: no n x d temporary beyond a chunk)."""
        M = np.asarray(M, dtype=np.float64)
        out = np.empty(self.n)
        be = self.backend
        self.counter[0] += self.weight
        for lo, hi in self._chunks(gram=True):
            Xb = be.f64(self.X[lo:hi])
            Mb = be.put(M, Xb) if be.name != "dask" else M
            out[lo:hi] = be.get(((Xb @ Mb) * Xb).sum(1))
        if self.scale is not None:
            out *= self.scale**2
        return out

    def take(self, idx) -> np.ndarray:
        """Rows ``idx`` (sorted indices) as an in-memory float64 numpy array, scaling not
        applied (a subsample: not counted as a pass)."""
        idx = np.asarray(idx)
        be = self.backend
        if be.name == "torch":
            import torch

            sub = self.X[torch.as_tensor(idx, device=self.X.device)]
        else:
            sub = self.X[idx]
        return np.ascontiguousarray(be.get(be.f64(sub)))


def as_rows(X, scale=None) -> Rows:
    """``X`` wrapped as :class:`Rows` (a Rows is returned as a scaled view of itself)."""
    if isinstance(X, Rows) and scale is None:
        return X
    return Rows(X, scale=scale)


#: Environment variable: BLAS threads of one exact solve (an integer, or "all" for no limit).
BLAS_THREADS_ENV = "RDPO_BLAS_THREADS"


def blas_thread_limit() -> int | None:
    """BLAS threads for one exact solve: ``$RDPO_BLAS_THREADS`` ("all": no limit), default 1.

    One thread is the default because the fast paths are bandwidth-bound and are usually run
    many at a time (sweeps through joblib); on a loaded machine a multi-threaded BLAS spins
    against the other processes and a d = 32 Gram product can run 10 to 20 times slower."""
    import os

    raw = os.environ.get(BLAS_THREADS_ENV, "1").strip().lower()
    if raw in ("all", "none", "0", ""):
        return None
    try:
        return max(1, int(raw))
    except ValueError:
        return 1


@contextmanager
def blas_threads(limit: int | None):
    """Pin BLAS threads to ``limit`` inside the block (no-op when None or without
    threadpoolctl): one solve then does not fight other processes for cores."""
    if limit is None:
        yield
        return
    ctl = _controller()
    if ctl is None:  # pragma: no cover - threadpoolctl is a dependency
        yield
        return
    with ctl.limit(limits=int(limit), user_api="blas"):
        yield


_CONTROLLER: list = []


def _controller():
    """One cached ``threadpoolctl.ThreadpoolController`` (building it scans the loaded
    libraries; a cached one makes pinning cost microseconds per solve), or None."""
    if not _CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController

            _CONTROLLER.append(ThreadpoolController())
        except ImportError:  # pragma: no cover
            _CONTROLLER.append(None)
    return _CONTROLLER[0]


def pinned_blas(fn):
    """Decorator: run ``fn`` with BLAS threads pinned to :func:`blas_thread_limit`."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with blas_threads(blas_thread_limit()):
            return fn(*args, **kwargs)

    return wrapper
