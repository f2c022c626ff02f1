"""Benchmark the exact robust solvers: cvxpy path vs fast path vs the ``dro`` package.

Prints a markdown table (sizes, seconds, peak traced memory, agreement with the fast path,
ratio of each peer's time to ours) and writes it to ``--out`` (CSV). Every solve runs in its
own subprocess with a timeout, so a peer that hangs or runs out of memory is a recorded
failure, not a crashed benchmark.

Data: ``gaussian_preferences(n, d)`` with ``||theta*|| = 6`` and beta = 1 (a signal strong
enough that KL-DRO does not collapse at rho = 0.05). Problems: KLDPO (rho = 0.05) and
continuous WDPO with p = 1, kappa = inf (rho = 0.05), theta_ref = 0, no radius; plus one
finite-candidate WDPO with 200 support points and 400 candidates.

The peer is the ``dro`` package (PyPI ``dro``, needs scikit-learn). It is never a dependency
of rdpo-theory: install it into a side folder, e.g.
``pip install --target /tmp/dro_pkg dro scikit-learn``, and pass ``--dro-path /tmp/dro_pkg``
(the folder is appended to ``sys.path`` so the system numpy/scipy still win). Without it the
peer rows say "unavailable". Its logistic labels are +-1 and its X is ``beta * x`` (our margin
is ``sy beta theta . x``); its Wasserstein radius in that scaled space is ``beta * rho``.
Its KLDRO writes the KL constraint with counts (``sum(v) <= n * eta``).

Every (size, solver) pair runs, the cvxpy path and the peer included, each under a timeout
(default 120 s) and an address-space cap (default 8 GiB); a timeout, a memory failure or a
solver error is recorded as such in the table.

Usage: ``python benchmarks/exact_solvers.py [--quick] [--timeout 120] [--mem-gb 8]
[--dro-path DIR]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's rdpo_theory

RHO = 0.05
BETA = 1.0


def make_data(n: int, d: int):
    from rdpo_theory.worlds import gaussian_preferences

    ts = np.random.default_rng(np.random.SeedSequence([7, d])).standard_normal(d)
    ts *= 6.0 / np.linalg.norm(ts)
    return gaussian_preferences(n, d, theta_star=ts, beta=BETA, seed=n)


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


def run_one(method: str, n: int, d: int, dro_path: str | None) -> dict:
    """Solve one problem in this process; returns seconds, peak memory, value, theta."""
    if method.startswith("finite"):
        from rdpo_theory import World

        w = World.random(10, 5, 8, seed=0, theta_norm=2.0)  # |Z| = 500
        rng = np.random.default_rng(0)
        pop = w.population.data
        Xc, yc = w.candidates()
        keep = rng.choice(pop.n, 200, replace=False, p=pop.weights)
        rest = np.setdiff1d(np.arange(pop.n), keep)
        cand = np.concatenate([keep, rng.choice(rest, 200, replace=False)])  # data + 200 more
        from rdpo_theory import PreferenceData

        wts = pop.weights[keep] / pop.weights[keep].sum()
        data = PreferenceData(pop.X[keep], pop.y[keep], wts)
        from rdpo_theory.exact import wdpo

        tracemalloc.start()
        t0 = time.perf_counter()
        res = wdpo(data, rho=RHO, beta=w.beta, candidates=(Xc[cand], yc[cand]), radius=w.B)
        sec = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        return dict(
            seconds=sec,
            peak_mb=peak / 2**20,
            value=res.value,
            theta=res.theta.tolist(),
            gap=res.gap,
            K=len(cand),
        )
    data = make_data(n, d)
    X, y = data.X, data.y
    if method.endswith("dro"):
        if dro_path:
            sys.path.append(dro_path)
        try:
            _bare_dro_packages()
            from dro.linear_model.kl_dro import KLDRO
            from dro.linear_model.wasserstein_dro import WassersteinDRO
        except Exception as exc:  # noqa: BLE001 - any import failure means "unavailable"
            return dict(error=f"unavailable ({type(exc).__name__}: {str(exc)[:50]})")
        Xs, ys = BETA * X, 2.0 * y - 1.0
        if method == "kl-dro":
            model = KLDRO(input_dim=d, model_type="logistic", fit_intercept=False)
            model.update({"eps": RHO})
        else:
            model = WassersteinDRO(input_dim=d, model_type="logistic", fit_intercept=False)
            model.update({"eps": BETA * RHO, "p": 1, "kappa": "inf"})
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            sol = model.fit(Xs, ys)
        except Exception as exc:  # noqa: BLE001 - the peer's failure is the measurement
            return dict(error=f"failed: {type(exc).__name__}: {str(exc)[:60]}")
        sec = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        theta = np.asarray(sol["theta"], dtype=float)
        from rdpo_theory.exact.certificates import kl_primal_sup
        from rdpo_theory.losses import dpo_losses

        l = dpo_losses(theta, data, beta=BETA)
        if method == "kl-dro":
            value = kl_primal_sup(l, data.weights, RHO, method="root")
        else:
            value = float(l.mean() + RHO * BETA * np.linalg.norm(theta))
        return dict(seconds=sec, peak_mb=peak / 2**20, value=value, theta=theta.tolist())
    from rdpo_theory.exact import kldpo, wdpo

    solver = "fast" if method.endswith("fast") else "cvxpy"
    fn = kldpo if method.startswith("kl") else wdpo
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        res = fn(data, rho=RHO, beta=BETA, solver=solver)
    except Exception as exc:  # noqa: BLE001
        return dict(error=f"failed: {type(exc).__name__}: {str(exc)[:60]}")
    sec = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    return dict(
        seconds=sec, peak_mb=peak / 2**20, value=res.value, theta=res.theta.tolist(), gap=res.gap
    )


def markdown(df) -> str:
    """A markdown table (no tabulate dependency); floats with 3 significant digits."""

    def fmt(v):
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def in_subprocess(method, n, d, timeout, dro_path, mem_gb: float = 8.0) -> dict:
    """Run one solve in a child process with a wall-clock timeout and an address-space cap of
    ``mem_gb`` GiB (a solve that needs more fails with MemoryError instead of swapping the
    shared machine)."""
    cmd = [sys.executable, __file__, "--one", method, str(n), str(d)]
    if dro_path:
        cmd += ["--dro-path", dro_path]

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
        if tail and ("MemoryError" in tail[0] or "memory allocation of" in tail[0]):
            # Python's MemoryError, or Clarabel (Rust) aborting on a failed allocation
            return dict(error=f"failed: out of memory (> {mem_gb:g} GiB)")
        return dict(error=f"crashed (rc {out.returncode})")
    r = json.loads(lines[-1])
    if "MemoryError" in str(r.get("error", "")):
        r["error"] = f"failed: out of memory (> {mem_gb:g} GiB)"
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", nargs=3, metavar=("METHOD", "N", "D"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="n up to 1e4 only")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per solve")
    ap.add_argument(
        "--conic-max-n",
        type=int,
        default=0,
        help="largest n given to the cvxpy path and the peer (0: no limit; every solve still "
        "runs under --timeout and --mem-gb, and a method that timed out or ran out of memory "
        "at some n is not rerun at larger n for the same d)",
    )
    ap.add_argument("--mem-gb", type=float, default=8.0, help="address-space cap per solve")
    ap.add_argument(
        "--only",
        default=None,
        help="run only methods starting with this prefix and merge the "
        "rows into the existing --out table (e.g. --only finite)",
    )
    ap.add_argument("--dro-path", default=None, help="folder where `dro` is installed")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/exact_solvers.csv"))
    args = ap.parse_args(argv)
    if args.one:
        m, n, d = args.one
        print(json.dumps(run_one(m, int(n), int(d), args.dro_path)))
        return 0
    import pandas as pd
    from tqdm import tqdm

    sizes = [(n, d) for n in (1_000, 10_000, 100_000, 1_000_000) for d in (8, 32)]
    if args.quick:
        sizes = [s for s in sizes if s[0] <= 10_000]
    jobs = []
    for n, d in sizes:
        for prob in ("kl", "w1"):
            for who in ("fast", "cvxpy", "dro"):
                jobs.append((f"{prob}-{who}", n, d))
    jobs.append(("finite-200x400", 200, 8))
    if args.only:
        jobs = [j for j in jobs if j[0].startswith(args.only)]
    rows = []
    gave_up: dict = {}  # (method, d) -> n where it timed out / ran out of memory
    for method, n, d in tqdm(jobs, desc="solves"):
        conic = not method.endswith("fast") and not method.startswith("finite")
        if conic and args.conic_max_n and n > args.conic_max_n:
            r = dict(error=f"not run (n > {args.conic_max_n})")
        elif (method, d) in gave_up:
            r = dict(error=f"not run (already {gave_up[(method, d)]})")
        else:
            r = in_subprocess(method, n, d, args.timeout, args.dro_path, args.mem_gb)
            err = str(r.get("error", ""))
            if err.startswith("timeout") or "memory" in err:
                gave_up[(method, d)] = f"{err.split(' (')[0].split(':')[0]} at n = {n:g}"
        rows.append(dict(method=method, n=n, d=d, **r))
    df = pd.DataFrame(rows)
    if args.only and args.out.exists():
        old = pd.read_csv(args.out)
        old = old[~old.method.astype(str).str.startswith(args.only)]
        df = pd.concat([old, df], ignore_index=True)
    # agreement and time ratios against our fast path on the same problem
    for i, r in df.iterrows():
        if r["method"].startswith("finite") or r["method"].endswith("fast"):
            continue
        ref = df[(df.method == r["method"].split("-")[0] + "-fast") & (df.n == r.n) & (df.d == r.d)]
        if (
            ref.empty
            or not isinstance(r.get("theta"), list)
            or not isinstance(ref.iloc[0].get("theta"), list)
        ):
            continue
        f = ref.iloc[0]
        df.loc[i, "theta_diff"] = float(np.max(np.abs(np.subtract(r.theta, f.theta))))
        df.loc[i, "value_rel_diff"] = float(abs(r.value - f.value) / abs(f.value))
        df.loc[i, "time_vs_fast"] = float(r.seconds / f.seconds)
    # ratio of the peer to our cvxpy path
    for i, r in df.iterrows():
        if (
            r["method"].endswith("dro")
            and isinstance(r.get("seconds"), float)
            and not np.isnan(r.seconds)
        ):
            ours = df[
                (df.method == r["method"].split("-")[0] + "-cvxpy") & (df.n == r.n) & (df.d == r.d)
            ]
            if not ours.empty and not np.isnan(ours.iloc[0].get("seconds", np.nan)):
                df.loc[i, "time_vs_cvxpy"] = float(r.seconds / ours.iloc[0].seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.drop(columns=["theta"], errors="ignore").to_csv(args.out, index=False)
    cols = [
        "method",
        "n",
        "d",
        "seconds",
        "peak_mb",
        "gap",
        "value_rel_diff",
        "theta_diff",
        "time_vs_fast",
        "time_vs_cvxpy",
        "error",
    ]
    show = df[[c for c in cols if c in df.columns]].copy()
    print(markdown(show))
    return 0


if __name__ == "__main__":
    sys.exit(main())
