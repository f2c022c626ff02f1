"""An in-process dask ``distributed.LocalCluster`` for the pass-layer and backend tests."""

from contextlib import contextmanager

import pytest


@contextmanager
def local_cluster(n_workers: int = 2):
    """``(client, da)``: a ``distributed.Client`` on an in-process ``LocalCluster`` of
    ``n_workers`` single-threaded workers, and ``dask.array``; skips without dask."""
    da = pytest.importorskip("dask.array")
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client, da
