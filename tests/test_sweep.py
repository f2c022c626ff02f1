import numpy as np
import pytest

from rdpo_theory import InputError
from rdpo_theory.rng import make_rng
from rdpo_theory.studies.sweep import RunCache, Task, fingerprint, grid_tasks, run_sweep, task_key


def draw(params, seed, shared):
    """A module-level (picklable) sweep function: a few draws from the task's stream."""
    rng = make_rng(seed)
    return [{"k": k, "u": float(rng.random()) * shared} for k in range(params["m"])]


CALLS = []


def counting(params, seed, shared):
    CALLS.append(params["n"])
    return {"v": float(make_rng(seed).standard_normal())}


def tasks(ns=(10, 20), seeds=(0, 1, 2)):
    return grid_tasks(
        {"n": list(ns), "seed": list(seeds), "m": [2]}, seed_keys=lambda p: (5, p["n"], p["seed"])
    )


def test_rows_are_tidy_and_deterministic_across_backends():
    a = run_sweep(draw, tasks(), namespace="t", shared=1.0, progress=False)
    b = run_sweep(
        draw, tasks(), namespace="t", shared=1.0, jobs=2, backend="threading", progress=False
    )
    assert len(a.rows) == 12 and a.rows == b.rows
    assert set(a.rows[0]) == {"n", "seed", "m", "k", "u"}
    # the stream depends only on the seed keys: one task alone reproduces its rows
    one = run_sweep(
        draw,
        [Task({"n": 20, "seed": 1, "m": 2}, (5, 20, 1))],
        namespace="t",
        shared=1.0,
        progress=False,
    )
    assert one.rows == [r for r in a.rows if r["n"] == 20 and r["seed"] == 1]
    # and equals a direct draw from stream_seed(5, 20, 1)
    rng = np.random.default_rng(np.random.SeedSequence([5, 20, 1]))
    assert one.rows[0]["u"] == rng.random()


def test_loky_backend_matches_in_process():
    a = run_sweep(draw, tasks(), namespace="t", shared=2.0, progress=False)
    b = run_sweep(draw, tasks(), namespace="t", shared=2.0, jobs=2, progress=False)
    assert a.rows == b.rows


def test_cache_is_reused_and_extended(tmp_path):
    CALLS.clear()
    r1 = run_sweep(counting, tasks(ns=(10,)), namespace="c", cache_dir=tmp_path, progress=False)
    assert len(CALLS) == 3 and r1.n_computed == 3 and r1.n_cached == 0
    r2 = run_sweep(counting, tasks(ns=(10,)), namespace="c", cache_dir=tmp_path, progress=False)
    assert len(CALLS) == 3 and r2.n_cached == 3 and r2.rows == r1.rows
    # extending the grid computes only the new tasks
    r3 = run_sweep(counting, tasks(ns=(10, 20)), namespace="c", cache_dir=tmp_path, progress=False)
    assert len(CALLS) == 6 and r3.n_cached == 3 and r3.n_computed == 3
    assert r3.rows[:3] == r1.rows
    # another namespace does not see these runs
    run_sweep(counting, tasks(ns=(10,)), namespace="other", cache_dir=tmp_path, progress=False)
    assert len(CALLS) == 9
    assert len(RunCache(tmp_path, "c")) == 6


def boom_after(params, seed, shared):
    if params["n"] == 20:
        raise RuntimeError("interrupted")
    CALLS.append(params["n"])
    return {"v": 1.0}


def test_interrupted_sweep_resumes(tmp_path):
    CALLS.clear()
    with pytest.raises(RuntimeError):
        run_sweep(boom_after, tasks(), namespace="i", cache_dir=tmp_path, progress=False)
    assert CALLS == [10, 10, 10]
    res = run_sweep(counting, tasks(), namespace="i", cache_dir=tmp_path, progress=False)
    assert res.n_cached == 3 and res.n_computed == 3


def test_torn_cache_file_is_recomputed(tmp_path):
    t = tasks(ns=(10,), seeds=(0,))
    run_sweep(counting, t, namespace="x", cache_dir=tmp_path, progress=False)
    key = task_key(t[0], "x")
    RunCache(tmp_path, "x").path(key).write_text("{not json")
    res = run_sweep(counting, t, namespace="x", cache_dir=tmp_path, progress=False)
    assert res.n_computed == 1


def test_fingerprint_is_bit_exact():
    a = np.array([1.0, 2.0])
    assert fingerprint(a, {"x": 1}) == fingerprint(a.copy(), {"x": 1})
    assert fingerprint(a) != fingerprint(a + 1e-16 * 0 + np.array([0.0, 4e-16]))


def test_bad_arguments():
    with pytest.raises(InputError, match="tasks is empty"):
        run_sweep(draw, [], namespace="t")
    with pytest.raises(InputError, match="grid"):
        grid_tasks({"n": []}, seed_keys=lambda p: (0,))
    with pytest.raises(InputError, match="params"):
        Task({"n": [1, 2]}, (0,))
    with pytest.raises(InputError, match="seed"):
        Task({"n": 1}, (-1,))
    with pytest.raises(InputError, match="duplicates"):
        run_sweep(draw, tasks() + tasks()[:1], namespace="t")
    with pytest.raises(InputError, match="jobs"):
        run_sweep(draw, tasks(), namespace="t", jobs=0)
    with pytest.raises(InputError, match="namespace"):
        run_sweep(draw, tasks(), namespace="")
