"""The pass layer (exact/passes.py): one implementation of the row reductions over numpy,
float32, memmap, torch and dask storage, checked against plain numpy algebra and against the
in-memory fast solve."""

import tracemalloc

import numpy as np
import pytest
from dask_cluster import local_cluster

from rdpo_theory.exact import fast
from rdpo_theory.exact.passes import Rows, blas_thread_limit, blas_threads
from rdpo_theory.rng import make_rng


def _data(n=3000, d=6, seed=0):
    rng = make_rng(seed)
    X = rng.standard_normal((n, d)) / np.sqrt(d)
    ts = np.linspace(-1.0, 2.0, d)
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-X @ ts))
    c = 2.0 * y - 1.0
    return X, c, np.full(n, 1.0 / n)


def _reference(X, s, v, w):
    return (
        s * (X @ v),
        X.T @ (s * w),
        X.T @ (X * (s**2 * w)[:, None]),
        float(np.abs(s[:, None] * X).max()),
    )


def _passes(R, v, w):
    return R.matvec(v), R.rmatvec(w), R.gram(w), R.abs_max()


def _solve_kl(X, c, p, rho=0.05):
    """Damped Newton on the KL dual from a fixed start, every pass through Rows(X)."""
    obj = fast.KLDual(X, c, p, rho, np.zeros(X.shape[1]))
    th, ex, _, info = fast.damped_newton(obj, np.zeros(X.shape[1]), [1.0], radius=None)
    assert info["converged"]
    return np.concatenate([th, ex]), obj.rows.passes


def _solve_w1(X, c, p, rho=0.02):
    obj = fast.W1Penalty(X, c, p, rho, 1.0, np.zeros(X.shape[1]))
    th0 = np.full(X.shape[1], 0.1)
    th, _, _, info = fast.damped_newton(obj, th0, [], radius=None)
    assert info["converged"]
    return th


def test_numpy_chunks_and_counts_match_plain_algebra():
    X, c, p = _data()
    rng = make_rng(1)
    v, w = rng.standard_normal(X.shape[1]), rng.random(X.shape[0])
    ref = _reference(X, c, v, w)
    for R in (Rows(X, c), Rows(X, c, chunk_bytes=8 * X.shape[1] * 100)):  # 1 and 30 chunks
        out = _passes(R, v, w)
        for a, b in zip(out, ref):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
        assert R.passes == 4
        R.abs_max()
        assert R.passes == 4  # cached
    # views share the counter; a subset counts its fraction of a pass
    R = Rows(X)
    V = R.scaled(c)
    V.rmatvec(w)
    S = R.subset(np.arange(0, X.shape[0], 3))
    S.matvec(v)
    assert R.passes == pytest.approx(1 + 1 / 3)
    np.testing.assert_allclose(V.matvec(v), c * (X @ v), rtol=1e-14)


def test_float32_storage_accumulates_in_float64():
    X, c, _ = _data(n=20_000)
    X32 = X.astype(np.float32)
    w = np.full(X.shape[0], 1.0)
    R = Rows(X32, c, chunk_bytes=8 * X.shape[1] * 1000)
    exact = X32.astype(np.float64).T @ (c * w)  # the stored numbers, summed in float64
    np.testing.assert_allclose(R.rmatvec(w), exact, rtol=1e-12, atol=1e-12)


def test_row_passes_on_every_backend():
    # row_abs_max, row_quadratic, gram_diag_rows (the certificate and validation passes) against
    # numpy, on float64, float32 chunks and torch float32 chunks; cached maxima of views
    torch = pytest.importorskip("torch")
    X, c, _ = _data(n=5000)
    X32 = X.astype(np.float32)
    M = make_rng(4).standard_normal((X.shape[1], X.shape[1]))
    M = M + M.T
    small = 8 * X.shape[1] * 300
    for store, Xs in (
        ("f64", Rows(X, c, chunk_bytes=small)),
        ("f32", Rows(X32, c, chunk_bytes=small)),
        ("torch32", Rows(torch.as_tensor(X32), c, chunk_bytes=small)),
    ):
        Xr = X if store == "f64" else X32.astype(np.float64)
        A = c[:, None] * Xr
        np.testing.assert_allclose(Xs.row_abs_max(), np.abs(A).max(1), rtol=1e-15)
        np.testing.assert_allclose(Xs.row_quadratic(M), np.einsum("ij,jk,ik->i", A, M, A), 0, 1e-13)
        np.testing.assert_allclose(Xs.gram_diag_rows(), (A * A).sum(1), rtol=1e-13)
        assert Xs.passes == 3
        Xs.gram_diag_rows()  # cached for the data: no pass
        assert Xs.passes == 3
    R = Rows(X)
    top = R.abs_max()
    V = R.scaled(-2.0 * c)  # a view knows its maximum from the data's: no pass
    assert V.abs_max() == pytest.approx(2.0 * top, rel=1e-15) and R.passes == 1
    bad = X.copy()
    bad[7, 1] = np.nan
    assert np.flatnonzero(~np.isfinite(Rows(bad).row_abs_max())).tolist() == [7]


def test_torch_cpu_tensor_equals_numpy():
    torch = pytest.importorskip("torch")
    X, c, p = _data()
    rng = make_rng(2)
    v, w = rng.standard_normal(X.shape[1]), rng.random(X.shape[0])
    for a, b in zip(_passes(Rows(torch.as_tensor(X), c), v, w), _reference(X, c, v, w)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    z_np, _ = _solve_kl(X, c, p)
    z_t, _ = _solve_kl(torch.as_tensor(X), c, p)
    np.testing.assert_allclose(z_t, z_np, rtol=0, atol=1e-10)
    np.testing.assert_allclose(_solve_w1(torch.as_tensor(X), c, p), _solve_w1(X, c, p), atol=1e-10)


def test_dask_on_a_local_cluster_equals_in_memory():
    X, c, p = _data(n=4000)
    z_np, passes_np = _solve_kl(X, c, p)
    th_np = _solve_w1(X, c, p)
    with local_cluster() as (client, da):
        Xd = da.from_array(X, chunks=(1000, X.shape[1]))
        Xd = client.persist(Xd)
        z_d, passes_d = _solve_kl(Xd, c, p)
        th_d = _solve_w1(Xd, c, p)
        assert client.run(lambda: 1)  # the work ran on the cluster's workers
    np.testing.assert_allclose(z_d, z_np, rtol=0, atol=1e-10)
    np.testing.assert_allclose(th_d, th_np, rtol=0, atol=1e-10)
    assert passes_d == passes_np


def _memmap(path, X):
    mm = np.memmap(path, dtype=np.float64, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    del mm
    return np.memmap(path, dtype=np.float64, mode="r", shape=X.shape)


def test_memmap_solve_equals_in_memory_and_passes_hold_one_chunk(tmp_path):
    # the solve: a memmap in 30 row chunks gives the in-memory answer
    X, c, p = _data()
    Xm = _memmap(tmp_path / "small.f64", X)
    z_ref, passes_ref = _solve_kl(X, c, p)
    z, passes = _solve_kl(Rows(Xm, chunk_bytes=8 * X.shape[1] * 100), c, p)
    np.testing.assert_allclose(z, z_ref, rtol=0, atol=1e-10)
    assert passes == passes_ref
    # the passes of an iteration (margins, gradient, Hessian, noise bound) on a 41 MB memmap
    # hold about one 1 MiB chunk beyond the length-n vectors and the d x d result
    n, d = 40_000, 128
    X, c, p = _data(n=n, d=d, seed=3)
    Xm = _memmap(tmp_path / "big.f64", X)
    del X
    obj = fast.KLDual(Rows(Xm, chunk_bytes=1 << 20), c, p, 0.05, np.zeros(d))
    tracemalloc.start()
    st = obj.state(np.full(d, 0.1), [0.5])
    obj.derivs(st)
    obj.grad_noise(st)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    bound = 16 * n * 8 + 4 * (d + 1) ** 2 * 8 + 4 * (1 << 20)
    assert peak <= bound, (peak, bound)
    assert peak < Xm.nbytes / 4


def test_blas_threads_pinned(monkeypatch):
    from threadpoolctl import threadpool_info

    monkeypatch.setenv("RDPO_BLAS_THREADS", "1")
    assert blas_thread_limit() == 1
    with blas_threads(blas_thread_limit()):
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        assert all(i["num_threads"] == 1 for i in blas)
    monkeypatch.setenv("RDPO_BLAS_THREADS", "all")
    assert blas_thread_limit() is None
