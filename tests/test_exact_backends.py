"""The public fast solvers on inputs left in their storage: ``kldpo`` / ``wdpo`` with
``solver="fast"`` take a numpy.memmap, a torch tensor or a dask array (on a
``distributed.LocalCluster``) directly, validate it in one pass, and give the in-memory numpy
answer (theta, value, multiplier, regime, certified status) to 1e-10."""

import tracemalloc

import numpy as np
import pytest
from dask_cluster import local_cluster

from rdpo_theory.errors import InputError
from rdpo_theory.exact import kldpo, passes, wdpo
from rdpo_theory.rng import make_rng

CASES = [
    ("kl", dict(rho=0.05), "interior"),
    ("w1", dict(rho=0.01), "penalty"),
    ("kl0", dict(rho=0.0), "dpo"),
]


def _data(n=6000, d=6, seed=0, signal=4.0):
    rng = make_rng(seed)
    X = rng.standard_normal((n, d)) / np.sqrt(d)
    ts = np.linspace(-1.0, 2.0, d)
    ts *= signal / np.linalg.norm(ts)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-X @ ts))).astype(float)
    w = rng.random(n)
    return X, y, w / w.sum()


def _solve(which, X, y, w, kw):
    fn = kldpo if which.startswith("kl") else wdpo
    return fn(X, y, weights=w, beta=1.0, solver="fast", **kw)


def _memmap(path, X, dtype=np.float64):
    mm = np.memmap(path, dtype=dtype, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    del mm
    return np.memmap(path, dtype=dtype, mode="r", shape=X.shape)


def _same(res, ref, regime):
    assert res.status == ref.status == "optimal"
    assert res.regime == ref.regime == regime
    np.testing.assert_allclose(res.theta, ref.theta, rtol=0, atol=1e-10)
    assert abs(res.value - ref.value) <= 1e-10
    if np.isfinite(ref.dual):
        assert abs(res.dual - ref.dual) <= 1e-10
    assert res.optimality_gap <= 1e-6 * (1 + abs(res.value))


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(scope="module")
def refs(data):
    X, y, w = data
    return {which: _solve(which, X, y, w, kw) for which, kw, _ in CASES}


@pytest.mark.parametrize("which,kw,regime", CASES)
def test_memmap_through_public_function(tmp_path, data, refs, which, kw, regime):
    X, y, w = data
    res = _solve(which, _memmap(tmp_path / "X.f64", X), y, w, kw)
    _same(res, refs[which], regime)


@pytest.mark.parametrize("which,kw,regime", CASES)
def test_torch_through_public_function(data, refs, which, kw, regime):
    torch = pytest.importorskip("torch")
    X, y, w = data
    res = _solve(which, torch.tensor(X), torch.tensor(y), torch.tensor(w), kw)
    _same(res, refs[which], regime)


def test_dask_on_local_cluster_through_public_function(data, refs):
    X, y, w = data
    with local_cluster() as (client, da):
        Xd = client.persist(da.from_array(X, chunks=(1500, X.shape[1])))
        out = {which: _solve(which, Xd, y, w, kw) for which, kw, _ in CASES}
        assert client.run(lambda: 1)
    for which, _, regime in CASES:
        _same(out[which], refs[which], regime)


def test_float32_memmap_equals_float32_values_in_memory(tmp_path, data):
    # float32 storage, float64 accumulation: the answer of the float64 copy of the same values
    X, y, w = data
    X32 = X.astype(np.float32)
    ref = _solve("kl", X32.astype(np.float64), y, w, dict(rho=0.05))
    res = _solve("kl", _memmap(tmp_path / "X.f32", X32, np.float32), y, w, dict(rho=0.05))
    _same(res, ref, "interior")


def test_memmap_solve_peak_memory_is_bounded_by_the_chunk(tmp_path, monkeypatch):
    # a 41 MB memmap read in 1 MiB chunks: the whole certified solve (validation, collapse test,
    # Newton, certificates) holds length-n vectors and a few chunks, never a copy of X
    monkeypatch.setattr(passes, "CHUNK_BYTES", 1 << 20)
    n, d = 40_000, 128
    X, y, w = _data(n=n, d=d, seed=3, signal=1.0)
    Xm = _memmap(tmp_path / "big.f64", X)
    del X
    for fn, kw in ((kldpo, dict(rho=0.05)), (wdpo, dict(rho=0.005))):
        tracemalloc.start()
        res = fn(Xm, y, weights=w, beta=1.0, solver="fast", **kw)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert res.status == "optimal"
        bound = 40 * n * 8 + 8 * (1 << 20) + 8 * (d + 1) ** 2 * 8
        assert peak <= bound, (fn.__name__, peak, bound)
        assert peak < Xm.nbytes / 4


def test_bad_storage_is_refused_naming_the_row(tmp_path, data):
    torch = pytest.importorskip("torch")
    X, y, w = data
    Xb = X.copy()
    Xb[17, 2] = np.nan
    with pytest.raises(InputError, match="row 17"):
        kldpo(_memmap(tmp_path / "bad.f64", Xb), y, rho=0.1, beta=1.0, solver="fast")
    Xb[17, 2] = np.inf
    with pytest.raises(InputError, match="row 17"):
        wdpo(torch.tensor(Xb), y, rho=0.1, beta=1.0, solver="fast")
    with pytest.raises(InputError, match="shape"):
        kldpo(torch.zeros(5), np.zeros(5), rho=0.1, beta=1.0, solver="fast")
    with pytest.raises(InputError, match="real"):
        kldpo(torch.zeros((5, 2), dtype=torch.complex64), y[:5], rho=0.1, beta=1.0, solver="fast")
    with pytest.raises(InputError, match="length"):
        kldpo(torch.tensor(X), y[:-1], rho=0.1, beta=1.0, solver="fast")
