"""The dask ``distributed`` package for the pass-layer tests, even when a test helper module
named ``distributed`` (tests/distributed.py, for the torch DDP tests) shadows it on sys.path."""

import importlib.machinery
import importlib.util
import sys
from contextlib import contextmanager

import pytest


@contextmanager
def local_cluster(n_workers: int = 2):
    """``(client, da)``: a ``distributed.Client`` on an in-process ``LocalCluster`` and
    ``dask.array``; the shadowing module (if any) is restored afterwards."""
    pytest.importorskip("dask.array")
    previous = sys.modules.get("distributed")
    if previous is None or not hasattr(previous, "LocalCluster"):
        paths = [p for p in sys.path if not p.rstrip("/").endswith("tests")]
        spec = importlib.machinery.PathFinder.find_spec("distributed", paths)
        if spec is None:
            pytest.skip("dask distributed is not installed")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["distributed"] = mod
        spec.loader.exec_module(mod)
    import dask.array as da

    distributed = sys.modules["distributed"]
    try:
        with (
            distributed.LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=False, dashboard_address=None
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            yield client, da
    finally:
        if previous is not None:
            sys.modules["distributed"] = previous
