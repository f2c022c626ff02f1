"""The summary tables that the benchmark pages quote (tests/doc_numbers.csv) are what the
benchmark scripts compute from the committed raw tables, and those computations agree with a
hand computation on the raw rows.

* ``experiments/lora_cpu/lora_times_cpu_summary.csv``: ``lm_bench.lora_summary``, the ranges
  of a step's time over full fine-tuning with a reference copy;
* ``benchmarks/exact_solvers_*_summary.csv``: ``exact_solvers.summary``,
  counts of instances, of those slower than the L-BFGS peer, and ranges of passes and ratios.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
LORA = ROOT / "experiments" / "lora_cpu" / "lora_times_cpu.csv"
EXACT = [
    ROOT / "benchmarks" / f"exact_solvers_{name}.csv"
    for name in ("families", "high_dim", "families_dense_check")
]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import exact_solvers

    return exact_solvers


def _summary_path(raw: Path) -> Path:
    return raw.with_name(f"{raw.stem}_summary.csv")


def _assert_same_table(got: pd.DataFrame, path: Path) -> None:
    committed = pd.read_csv(path)
    assert list(got.columns) == list(committed.columns)
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), committed, check_dtype=False, rtol=1e-9, atol=0
    )


def test_lora_ranges_equal_a_hand_computation_on_the_raw_rows(monkeypatch):
    """Each ratio recomputed from ``sec_per_step`` (not the table's own ``time_vs_full``):
    a row's step time over that of full fine-tuning with a copy, same size and method."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import lm_bench

    rows = [r for r in csv.DictReader(open(LORA)) if not r["error"]]
    full = {
        (r["size"], r["method"]): float(r["sec_per_step"])
        for r in rows
        if r["lora_r"] == "0" and r["reference"] == "copy"
    }

    def ratios(lora: bool, reference: str, methods=None) -> list[float]:
        return [
            float(r["sec_per_step"]) / full[r["size"], r["method"]]
            for r in rows
            if (r["lora_r"] != "0") == lora
            and r["reference"] == reference
            and (methods is None or r["method"] in methods)
        ]

    hand = {
        "lora_precomputed": ratios(True, "precomputed"),
        "full_precomputed_dpo_kldpo": ratios(False, "precomputed", ("dpo", "kldpo")),
        "lora_adapters_disabled": ratios(True, "adapters-disabled"),
    }
    # 2 sizes x 3 methods, less GPT-2 355M WDPO (killed); the second range has DPO and KLDPO
    assert [len(v) for v in hand.values()] == [5, 4, 5]
    got = lm_bench.lora_summary(pd.read_csv(LORA)).set_index("quantity")
    for quantity, values in hand.items():
        assert got.loc[quantity, "rows"] == len(values)
        assert got.loc[quantity, "lo"] == pytest.approx(min(values), rel=1e-12)
        assert got.loc[quantity, "hi"] == pytest.approx(max(values), rel=1e-12)
    _assert_same_table(lm_bench.lora_summary(pd.read_csv(LORA)), _summary_path(LORA))


def test_exact_summary_counts_and_ranges(bench):
    """A hand-made table: the slower count ignores rows without a peer, the gap is absolute."""
    df = pd.DataFrame(
        dict(
            problem=["kl", "kl", "w1", "w1", "kl"],
            regime=["interior", "interior", "collapse", "penalty", "collapse"],
            vs_lbfgs=[2.0, 0.5, 0.25, 1.5, float("nan")],
            fast_passes=[30.0, 28.0, 6.0, 24.5, 89.0],
            optimality_gap=[1e-12, -3e-11, 0.0, 2e-13, 4e-16],
            fast_error=[None, None, None, None, None],
        )
    )
    failed = dict(problem="kl", regime=None, fast_error="MemoryError: std::bad_alloc")
    df = pd.concat([df, pd.DataFrame([failed])], ignore_index=True)
    got = bench.summary(df).set_index("group")
    assert list(got.index) == ["all", "kl-collapse", "kl-interior", "w1-collapse", "w1-penalty"]
    assert got.loc["all", ["rows", "failed", "solved", "peer_rows", "slower"]].tolist() == [
        6,
        1,
        5,
        4,
        2,
    ]
    assert got.loc["all", ["vs_lbfgs_min", "vs_lbfgs_max"]].tolist() == [0.25, 2.0]
    assert got.loc["all", ["passes_min", "passes_max"]].tolist() == [6.0, 89.0]
    assert got.loc["all", "optimality_gap_max"] == 3e-11
    assert got.loc["kl-interior", ["rows", "slower", "vs_lbfgs_min"]].tolist() == [2, 1, 0.5]
    kl_collapse = got.loc["kl-collapse", ["rows", "failed", "peer_rows", "slower"]]
    assert kl_collapse.tolist() == [1, 0, 0, 0]


@pytest.mark.parametrize("raw", EXACT, ids=lambda p: p.stem)
def test_committed_exact_summaries_are_computed_from_their_tables(bench, raw):
    df = pd.read_csv(raw)
    got = bench.summary(df)
    _assert_same_table(got, _summary_path(raw))
    # the hand count of the headline: instances where the fast path took longer than L-BFGS
    slower = sum(1 for v in df["fast_s"] / df["lbfgs_s"] if v > 1)
    assert got.set_index("group").loc["all", "slower"] == slower


def test_lm_memory_counts_growth_in_logits_tensors(monkeypatch):
    """``logits_GiB`` is 2 pairs x tokens x 50257 values of 4 bytes (2 under bf16), and the
    committed logits-bound table's ``growth_vs_logits`` is its growth over that size."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import lm_memory

    rows = pd.DataFrame(
        dict(
            pairs=[8, 8],
            tokens=[512, 512],
            precision=["no", "bf16"],
            peak_over_start_GiB=[3.0, 3.0],
        )
    )
    got = lm_memory.logits_share(rows)
    one = 16 * 512 * 50257 * 4 / 2**30  # 1.53 GiB, the figure the one-GPU recipe derives
    assert got["logits_GiB"].tolist() == pytest.approx([one, one / 2], rel=1e-15)
    assert got["growth_vs_logits"].tolist() == pytest.approx([3.0 / one, 6.0 / one], rel=1e-15)
    assert "logits_GiB" not in lm_memory.logits_share(pd.DataFrame(dict(error=["killed"])))
    thin = pd.read_csv(ROOT / "experiments" / "lm_memory_cpu" / "lm_memory_thin.csv")
    assert thin["growth_vs_logits"].to_numpy() == pytest.approx(
        thin["peak_over_start_GiB"].to_numpy() / one, rel=1e-12
    )
