"""experiments/wdpo_fd/run.py, seed 0 only: the committed fd_accuracy.csv is what the script
computes (float32 columns to float32 rounding), and the orderings the docs rest on hold: a
float32 finite difference is second-order accurate, float32 passes under bf16 beat bf16 double
backward by far, and for bf16 passes eps = 1e-2 beats both 1e-3 (rounding) and 3e-2
(truncation). Runs in a subprocess: the script builds a bf16 ``accelerate`` Accelerator, whose
process-wide state would clash with other tests' float32 ones."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments/wdpo_fd/run.py"


@pytest.mark.slow
def test_fd_accuracy_seed0_reproduces_and_orders(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(SCRIPT), "--seeds", "1", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=600)
    new = pd.read_csv(tmp_path / "fd_accuracy.csv").set_index("config")
    old = pd.read_csv(SCRIPT.parent / "fd_accuracy.csv")
    old = old[old["seed"] == 0].set_index("config")
    assert list(new.index) == list(old.index)
    for col in ("penalty_norm", "dpo_grad_norm", "penalty", "penalty_share"):  # float32 only
        assert new[col].to_numpy() == pytest.approx(old[col].to_numpy(), rel=1e-4)
    f32 = "float32 fd eps=1e-3"
    assert new.loc[f32, "rel_error"] == pytest.approx(old.loc[f32, "rel_error"], rel=0.1)
    err = new["rel_error"]
    assert err[f32] < 1e-3
    assert err["bf16 fd float32 eps=1e-3"] < 0.1 * err["bf16 double-backward"]
    mid = err["bf16 fd autocast eps=1e-2"]
    assert mid < 0.5 * err["bf16 fd autocast eps=1e-3"]
    assert mid < 0.5 * err["bf16 fd autocast eps=3e-2"]
    # the whole bf16 gradient is off by about the bf16 DPO gradient's own error
    floor = new.loc["bf16 dpo", "rel_error_total"]
    assert 0 < floor <= new["rel_error_total"].max() < 3 * floor
