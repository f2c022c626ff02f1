"""Start-up time of ``import rdpo_theory`` and of the ``rdpo`` commands that do not train.

Each row runs one command in a fresh Python process ``--repeats`` times and reports

* ``wall_s``: the minimum wall time over the repeats, measured from outside (process start to
  exit, interpreter start-up included);
* ``cpu_s``: the user + system CPU seconds of that fastest run (the child's own accounting, so
  the load of other processes on a shared machine moves it little);
* ``torch`` / ``cvxpy`` / ``matplotlib``: whether the command left that module in
  ``sys.modules`` (read at exit).

The peers, measured in the same run: ``python -c pass`` (the interpreter alone), ``import
cvxpy`` and ``import torch`` (what a command paid before it imported them lazily), and ``rdpo
solve ... --solver cvxpy``, which still builds the conic program and so imports cvxpy: the
previous default path of ``rdpo solve``. ``--baseline REV`` adds the same ``rdpo solve`` run on
the package as it was at git revision ``REV`` (exported with ``git archive`` into a temporary
folder, the working tree untouched), e.g. ``--baseline b97835f``, the commit before the lazy
imports. ``vs_old`` is each ``rdpo solve`` row's wall time over the baseline row's (else over
the ``--solver cvxpy`` row's). ``--importtime`` adds the ten slowest imports (cumulative,
``python -X importtime``) of the default ``rdpo solve``.

Usage: ``python benchmarks/startup.py [--repeats 5] [--baseline REV] [--importtime]``. The
target (issue 26): a small ``rdpo solve`` returns within 1.5 s wall.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("torch", "cvxpy", "matplotlib")

#: Runs ``rdpo`` in-process, then prints which heavy modules it imported (last stderr line).
CLI = (
    "import sys\n"
    "from rdpo_theory.cli import main\n"
    "try:\n"
    "    rc = main(sys.argv[1:])\n"
    "except SystemExit as exc:\n"
    "    rc = exc.code\n"
    "print('MODULES', *[int(m in sys.modules) for m in {probe!r}], file=sys.stderr)\n"
    "sys.exit(rc)\n"
)
CODE = (
    "{code}\nimport sys\n"
    "print('MODULES', *[int(m in sys.modules) for m in {probe!r}], file=sys.stderr)\n"
)

SOLVE = ["solve", "--world", "random", "--n", "200"]
ROWS = [
    ("python -c pass (interpreter)", "code", "pass"),
    ("import cvxpy (peer)", "code", "import cvxpy"),
    ("import torch (peer)", "code", "import torch"),
    ("import rdpo_theory", "code", "import rdpo_theory"),
    ("import rdpo_theory.exact", "code", "import rdpo_theory.exact"),
    ("rdpo --help", "cli", ["--help"]),
    ("rdpo figures --list", "cli", ["figures", "--list"]),
    ("rdpo solve (old path: --solver cvxpy)", "cli", [*SOLVE, "--solver", "cvxpy"]),
    ("rdpo solve --world random --n 200", "cli", SOLVE),
    ("rdpo solve ... --method kldpo --rho .05", "cli", [*SOLVE, "--method=kldpo", "--rho=.05"]),
]


def export_revision(rev: str, dest: Path) -> Path:
    """The ``rdpo_theory`` package at git revision ``rev``, written under ``dest``."""
    archive = subprocess.run(
        ["git", "archive", rev, "rdpo_theory"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def command(kind: str, spec) -> list[str]:
    if kind == "cli":
        return [sys.executable, "-c", CLI.format(probe=PROBE), *spec]
    return [sys.executable, "-c", CODE.format(code=spec, probe=PROBE)]


def run_once(argv: list[str], env: dict) -> tuple[float, float, list[int]]:
    """Wall and CPU seconds of one run, and the module flags it printed. The run's current
    folder is an empty one, so ``python -c`` imports the package on ``PYTHONPATH``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=env["RDPO_BENCH_CWD"])
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[3:]} failed:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    line = [s for s in proc.stderr.splitlines() if s.startswith("MODULES")][-1]
    return wall, cpu, [int(t) for t in line.split()[1:]]


def importtime(env: dict, top: int = 10) -> list[tuple[float, str]]:
    """The ``top`` slowest imports (cumulative seconds) of the default ``rdpo solve``."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", CLI.format(probe=PROBE), *SOLVE],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    rows = []
    for s in proc.stderr.splitlines():
        if s.startswith("import time:") and "|" in s and "cumulative" not in s:
            _, cum, name = s[len("import time:") :].split("|")
            rows.append((int(cum) / 1e6, name.rstrip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs per row; the fastest counts")
    ap.add_argument("--importtime", action="store_true", help="the slowest imports of solve")
    ap.add_argument("--baseline", metavar="REV", help="also time rdpo solve at git revision REV")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND=os.environ.get("MPLBACKEND", ""))
    if not env["MPLBACKEND"]:
        env.pop("MPLBACKEND")
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as empty:
        env["RDPO_BENCH_CWD"] = empty
        rows = [(label, kind, spec, env) for label, kind, spec in ROWS]
        if args.baseline:
            old_env = dict(env, PYTHONPATH=str(export_revision(args.baseline, Path(tmp))))
            rows.insert(
                -2, (f"rdpo solve ... at {args.baseline} (baseline)", "cli", SOLVE, old_env)
            )
        results = []
        for label, kind, spec, e in rows:
            runs = [run_once(command(kind, spec), e) for _ in range(args.repeats)]
            wall, cpu, mods = min(runs)
            results.append((label, wall, cpu, mods))
    ref = "(baseline)" if args.baseline else "(old path"
    old = next(w for label, w, _, _ in results if ref in label)
    print(f"# {args.repeats} repeats each, fastest run; Python {sys.version.split()[0]}")
    head = f"{'command':44s} {'wall_s':>7s} {'cpu_s':>7s} {'vs_old':>7s}  " + "  ".join(PROBE)
    print(head)
    print("-" * len(head))
    for label, wall, cpu, mods in results:
        ratio = f"{wall / old:7.2f}" if label.startswith("rdpo solve") else f"{'':7s}"
        flags = "  ".join(f"{'yes' if m else 'no':>{len(p)}s}" for p, m in zip(PROBE, mods))
        print(f"{label:44s} {wall:7.2f} {cpu:7.2f} {ratio}  {flags}")
    if args.importtime:
        print("\nslowest imports of `rdpo solve --world random --n 200` (cumulative s):")
        for sec, name in importtime(env):
            print(f"  {sec:6.3f}  {name}")


if __name__ == "__main__":
    main()
