"""Benchmark the exact robust solvers over instances: fast path, plain L-BFGS, cvxpy, ``dro``.

For KLDPO (the smooth KL dual in ``(theta, lam)``) and continuous WDPO-1 with kappa = inf
(``E_p l + rho beta ||theta||``) every instance is solved by

* ``fast``: ``kldpo`` / ``wdpo`` with ``solver="fast"`` (certified: gap and optimality gap);
* ``lbfgs``: a plain ``scipy.optimize.minimize(method="L-BFGS-B")`` on the same smooth
  objective, written here as the peer (two passes over X per evaluation, counted the same way;
  its final objective is compared with the fast path's value, ``lbfgs_excess``);
* ``cvxpy``: ``solver="cvxpy"`` in a subprocess with a timeout (skipped above ``--conic-max-n``);
* ``dro``: the ``dro`` package (PyPI ``dro``, needs scikit-learn) when importable, in a
  subprocess with a timeout; otherwise the row says "unavailable" (it is not a dependency:
  ``pip install --target /tmp/dro_pkg dro scikit-learn`` and pass ``--dro-path /tmp/dro_pkg``).

Columns: ``fast_s`` / ``lbfgs_s`` are CPU seconds (``time.process_time``), the minimum over
``--repeats`` runs, with BLAS pinned to one thread (``RDPO_BLAS_THREADS``, default 1), so the
load of other processes does not decide the table; ``pass_s`` is one ``X @ v`` pass measured
the same way in the same process; ``fast_passes`` is the number of reductions over the rows of X
counted by :class:`rdpo_theory.exact.passes.Rows` (a subsample pass counts its fraction);
``fast_pass_equiv = fast_s / pass_s`` is the time in units of one pass (a Gram product
``X^T W X`` costs several passes' time, so this is the honest floor comparison); ``vs_lbfgs =
fast_s / lbfgs_s``; ``peak_mb`` is tracemalloc's peak of the fast solve (beyond X).

Data: ``x`` Gaussian, either normalised so that ``||x||`` is about 1 (``x ~ N(0, I/d)``,
``scale="unit"``) or not (``x ~ N(0, I)``, ``scale="raw"``); ``theta*`` a fixed random
direction of norm ``signal``; logistic labels ``y ~ Bernoulli(sigmoid(beta theta* . x))``;
beta = 1; theta_ref = 0; no radius.

Sweeps: ``--quick`` (a few instances, a few minutes); the default: one factor at a time around
the base instance (n = 1e5, d = 32, signal 6, unit scale, rho = 0.05): signal in {1, 3, 6},
scale in {unit, raw}, d in {8, 32, 256, 1024}, n in {1e4, 1e5, 1e6}, rho in {0.01, 0.05, 0.2};
``--full``: the full grid (hours). ``--high-dim``: n = 1e5 with d = 1024 and 4096 (float32
storage, read in place by the public ``kldpo`` / ``wdpo``; above d = 512 the fast paths are
Hessian-free). ``--families``: every n >= 1e5 instance family of the default sweep at
d in {8, 32, 256} (signal, scale, n = 1e6, rho), the subset used for the docs table.
``--dims 4096`` keeps only those d; ``--no-peer`` skips the L-BFGS peer (its columns empty).

Usage: ``python benchmarks/exact_solvers.py [--quick|--families|--high-dim|--full] [--repeats 3]
[--timeout 300]
[--dro-path DIR] [--out benchmarks/exact_solvers.csv] [--append]``. Every run also writes
``<out stem>_summary.csv`` (:func:`summary`: counts of instances, ranges of passes and of the
time ratio to the peer, over all rows and per problem and regime); ``--summarize`` rewrites it
from the existing ``--out`` table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's rdpo_theory

BETA = 1.0
BASE = dict(n=100_000, d=32, signal=6.0, scale="unit", rho=0.05)


# ---------------------------------------------------------------------------- data
def make_data(n: int, d: int, signal: float, scale: str, seed: int = 0):
    """Gaussian pairs (see the module docstring), generated in chunks; a PreferenceData."""
    from rdpo_theory import PreferenceData
    from rdpo_theory.rng import make_rng

    ts = make_rng([7, d]).standard_normal(d)
    ts *= signal / np.linalg.norm(ts)
    rng = make_rng([seed, n, d])
    X = np.empty((n, d))
    y = np.empty(n)
    sd = 1.0 / np.sqrt(d) if scale == "unit" else 1.0
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        X[lo:hi] = sd * rng.standard_normal((hi - lo, d))
        y[lo:hi] = rng.random(hi - lo) < 1.0 / (1.0 + np.exp(-BETA * (X[lo:hi] @ ts)))
    return PreferenceData(X, y)


# ---------------------------------------------------------------------------- the peer
def lbfgs_kl(rows, c, p, rho):
    """Plain L-BFGS-B on the KL dual ``F(theta, lam)``, lam >= 1e-12 (two passes per call)."""
    from scipy.optimize import minimize

    from rdpo_theory.losses import dpo_loss

    d = rows.d
    A = rows.scaled(c)

    def f(z):
        th, lam = z[:d], z[d]
        m = A.matvec(th)
        l = dpo_loss(m)
        lmax = float(l.max())
        a = (l - lmax) / lam
        e = p * np.exp(a)
        Z = float(e.sum())
        q = e / Z
        val = lam * rho + lam * np.log(Z) + lmax
        g_th = A.rmatvec(q * -(1.0 / (1.0 + np.exp(m))))
        g_lam = rho + np.log(Z) - float(q @ (l - lmax)) / lam
        return val, np.concatenate([g_th, [g_lam]])

    z0 = np.concatenate([np.zeros(d), [1.0]])
    bounds = [(None, None)] * d + [(1e-12, None)]
    res = minimize(
        f,
        z0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options=dict(maxiter=20_000, maxfun=40_000, ftol=1e-14, gtol=1e-9, maxcor=20),
    )
    return float(res.fun), res.x[:d], int(res.nfev)


def lbfgs_w1(rows, c, p, rho):
    """Plain L-BFGS-B on ``E_p l + rho beta ||theta||`` (two passes per call)."""
    from scipy.optimize import minimize

    from rdpo_theory.losses import dpo_loss

    A = rows.scaled(c)
    rb = rho * BETA

    def f(th):
        m = A.matvec(th)
        nt = float(np.linalg.norm(th))
        val = float(p @ dpo_loss(m)) + rb * nt
        g = A.rmatvec(p * -(1.0 / (1.0 + np.exp(m))))
        if nt > 0:
            g = g + rb * th / nt
        return val, g

    res = minimize(
        f,
        np.zeros(rows.d),
        jac=True,
        method="L-BFGS-B",
        options=dict(maxiter=20_000, maxfun=40_000, ftol=1e-14, gtol=1e-9, maxcor=20),
    )
    return float(res.fun), res.x, int(res.nfev)


# ---------------------------------------------------------------------------- one instance
def cpu_min(fn, repeats: int):
    """``(min CPU seconds, last result)`` over ``repeats`` calls."""
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


def run_instance(
    problem: str,
    n,
    d,
    signal,
    scale,
    rho,
    repeats: int,
    storage: str = "float64",
    peer=True,
) -> dict:
    """Fast path and the L-BFGS peer on one instance, in this process (BLAS pinned).

    ``storage="float32"``: X is handed to the solvers as a float32 array (read in place
    through the pass layer, sums in float64); the peer reads the same float32 storage."""
    from rdpo_theory.exact import fast, kldpo, wdpo
    from rdpo_theory.exact.passes import Rows, blas_thread_limit, blas_threads

    data = make_data(n, d, signal, scale)
    X, signed, weights = data.X, data.signed_labels, data.weights
    if storage == "float32":
        X = X.astype(np.float32)
        y = data.y
        del data

        def call(fn):
            return fn(X, y, rho=rho, beta=BETA, solver="fast")
    else:

        def call(fn):
            return fn(data, rho=rho, beta=BETA, solver="fast")

    fn = kldpo if problem == "kl" else wdpo
    out = dict(problem=problem, n=n, d=d, signal=signal, scale=scale, rho=rho, storage=storage)
    with blas_threads(blas_thread_limit()):
        v = np.ones(d)
        pr = Rows(X)
        out["pass_s"], _ = cpu_min(lambda: pr.matvec(v), 5)
        tracemalloc.start()
        t0 = time.process_time()
        try:
            res = call(fn)
        except Exception as exc:  # noqa: BLE001 - a failure is a measurement
            tracemalloc.stop()
            out["fast_error"] = f"{type(exc).__name__}: {str(exc)[:80]}"
            return out
        t_traced = time.process_time() - t0
        out["peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        if repeats > 1:
            t, res = cpu_min(lambda: call(fn), repeats - 1)
            t = min(t, t_traced)
        else:
            t = t_traced
        out.update(
            fast_s=t,
            fast_passes=float(res.info.get("passes", np.nan)),
            fast_value=float(res.value),
            gap=float(res.gap),
            optimality_gap=float(getattr(res, "optimality_gap", np.nan) or 0.0),
            regime=str(res.regime),
            newton_iterations=int(res.info.get("newton", {}).get("iterations", 0)),
            hessian_free=fast.hessian_free(d, None),
        )
        if not peer:
            out["lbfgs_s"] = np.nan
            out["fast_pass_equiv"] = out["fast_s"] / out["pass_s"]
            return out
        rows = Rows(X)
        peer = lbfgs_kl if problem == "kl" else lbfgs_w1
        c = signed * BETA
        t, (val, _, nfev) = cpu_min(lambda: peer(rows, c, weights, rho), repeats)
        out.update(lbfgs_s=t, lbfgs_passes=rows.passes / repeats, lbfgs_evals=nfev)
        out["lbfgs_excess"] = val - out["fast_value"]
    out["fast_pass_equiv"] = out["fast_s"] / out["pass_s"]
    out["lbfgs_pass_equiv"] = out["lbfgs_s"] / out["pass_s"]
    out["vs_lbfgs"] = out["fast_s"] / out["lbfgs_s"]
    return out


def run_conic(problem, who, n, d, signal, scale, rho, dro_path) -> dict:
    """The cvxpy path or the ``dro`` peer on one instance (wall seconds of one run)."""
    data = make_data(n, d, signal, scale)
    if who == "dro":
        if dro_path:
            sys.path.append(dro_path)
        try:
            _bare_dro_packages()
            from dro.linear_model.kl_dro import KLDRO
            from dro.linear_model.wasserstein_dro import WassersteinDRO
        except Exception as exc:  # noqa: BLE001 - any import failure means "unavailable"
            return dict(error=f"unavailable ({type(exc).__name__})")
        Xs, ys = BETA * data.X, 2.0 * data.y - 1.0
        if problem == "kl":
            model = KLDRO(input_dim=d, model_type="logistic", fit_intercept=False)
            model.update({"eps": rho})
        else:
            model = WassersteinDRO(input_dim=d, model_type="logistic", fit_intercept=False)
            model.update({"eps": BETA * rho, "p": 1, "kappa": "inf"})
        t0 = time.process_time()
        try:
            model.fit(Xs, ys)
        except Exception as exc:  # noqa: BLE001
            return dict(error=f"failed: {type(exc).__name__}")
        return dict(seconds=time.process_time() - t0)
    from rdpo_theory.exact import kldpo, wdpo

    fn = kldpo if problem == "kl" else wdpo
    t0 = time.process_time()
    try:
        res = fn(data, rho=rho, beta=BETA, solver="cvxpy")
    except Exception as exc:  # noqa: BLE001
        return dict(error=f"failed: {type(exc).__name__}")
    return dict(seconds=time.process_time() - t0, value=float(res.value))


def _bare_dro_packages() -> None:
    """Register ``dro`` and ``dro.linear_model`` without running their ``__init__`` (which
    imports the neural models and so torchvision); the linear models need only sklearn."""
    import importlib.util
    import types

    spec = importlib.util.find_spec("dro")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("No module named 'dro' (pip install dro scikit-learn)")
    root = list(spec.submodule_search_locations)[0]
    for name, path in (("dro", root), ("dro.linear_model", f"{root}/linear_model")):
        mod = types.ModuleType(name)
        mod.__path__ = [path]
        sys.modules.setdefault(name, mod)


def in_subprocess(payload: dict, timeout: float, mem_gb: float) -> dict:
    """Run one job (``--one JSON``) in a child process with a timeout and an address-space cap."""
    cmd = [sys.executable, __file__, "--one", json.dumps(payload)]

    def cap():
        import resource

        lim = int(mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=cap if mem_gb else None
        )
    except subprocess.TimeoutExpired:
        return dict(error=f"timeout > {timeout:g} s")
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = out.stderr.strip().splitlines()[-1:] if out.stderr else []
        if tail and "MemoryError" in tail[0]:
            return dict(error=f"out of memory (> {mem_gb:g} GiB)")
        return dict(error=f"crashed (rc {out.returncode}): {tail[0][:80] if tail else ''}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------- sweeps
def instances(mode: str) -> list[dict]:
    if mode == "high-dim":
        return [dict(BASE, d=d, storage="float32") for d in (1024, 4096)]
    if mode == "families":
        # every n >= 1e5 family of the default sweep at d in {8, 32, 256}
        out = [dict(BASE, d=d) for d in (8, 32, 256)]
        out += [dict(BASE, signal=s) for s in (1.0, 3.0)]
        out += [dict(BASE, scale="raw")]
        out += [dict(BASE, n=1_000_000)]
        out += [dict(BASE, rho=r) for r in (0.01, 0.2)]
        return out
    if mode == "quick":
        return [
            dict(BASE, n=10_000),
            dict(BASE, n=100_000),
            dict(BASE, n=100_000, signal=1.0),
            dict(BASE, n=100_000, scale="raw"),
            dict(BASE, n=100_000, d=256),
        ]
    if mode == "full":
        grid = itertools.product(
            (1.0, 3.0, 6.0), ("unit", "raw"), (8, 32, 256, 1024), (10_000, 100_000, 1_000_000)
        )
        return [
            dict(n=n, d=d, signal=s, scale=sc, rho=r)
            for s, sc, d, n in grid
            for r in (0.01, 0.05, 0.2)
            if n * d <= 100_000_000  # X fits in 800 MB
        ]
    out = [dict(BASE)]
    out += [dict(BASE, signal=s) for s in (1.0, 3.0)]
    out += [dict(BASE, scale="raw")]
    out += [dict(BASE, d=d) for d in (8, 256, 1024)]
    out += [dict(BASE, n=n) for n in (10_000, 1_000_000)]
    out += [dict(BASE, rho=r) for r in (0.01, 0.2)]
    return out


def markdown(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.3g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


COLS = [
    "problem",
    "n",
    "d",
    "signal",
    "scale",
    "rho",
    "regime",
    "fast_s",
    "fast_passes",
    "fast_pass_equiv",
    "lbfgs_s",
    "lbfgs_passes",
    "lbfgs_pass_equiv",
    "vs_lbfgs",
    "pass_s",
    "lbfgs_excess",
    "peak_mb",
    "hessian_free",
    "cvxpy",
    "dro",
    "fast_error",
]


def summary(df):
    """The counts and ranges the benchmark pages quote, over the rows of a benchmark table.

    One row per group: ``all`` (every row), then each ``problem-regime`` (``kl-interior``,
    ``w1-collapse``, ...; a row whose fast path failed has no regime and is in ``all`` only).
    Columns: ``rows``; ``failed`` (rows with a ``fast_error``: the fast path raised, e.g. out of
    memory under ``--mem-gb``); ``solved`` (``rows - failed``); ``peer_rows`` (rows where the
    L-BFGS peer ran);
    ``slower`` (peer rows with ``vs_lbfgs > 1``: the fast path took more CPU time than the
    peer); ``vs_lbfgs_min`` / ``vs_lbfgs_max`` (``fast_s / lbfgs_s`` over the peer rows,
    dimensionless); ``passes_min`` / ``passes_max`` (``fast_passes``, passes over X);
    ``optimality_gap_max`` (the largest ``|optimality_gap|``, the certificate of
    :func:`rdpo_theory.exact.kldpo` / :func:`rdpo_theory.exact.wdpo`).
    """
    import pandas as pd

    groups = [("all", df)]
    groups += [(f"{p}-{r}", g) for (p, r), g in df.groupby(["problem", "regime"], sort=True)]
    out = []
    for name, g in groups:
        ratio = g["vs_lbfgs"].dropna() if "vs_lbfgs" in g else pd.Series(dtype=float)
        failed = int(g["fast_error"].notna().sum()) if "fast_error" in g else 0
        out.append(
            dict(
                group=name,
                rows=len(g),
                failed=failed,
                solved=len(g) - failed,
                peer_rows=len(ratio),
                slower=int((ratio > 1).sum()),
                vs_lbfgs_min=ratio.min(),
                vs_lbfgs_max=ratio.max(),
                passes_min=g["fast_passes"].min(),
                passes_max=g["fast_passes"].max(),
                optimality_gap_max=g["optimality_gap"].abs().max(),
            )
        )
    return pd.DataFrame(out)


def write_summary(df, out: Path) -> Path:
    """Write :func:`summary` of ``df`` beside the table ``out`` as ``<out stem>_summary.csv``."""
    from rdpo_theory.tables import write_csv

    return write_csv(summary(df), out.with_name(f"{out.stem}_summary.csv"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="five instances (a few minutes)")
    mode.add_argument("--full", action="store_true", help="the full grid (hours)")
    mode.add_argument(
        "--families",
        action="store_true",
        help="every n >= 1e5 instance family of the default sweep at d in {8, 32, 256}",
    )
    mode.add_argument(
        "--high-dim",
        action="store_true",
        help="n = 1e5, d in {1024, 4096}, float32 storage (time and peak memory)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs per solve; the min is kept")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per instance")
    ap.add_argument("--conic-timeout", type=float, default=120.0, help="seconds per cvxpy/dro")
    ap.add_argument("--conic-max-n", type=int, default=100_000, help="largest n for cvxpy/dro")
    ap.add_argument("--mem-gb", type=float, default=8.0, help="address-space cap per job")
    ap.add_argument("--problems", default="kl,w1")
    ap.add_argument("--dims", default=None, help="only these d (comma-separated)")
    ap.add_argument("--no-peer", action="store_true", help="skip the L-BFGS peer")
    ap.add_argument("--dro-path", default=None, help="folder where `dro` is installed")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/exact_solvers.csv"))
    ap.add_argument("--append", action="store_true", help="add the rows to an existing --out table")
    ap.add_argument(
        "--summarize",
        action="store_true",
        help="only write the summary of the existing --out table (OUT_summary.csv beside it)",
    )
    args = ap.parse_args(argv)
    if args.one:
        job = json.loads(args.one)
        kind = job.pop("kind")
        if kind == "instance":
            print(json.dumps(run_instance(**job)))
        else:
            print(json.dumps(run_conic(**job)))
        return 0
    import pandas as pd
    from tqdm import tqdm

    if args.summarize:
        print(write_summary(pd.read_csv(args.out), args.out))
        return 0

    which = (
        "quick"
        if args.quick
        else "full"
        if args.full
        else "families"
        if args.families
        else "high-dim"
        if args.high_dim
        else "sweep"
    )
    insts = instances(which)
    if args.dims:
        insts = [i for i in insts if str(i["d"]) in args.dims.split(",")]
    jobs = [(pb, inst) for inst in insts for pb in args.problems.split(",")]
    rows = []
    for pb, inst in tqdm(jobs, desc="instances"):
        r = in_subprocess(
            dict(
                kind="instance",
                problem=pb,
                repeats=args.repeats,
                peer=not args.no_peer,
                **inst,
            ),
            args.timeout,
            args.mem_gb,
        )
        r = dict(problem=pb, **inst) | r
        for who in ("cvxpy", "dro"):
            inst = {k: v for k, v in inst.items() if k != "storage"}
            if inst["n"] > args.conic_max_n:
                r[who] = f"not run (n > {args.conic_max_n:g})"
                continue
            c = in_subprocess(
                dict(kind="conic", problem=pb, who=who, dro_path=args.dro_path, **inst),
                args.conic_timeout,
                args.mem_gb,
            )
            r[who] = f"{c['seconds']:.3g} s" if "seconds" in c else c.get("error", "?")
        rows.append(r)
        tqdm.write(markdown([r], COLS).splitlines()[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    if args.append and args.out.exists():
        df = pd.concat([pd.read_csv(args.out), df], ignore_index=True)
    df.to_csv(args.out, index=False)
    write_summary(df, args.out)
    print(markdown(rows, COLS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
