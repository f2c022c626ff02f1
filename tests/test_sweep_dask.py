"""The sweep runner on a real dask cluster (joblib's "dask" backend), against joblib's result.

The cluster is a ``distributed.LocalCluster`` started inside the test: one in-process worker
(threads) and one worker process, so tasks are really shipped (pickled) to a dask worker.
"""

import pytest

pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

from rdpo_theory.rng import make_rng  # noqa: E402
from rdpo_theory.studies.sweep import grid_tasks, run_sweep  # noqa: E402


def draw(params, seed, shared):
    """A module-level (picklable) sweep function: a few draws from the task's stream."""
    rng = make_rng(seed)
    return [{"k": k, "u": float(rng.random()) * shared} for k in range(params["m"])]


def tasks():
    return grid_tasks(
        {"n": [10, 20], "seed": [0, 1, 2], "m": [2]},
        seed_keys=lambda p: (5, p["n"], p["seed"]),
    )


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "process"])
def test_dask_backend_matches_joblib(processes, tmp_path):
    ref = run_sweep(draw, tasks(), namespace="d", shared=3.0, jobs=2, progress=False)
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=processes,
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster),
    ):
        got = run_sweep(
            draw,
            tasks(),
            namespace="d",
            shared=3.0,
            jobs=2,
            backend="dask",
            cache_dir=tmp_path,
            progress=False,
        )
        assert got.rows == ref.rows and got.n_computed == 6
        # the calling process cached every task: a rerun computes nothing
        again = run_sweep(
            draw,
            tasks(),
            namespace="d",
            shared=3.0,
            jobs=2,
            backend="dask",
            cache_dir=tmp_path,
            progress=False,
        )
    assert again.rows == ref.rows and again.n_cached == 6 and again.n_computed == 0


def test_rates_command_client_uses_scheduler_address(monkeypatch):
    import dask

    from rdpo_theory.commands.rates import cluster_client

    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        with dask.config.set({"scheduler-address": cluster.scheduler_address}):
            with cluster_client("dask") as client:
                assert client.scheduler.address == cluster.scheduler_address
                got = run_sweep(draw, tasks(), namespace="d", shared=1.0, jobs=2, backend="dask")
    ref = run_sweep(draw, tasks(), namespace="d", shared=1.0, progress=False)
    assert got.rows == ref.rows
    with cluster_client("loky") as nothing:
        assert nothing is None
