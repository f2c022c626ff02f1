"""The one-GPU script's memory section on a CPU (experiments/gpu/run_gpu.py --smoke): every
(method, log-prob implementation) row of benchmarks/lm_memory.py runs in its own process, and
the old float32 log-softmax, the selective one and the fused linear head give the same loss, so
a GPU session can run ``--sections lora memory`` in one go."""

import importlib.util
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


def _load_run_gpu():
    spec = importlib.util.spec_from_file_location("run_gpu", ROOT / "experiments/gpu/run_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_memory_section_smoke(tmp_path, monkeypatch):
    """Each row is a process that imports torch: the scheduled full mode (RDPO_FULL=1) runs
    every method, an ordinary slow run the double-backward one (WDPO) only."""
    from budget import FULL

    run_gpu = _load_run_gpu()
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import lm_memory

    methods = set(lm_memory.METHODS) if FULL else {"wdpo"}
    monkeypatch.setattr(lm_memory, "METHODS", {m: lm_memory.METHODS[m] for m in methods})
    records = run_gpu.memory_section(True, tmp_path)
    df = pd.read_csv(tmp_path / "lm_memory.csv")
    assert len(records) == len(df) == 3 * len(methods)
    assert "error" not in df
    assert set(df["method"]) == methods
    for method, rows in df.groupby("method"):
        loss = rows.set_index("logprobs")["loss"]
        assert loss["selective"] == pytest.approx(loss["old"], rel=1e-6), method
        assert loss["fused"] == pytest.approx(loss["selective"], rel=1e-6), method
        assert rows.set_index("logprobs")["peak_vs_old"]["old"] == 1.0
        assert (rows["peak_over_start_GiB"] > 0).all()


def test_main_without_cuda_asks_for_smoke(monkeypatch, capsys, tmp_path):
    run_gpu = _load_run_gpu()
    monkeypatch.setattr(run_gpu.torch.cuda, "is_available", lambda: False)
    argv = ["run_gpu.py", "--sections", "lora", "memory", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    assert run_gpu.main() == 2
    assert "--smoke" in capsys.readouterr().err
