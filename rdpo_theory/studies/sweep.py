"""A generic parallel, deterministic, resumable sweep runner.

Every study that repeats one computation over a grid (sample sizes x seeds, radii x shifts,
...) uses this module, so that parallelism, seeding, caching and progress behave the same
everywhere.

API
---
``Task(params, seed)``
    One run. ``params`` is a flat mapping of JSON scalars (str, int, float, bool, None) that
    fully describes the run together with the sweep's ``namespace``; ``seed`` is a tuple of
    non-negative ints addressing the run's random stream through
    :func:`rdpo_theory.rng.stream_seed` (e.g. ``(base_seed, n, seed_index)``).

``run_sweep(fn, tasks, *, namespace, cache_dir=None, shared=None, jobs=1, backend=None,
progress=True, desc=None) -> SweepResult``
    Calls ``fn(params: dict, seed: numpy.random.SeedSequence, shared) -> dict | list[dict]``
    once per task that is not already cached, in parallel with joblib, and returns every
    task's rows (cached and new) in task order. Each row is ``{**params, **row}``, so the
    grid coordinates are columns of the tidy table. ``fn`` must be a picklable (module-level)
    function for process backends.

    * **Determinism**: the stream of a task depends only on its ``seed`` keys, never on the
      order, the backend or which other tasks run, so any subset of a sweep reproduces the
      same numbers.
    * **Cache**: with ``cache_dir``, each finished task's rows are written (atomically, as
      JSON) to ``cache_dir/<namespace>/<key[:2]>/<key>.json`` by the *calling* process as soon
      as the task returns, where ``key`` is a SHA-256 of ``(namespace, params, seed, code)``
      and ``code`` is :func:`code_fingerprint`: the package version and a SHA-256 of the
      source of every module of the package. Any code change therefore misses the cache
      (nothing computed by other code is ever served), and a run that failed (rows with
      ``ok`` false; the payload records ``failed`` and the rows' ``status``/``reason``) is
      retried as soon as the code changes. A
      rerun, an interrupted sweep or an extended grid (more n, more seeds) reads those files
      back and computes only what is missing. ``namespace`` must name everything that changes
      results but is not in ``params`` or the code (the world, solver tolerances): build
      it with :func:`fingerprint`. ``shared`` is *not* hashed. :func:`clear_cache` (``rdpo
      cache clear``) deletes the cache files under a root.
    * **Parallelism**: ``jobs`` is joblib's ``n_jobs`` (``-1`` = all cores). ``jobs=1`` with
      ``backend=None`` runs in-process without joblib. ``backend`` is any joblib backend
      name: ``"loky"`` (default for ``jobs != 1``), ``"threading"``, ``"multiprocessing"``,
      or a registered cluster backend. Results arrive unordered; a failing task raises after
      every finished task has been cached, so a rerun resumes.
    * **Progress**: a tqdm bar counting tasks (cached tasks count as done at the start).

Cluster backend (the ``cluster`` extra: ``pip install -e ".[cluster]"``)::

    from dask.distributed import Client
    client = Client("tcp://scheduler:8786")        # or Client(LocalCluster(...))
    run_sweep(fn, tasks, namespace=ns, jobs=-1, backend="dask")

``backend`` is passed to :func:`joblib.parallel_config`, which registers joblib's ``"dask"``
backend on first use; tasks then run on the client's cluster (tested against the joblib
result on a ``distributed.LocalCluster``). Other joblib backends registered by the user with
:func:`joblib.register_parallel_backend` work the same way but are not tested here. Workers
on a cluster need not share the cache
folder: only the calling process reads and writes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..rng import stream_seed

_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Task:
    """One run of a sweep.

    Parameters
    ----------
    params : mapping of str -> JSON scalar
        Grid coordinates and run options; they become columns of every row the run returns.
    seed : tuple of int >= 0
        Keys of the run's stream, ``rdpo_theory.rng.stream_seed(*seed)``.
    """

    params: Mapping[str, Any]
    seed: tuple[int, ...] = ()

    def __post_init__(self):
        params = dict(self.params)
        for k, v in params.items():
            if not isinstance(k, str):
                raise InputError(f"params keys must be str, got {k!r}")
            if isinstance(v, np.generic):
                v = v.item()
                params[k] = v
            if not isinstance(v, _SCALARS):
                raise InputError(
                    f"params[{k!r}] must be a JSON scalar (str, int, float, bool, None), "
                    f"got {type(v).__name__}"
                )
        seed = tuple(self.seed)
        for s in seed:
            if isinstance(s, bool) or int(s) != s or s < 0:
                raise InputError(f"seed keys must be non-negative ints, got {self.seed!r}")
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "seed", tuple(int(s) for s in seed))


@dataclass
class SweepResult:
    """Rows of a sweep, in task order, with bookkeeping.

    Attributes
    ----------
    rows : list of dict
        ``{**params, **row}`` for every row every task returned.
    n_tasks, n_cached, n_computed : int
        Tasks in the sweep, read from the cache, computed now.
    seconds : float
        Wall time of the call.
    """

    rows: list[dict] = field(default_factory=list)
    n_tasks: int = 0
    n_cached: int = 0
    n_computed: int = 0
    seconds: float = 0.0

    def frame(self):
        """The rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows)


# ---------------------------------------------------------------------------- keys and cache
def _canonical(obj) -> Any:
    """A JSON-able canonical form: arrays as nested lists of floats, mappings sorted."""
    if isinstance(obj, np.ndarray):
        return {"__array__": list(obj.shape), "data": [_canonical(v) for v in obj.ravel()]}
    if isinstance(obj, np.generic):
        return _canonical(obj.item())
    if isinstance(obj, float):
        return repr(obj) if not math.isfinite(obj) else float.hex(obj)
    if isinstance(obj, Mapping):
        return {str(k): _canonical(obj[k]) for k in sorted(obj, key=str)}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, _SCALARS):
        return obj
    raise InputError(f"cannot fingerprint an object of type {type(obj).__name__}")


def fingerprint(*parts) -> str:
    """A short stable hash (16 hex chars) of JSON scalars, lists, dicts and numpy arrays.

    Floats are hashed bit-exactly. Use it to build a sweep ``namespace`` from everything that
    determines results besides the task parameters (world arrays, options, a version tag).
    """
    text = json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def task_key(task: Task, namespace: str, *, code: str | None = None) -> str:
    """SHA-256 hex key of ``(namespace, params, seed, code)``; ``code`` defaults to
    :func:`code_fingerprint`, so runs computed by different code never share a key."""
    code = code_fingerprint() if code is None else code
    text = json.dumps(
        _canonical([namespace, task.params, list(task.seed), code]),
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(text.encode()).hexdigest()


#: Where ``rdpo`` commands keep their per-run cache by default (relative to the current
#: directory).
DEFAULT_CACHE_DIR = Path(".cache") / "rdpo"


def package_sources() -> dict[str, bytes]:
    """The source bytes of every module of the ``rdpo_theory`` package, by relative path.

    A task may call any solver, loss or world of the package, so all of them count as its
    code (hashing only what a task imports would miss lazily imported modules)."""
    root = Path(__file__).resolve().parents[1]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.py"))}


_CODE_FINGERPRINT: dict[tuple, str] = {}


def code_fingerprint() -> str:
    """SHA-256 (hex) of the package version and :func:`package_sources`, computed once per
    process and version. Part of every cache key (:func:`task_key`)."""
    from .. import __version__

    memo = (__version__, package_sources)
    if memo not in _CODE_FINGERPRINT:
        h = hashlib.sha256(f"rdpo-theory {__version__}\n".encode())
        for name, src in package_sources().items():
            h.update(name.encode() + b"\0" + hashlib.sha256(src).digest())
        _CODE_FINGERPRINT.clear()
        _CODE_FINGERPRINT[memo] = h.hexdigest()
    return _CODE_FINGERPRINT[memo]


#: The mark every cache entry carries (key ``"rdpo_cache"`` of its JSON payload); temporary
#: files of an entry being written are named ``TMP_PREFIX*.tmp``. Only files with the mark are
#: cache entries: :func:`clear_cache` deletes nothing else.
CACHE_MARK = "rdpo-run-cache-1"
TMP_PREFIX = ".rdpo-entry-"
#: The keys of an entry written before entries were marked (recognised as ours too).
_LEGACY_KEYS = frozenset({"params", "seed", "rows", "version", "code", "failed", "reasons"})
_ENTRY_NAME = re.compile(r"^[0-9a-f]{64}\.json$")


def is_cache_entry(path: str | Path) -> bool:
    """Whether ``path`` is a file this cache wrote: ``<namespace>/<xx>/<key>.json`` whose JSON
    payload carries :data:`CACHE_MARK` (or every key of an older entry), or a torn temporary
    file ``<namespace>/<xx>/TMP_PREFIX*.tmp`` of one."""
    p = Path(path)
    if not p.is_file() or p.is_symlink() or len(p.parent.name) != 2:
        return False
    if p.name.startswith(TMP_PREFIX) and p.name.endswith(".tmp"):
        return True
    if not _ENTRY_NAME.match(p.name) or not p.name.startswith(p.parent.name):
        return False
    try:
        with open(p) as f:
            payload = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(payload, dict):
        return False
    return payload.get("rdpo_cache") == CACHE_MARK or _LEGACY_KEYS <= payload.keys()


def clear_cache(root: str | Path) -> int:
    """Delete every cache entry under ``root`` (:func:`is_cache_entry`: a marked
    ``<namespace>/<xx>/<key>.json`` file or a torn temporary file of one) and the folders that
    deleting them left empty; return the number of entries deleted. Every other file and
    folder, empty ones included, is left alone, so pointing this at the wrong folder deletes
    nothing else."""
    root = Path(root)
    if not root.exists():
        return 0
    if not root.is_dir():
        raise InputError(f"cache folder {str(root)!r} is not a directory")
    n = 0
    emptied: set[Path] = set()
    for p in sorted(root.glob("*/*/*")):
        if is_cache_entry(p):
            p.unlink()
            n += 1
            emptied.add(p.parent)
    for d in sorted(emptied, reverse=True):  # <namespace>/<xx>, then <namespace>
        for folder in (d, d.parent):
            if folder != root and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    return n


class RunCache:
    """Per-run JSON files under ``root/namespace``. ``root=None`` disables caching."""

    def __init__(self, root: str | Path | None, namespace: str):
        if not isinstance(namespace, str) or not namespace or "/" in namespace:
            raise InputError(f"namespace must be a non-empty str without '/', got {namespace!r}")
        self.namespace = namespace
        self.root = None if root is None else Path(root) / namespace

    def path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> list[dict] | None:
        """The cached rows of a run, or None (missing, disabled, or unreadable file)."""
        p = self.path(key)
        if p is None or not p.exists():
            return None
        try:
            with open(p) as f:
                payload = json.load(f)
            return list(payload["rows"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a torn or foreign file is recomputed

    def put(self, key: str, task: Task, rows: list[dict]) -> None:
        """Write a run's rows atomically (temporary file + rename), with the code fingerprint
        and, for a failed run (a row with ``ok`` false), the reasons."""
        p = self.path(key)
        if p is None:
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        from .. import __version__

        failed = [r for r in rows if r.get("ok", True) is False]
        payload = {
            "rdpo_cache": CACHE_MARK,
            "params": task.params,
            "seed": list(task.seed),
            "rows": rows,
            "version": __version__,
            "code": code_fingerprint(),
            "failed": bool(failed),
            "reasons": [str(r.get("reason", r.get("status", ""))) for r in failed],
        }
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=TMP_PREFIX, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f, default=_json_default)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return 0 if self.root is None else sum(1 for _ in self.root.glob("*/*.json"))


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"row value of type {type(obj).__name__} is not JSON-serialisable")


# ---------------------------------------------------------------------------- running
def _normalise_rows(out, task: Task) -> list[dict]:
    if isinstance(out, Mapping):
        out = [out]
    if not isinstance(out, (list, tuple)) or not all(isinstance(r, Mapping) for r in out):
        raise InputError(
            f"sweep function must return a dict or a list of dicts, got {type(out).__name__}"
        )
    # round-trip through JSON so a fresh run and a cached run give identical rows
    rows = [dict(r) for r in out]
    return json.loads(json.dumps(rows, default=_json_default))


def _run_one(fn, index: int, task: Task, shared):
    out = fn(dict(task.params), stream_seed(*task.seed), shared)
    return index, _normalise_rows(out, task)


def run_sweep(
    fn: Callable[..., Any],
    tasks: Iterable[Task],
    *,
    namespace: str,
    cache_dir: str | Path | None = None,
    shared=None,
    jobs: int = 1,
    backend: str | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> SweepResult:
    """Run ``fn`` over ``tasks`` in parallel, reusing cached runs. See the module docstring.

    Parameters
    ----------
    fn : callable ``(params: dict, seed: SeedSequence, shared) -> dict | list[dict]``
    tasks : iterable of Task
        Must be non-empty, without duplicate (params, seed).
    namespace : str
        Names the sweep's fixed context in cache keys (use :func:`fingerprint`).
    cache_dir : path, optional
        Cache root; None disables caching.
    shared : object, optional
        Passed to every call (pickled to workers), not part of the cache key.
    jobs : int
        joblib ``n_jobs``; 1 runs in-process unless a ``backend`` is given.
    backend : str, optional
        joblib backend name (``"loky"``, ``"threading"``, ``"multiprocessing"``, ``"dask"``).
    progress : bool
        Show a tqdm bar.
    desc : str, optional
        Progress-bar label (default ``namespace``).

    Returns
    -------
    SweepResult
    """
    tasks = list(tasks)
    if not tasks:
        raise InputError("tasks is empty: nothing to sweep")
    if not all(isinstance(t, Task) for t in tasks):
        raise InputError("tasks must be Task objects")
    if isinstance(jobs, bool) or int(jobs) != jobs or jobs == 0:
        raise InputError(f"jobs must be a non-zero int (joblib n_jobs), got {jobs!r}")
    cache = RunCache(cache_dir, namespace)
    code = code_fingerprint()
    keys = [task_key(t, namespace, code=code) for t in tasks]
    if len(set(keys)) != len(keys):
        raise InputError("tasks contain duplicates (same params and seed)")
    t0 = time.perf_counter()
    results: list[list[dict] | None] = [cache.get(k) for k in keys]
    todo = [i for i, r in enumerate(results) if r is None]
    n_cached = len(tasks) - len(todo)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(tasks),
        initial=n_cached,
        desc=desc or namespace,
        disable=not progress,
        leave=False,
    )

    def _store(i: int, rows: list[dict]) -> None:
        cache.put(keys[i], tasks[i], rows)
        results[i] = rows
        bar.update(1)

    try:
        if todo and jobs == 1 and backend is None:
            for i in todo:
                _store(*_run_one(fn, i, tasks[i], shared))
        elif todo:
            from joblib import Parallel, delayed, parallel_config

            # parallel_config (not Parallel(backend=...)) also registers joblib's external
            # backends ("dask"), which Parallel alone rejects as unknown.
            config = parallel_config(backend=backend) if backend else contextlib.nullcontext()
            with config:
                par = Parallel(n_jobs=int(jobs), return_as="generator_unordered")
                for i, rows in par(delayed(_run_one)(fn, i, tasks[i], shared) for i in todo):
                    _store(i, rows)
    finally:
        bar.close()
    out: list[dict] = []
    for task, rows in zip(tasks, results):
        for r in rows:  # type: ignore[union-attr]
            out.append({**task.params, **r})
    return SweepResult(
        rows=out,
        n_tasks=len(tasks),
        n_cached=n_cached,
        n_computed=len(todo),
        seconds=time.perf_counter() - t0,
    )


def grid_tasks(grid: Mapping[str, Sequence], *, seed_keys: Callable[[dict], tuple[int, ...]]):
    """The Cartesian product of ``grid`` as Tasks; ``seed_keys(params)`` gives each seed.

    >>> ts = grid_tasks({"n": [10, 20], "seed": [0, 1]}, seed_keys=lambda p: (7, p["n"], p["seed"]))
    >>> len(ts), ts[0].seed
    (4, (7, 10, 0))
    """
    import itertools

    names = list(grid)
    for k in names:
        if len(grid[k]) == 0:
            raise InputError(f"grid[{k!r}] is empty")
    tasks = []
    for combo in itertools.product(*(grid[k] for k in names)):
        params = dict(zip(names, combo))
        tasks.append(Task(params, seed_keys(params)))
    return tasks
