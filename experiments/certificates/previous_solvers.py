"""How often the exact KLDPO solvers before the minimax certificates labelled a wrong answer
"optimal", on the randomized differential suite's 200 default problems.

The solvers are those of commit 817eac3 (the parent of 6ea7690, where ``optimality_gap``
begins); the problems and the reference are those of commit 18beb6a, the suite's first version
(``tests/test_differential.py``'s ``draw`` and ``kl_reference``, ``tests/independent.py``).
Both are taken from the git history into a temporary folder, and the old package runs in a
child process, so nothing of the current package is imported. An answer is wrong when its
value is above the reference (an upper bound of the minimax value: multi-start SLSQP on the
exact robust objective, or the max-margin SOCP in the max-loss regime) by more than the
tolerance ``1e-6 (1 + |value|)``, or, where the reference is exact, off it by more than twice
that.

The old solvers' answers depend on OpenBLAS's kernels, so the run is made twice: with this
machine's ``OPENBLAS_CORETYPE=Haswell`` and with OpenBLAS choosing its kernels itself
(``OPENBLAS_*`` unset). Writes ``answers.csv`` (one row per answer or refusal) and
``summary.csv`` (one row per run) here, through ``rdpo_theory.tables.write_csv``.

    PYTHONPATH=. python experiments/certificates/previous_solvers.py
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from rdpo_theory.tables import write_csv

SOLVERS = "817eac3"
PROBLEMS = "18beb6a"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUNS = {"Haswell": {"OPENBLAS_CORETYPE": "Haswell"}, "auto": {}}

CHILD = r"""
import csv, sys, warnings
warnings.filterwarnings("ignore")
import diff18 as D
from rdpo_theory.errors import SolverError
w = csv.writer(sys.stdout, lineterminator="\n")
for seed in range(200):
    case = D.draw(seed)
    ref = None
    for path in ("fast", "cvxpy"):
        try:
            res = D.kl_solve(case, path)
        except SolverError:
            w.writerow([seed, path, case.regime, "refused", "", "", "", ""])
            continue
        if ref is None:
            ref, exact = D.kl_reference(case)
        v = res.value
        allowed = 1e-6 * (1 + abs(v))
        wrong = v > ref + allowed or (exact and abs(v - ref) > 2 * allowed)
        w.writerow([seed, path, case.regime, res.status, repr(v), repr(ref), exact, wrong])
"""
COLUMNS = ["seed", "path", "regime", "status", "value", "reference", "reference_exact", "wrong"]


def _checkout(tmp: str) -> None:
    git = ["git", "-C", str(ROOT)]
    archive = subprocess.run(
        [*git, "archive", SOLVERS, "rdpo_theory"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
    for name, dest in (
        ("tests/independent.py", "independent.py"),
        ("tests/test_differential.py", "diff18.py"),
    ):
        text = subprocess.run(
            [*git, "show", f"{PROBLEMS}:{name}"], check=True, capture_output=True, text=True
        ).stdout
        old = "from rdpo_theory.exact.result import OPTIMALITY_TOL"
        Path(tmp, dest).write_text(text.replace(old, "OPTIMALITY_TOL = 1e-6"))


def main() -> int:
    answers, summary = [], []
    with tempfile.TemporaryDirectory() as tmp:
        _checkout(tmp)
        for label, extra in RUNS.items():
            env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_")}
            env.update(extra, PYTHONPATH=tmp)
            out = subprocess.run(
                [sys.executable, "-c", CHILD],
                cwd=tmp,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            rows = [dict(zip(COLUMNS, r, strict=True)) for r in csv.reader(io.StringIO(out))]
            optimal = [r for r in rows if r["status"] == "optimal"]
            summary.append(
                {
                    "openblas_coretype": label,
                    "solvers_commit": SOLVERS,
                    "problems_commit": PROBLEMS,
                    "problems": 200,
                    "answers_optimal": len(optimal),
                    "wrong": sum(r["wrong"] == "True" for r in optimal),
                    "refused": sum(r["status"] == "refused" for r in rows),
                }
            )
            answers += [{"openblas_coretype": label, **r} for r in rows]
    answers = pd.DataFrame(answers)
    for c in ("value", "reference"):
        answers[c] = pd.to_numeric(answers[c])
    write_csv(answers, HERE / "answers.csv")
    write_csv(pd.DataFrame(summary), HERE / "summary.csv")
    print((HERE / "summary.csv").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
