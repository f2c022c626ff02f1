"""Weighted and grouped preference rows through the accelerate trainer (tiny GPT-2): weighted
rows train like repeated rows, group-robust DPO's group weights survive resume, bad rows are
named."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from rdpo_theory import InputError  # noqa: E402
from rdpo_theory.studies.emotion import EmotionConfig, build_model, build_tokenizer  # noqa: E402
from rdpo_theory.torch.train import TrainConfig, train_preference  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = EmotionConfig.smoke()
BASE = [
    {"prompt": "the day", "chosen": " rage mad hate", "rejected": " afraid hide", "group": "a"},
    {"prompt": "a river and of", "chosen": " fury", "rejected": " panic dread", "group": "b"},
    {"prompt": "we", "chosen": " angry slam door", "rejected": " scared", "group": "a"},
    {"prompt": "they walk", "chosen": " livid snarl", "rejected": " tremble nervous", "group": "c"},
]
COUNTS = [2, 1, 3, 1]


def _m(seed):
    """float64: Adam's near-sign first steps would amplify float32 summation-order noise."""
    return build_model(CFG, seed).double()


def _cfg(**kw):
    base = dict(
        beta=0.5,
        learning_rate=5e-3,
        max_steps=3,
        mixed_precision="no",
        progress=False,
        seed=3,
        max_grad_norm=None,
        # weighted rows always train with the per-batch normaliser ("auto" picks it for them);
        # the repeated rows they are compared with must use the same one
        robust_normalizer="batch",
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize(
    "method,kw",
    [
        ("dpo", {}),
        ("kldpo", {"tau": 0.5}),
        ("wdpo", {"rho0": 0.5}),
        ("chi2dpo", {"rho": 0.3}),
        ("group_dpo", {"group_step": 1.0}),
    ],
)
def test_weighted_rows_train_like_repeated_rows(tok, method, kw):
    """Full-batch steps (float64): rows with weights (2, 1, 3, 1) give the run of the 7 repeated
    rows."""
    weighted = [dict(r, weight=float(c)) for r, c in zip(BASE, COUNTS)]
    repeated = [r for r, c in zip(BASE, COUNTS) for _ in range(c)]
    runs = []
    for rows in (weighted, repeated):
        cfg = _cfg(method=method, loss_kwargs=kw, batch_size=len(rows))
        runs.append(train_preference(_m(0), tok, rows, cfg, ref_model=_m(0)))
    a, b = runs
    for ma, mb in zip(a.metrics, b.metrics):
        assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-6)  # metrics are float32
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-9, rtol=1e-7)
    if method == "group_dpo":
        assert a.group_weights.keys() == {"a", "b", "c"}
        for g in "abc":
            assert a.group_weights[g] == pytest.approx(b.group_weights[g], rel=1e-10)


def test_group_weights_survive_resume(tok, tmp_path):
    rows = BASE * 2
    kw = dict(method="group_dpo", loss_kwargs={"group_step": 2.0}, batch_size=4)
    full = train_preference(
        build_model(CFG, 0),
        tok,
        rows,
        _cfg(max_steps=4, output_dir=tmp_path / "a", **kw),
        ref_model=build_model(CFG, 0),
    )
    train_preference(
        build_model(CFG, 0),
        tok,
        rows,
        _cfg(max_steps=2, output_dir=tmp_path / "b", **kw),
        ref_model=build_model(CFG, 0),
    )
    state = json.loads(
        (tmp_path / "b" / "checkpoints" / "step-2" / "trainer_state.json").read_text()
    )
    run = state["running"]
    assert run["group_labels"] == ["a", "b", "c"] and len(run["group_weights"]) == 3
    assert not np.allclose(run["group_weights"], 1 / 3)  # they moved
    resumed = train_preference(
        build_model(CFG, 0),  # the start weights (checked); trained ones from step-2
        tok,
        rows,
        _cfg(max_steps=4, output_dir=tmp_path / "b", resume=True, **kw),
        ref_model=build_model(CFG, 0),
    )
    for g in "abc":
        assert resumed.group_weights[g] == pytest.approx(full.group_weights[g], rel=1e-9)
    for pa, pb in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)
    other = [dict(r, group="z" if r["group"] == "c" else r["group"]) for r in rows]
    with pytest.raises(InputError, match="data_sha256"):  # the run record refuses first
        train_preference(
            build_model(CFG, 0),
            tok,
            other,
            _cfg(max_steps=4, output_dir=tmp_path / "b", resume=True, **kw),
            ref_model=build_model(CFG, 0),
        )


def test_bad_rows_are_named(tok):
    cfg = _cfg(batch_size=2, max_steps=1)
    cases = [
        ([dict(BASE[0], weight=1.0), dict(BASE[1], weight=-2.0)], "row 1: weight must be >= 0"),
        ([dict(BASE[0], weight=float("nan")), dict(BASE[1], weight=1)], "row 0: weight must be a"),
        ([dict(BASE[0], weight=1.0), {k: v for k, v in BASE[1].items()}], "row 1 has no 'weight'"),
        ([dict(BASE[0], group=""), BASE[1]], "row 0: group must be a non-empty string"),
        ([dict(BASE[0], weight=0.0), dict(BASE[1], weight=0.0)], "every weight is 0"),
    ]
    for rows, msg in cases:
        with pytest.raises(InputError, match=msg):
            train_preference(build_model(CFG, 0), tok, rows, cfg)
    plain = [{k: v for k, v in r.items() if k != "group"} for r in BASE]
    with pytest.raises(InputError, match="needs a 'group'"):
        train_preference(
            build_model(CFG, 0),
            tok,
            plain,
            _cfg(method="group_dpo", loss_kwargs={"group_step": 0.1}, batch_size=2),
        )
    with pytest.raises(InputError, match="group_step"):
        _cfg(method="group_dpo")
    with pytest.raises(InputError, match="groups"):
        _cfg(method="group_dpo", loss_kwargs={"group_step": 0.1, "groups": [0]})


@pytest.mark.parametrize("variant", ["sqrt-mean", "per-pair"])
def test_weighted_wdpo_finite_difference_equals_double_backward(tok, variant):
    """The finite-difference WDPO path honours weights: float64 gradient of the weighted
    objective equals the double-backward one to O(h^2) (a zero-weight pair included)."""
    from rdpo_theory.torch.lm import encode_pairs
    from rdpo_theory.torch.train import loss_and_backward

    b = encode_pairs(
        tok,
        [r["prompt"] for r in BASE],
        [r["chosen"] for r in BASE],
        [r["rejected"] for r in BASE],
    )
    extra = {"weights": torch.tensor([2.0, 0.0, 1.0, 0.5], dtype=torch.float64)}
    grads, losses = [], []
    for hvp in ("double-backward", "finite-difference"):
        cfg = TrainConfig(
            method="wdpo",
            beta=0.5,
            loss_kwargs={"rho0": 0.5, "variant": variant},
            wdpo_hvp=hvp,
            wdpo_fd_eps=1e-4,
        )
        model, ref = _m(0), _m(1).requires_grad_(False)
        out = loss_and_backward(cfg, model, ref, b, extra=extra)
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        losses.append(float(out.loss.detach()))
    assert losses[1] == pytest.approx(losses[0], rel=1e-12)
    assert float((grads[1] - grads[0]).norm() / grads[0].norm()) < 1e-6


def test_trl_weight_column_equals_repeated_rows(tok, tmp_path):
    """RobustDPOTrainer honours a dataset weight column: one full-batch step on weighted rows
    equals one on the repeated rows (float64 model), for DPO and KLDPO."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import DPOConfig

    from rdpo_theory.torch.trl import RobustDPOTrainer

    plain = [{k: v for k, v in r.items() if k != "group"} for r in BASE]
    weighted = Dataset.from_list([dict(r, weight=float(c)) for r, c in zip(plain, COUNTS)])
    repeated = Dataset.from_list([r for r, c in zip(plain, COUNTS) for _ in range(c)])
    for method, kw in (("dpo", {}), ("kldpo", {"tau": 0.5})):
        params = []
        for name, ds in (("w", weighted), ("r", repeated)):
            args = DPOConfig(
                output_dir=str(tmp_path / f"{method}-{name}"),
                per_device_train_batch_size=len(ds),
                max_steps=1,
                learning_rate=1.0,
                optim="sgd",  # the step is lr * gradient: Adam's 1/sqrt(v) would amplify
                # float32 rounding of TRL's fused head on near-zero gradient entries
                report_to=[],
                beta=0.5,
                save_strategy="no",
                use_cpu=True,
                bf16=False,
                gradient_checkpointing=False,
                max_grad_norm=0.0,
            )
            tr = RobustDPOTrainer(
                model=_m(0),
                ref_model=_m(0),
                args=args,
                train_dataset=ds,
                processing_class=tok,
                robust_method=method,
                robust_kwargs=kw,
            )
            tr.train()
            params.append(torch.cat([p.detach().reshape(-1) for p in tr.model.parameters()]))
        # TRL's fused LM head computes the log-probs in float32: gradients agree to ~1e-7
        torch.testing.assert_close(params[0], params[1], atol=2e-6, rtol=0)
        moved = (params[0] - _flat(_m(0))).abs().max()
        assert moved > 1e-3  # it trained, by far more than the tolerance
    bad = Dataset.from_list([dict(r, weight=-1.0) for r in plain])
    with pytest.raises(InputError, match="row 0: weight"):
        RobustDPOTrainer(
            model=_m(0),
            ref_model=_m(0),
            args=DPOConfig(output_dir=str(tmp_path / "x"), report_to=[], use_cpu=True, bf16=False),
            train_dataset=bad,
            processing_class=tok,
        )


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_rdpo_llm_cover_groups_and_group_dpo(tok, tmp_path, capsys):
    from rdpo_theory.cli import main

    model_dir = tmp_path / "tiny"
    build_model(CFG, 0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    ds = tmp_path / "pairs.jsonl"
    rows = [dict(r, weight=1.0) for r in BASE * 2]  # groups a: 4 rows, b: 2, c: 2 -> 0.25
    ds.write_text("\n".join(json.dumps(r) for r in rows))
    args = ["llm", "--model", str(model_dir), "--dataset", str(ds), "--out", str(tmp_path / "o")]
    args += ["--methods", "chi2dpo", "cvardpo", "group_dpo", "--cover-groups", "--steps", "1"]
    args += ["--batch-size", "2", "--eval-fraction", "0", "--group-step", "0.5"]
    assert main(args) == 0
    assert "smallest group share 0.25" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "o" / "chi2dpo" / "config.json").read_text())
    assert cfg["loss_kwargs"] == {"rho": pytest.approx(1.5)}  # (1 - 0.25) / (2 * 0.25)
    cfg = json.loads((tmp_path / "o" / "cvardpo" / "config.json").read_text())
    assert cfg["loss_kwargs"] == {"level": pytest.approx(0.25)}
    state = json.loads(
        (tmp_path / "o" / "group_dpo" / "checkpoints" / "step-1" / "trainer_state.json").read_text()
    )
    assert state["running"]["group_labels"] == ["a", "b", "c"]


def _ddp_worker(rank, world, port, path, method, kw):
    """One of two gloo workers running train_preference under accelerate (MULTI_CPU)."""
    from ddp_workers import accelerate_env

    accelerate_env(rank, world, port)
    from accelerate import Accelerator

    acc = Accelerator(cpu=True, mixed_precision="no")
    rows = [dict(r, weight=float(c)) for r, c in zip(BASE, COUNTS)] * 2
    cfg = _cfg(method=method, loss_kwargs=kw, batch_size=2)
    res = train_preference(_m(0), build_tokenizer(), rows, cfg, ref_model=_m(0), accelerator=acc)
    torch.save(
        {"params": _flat(res.model), "alpha": res.group_weights}, f"{path}/{method}-{rank}.pt"
    )
    acc.wait_for_everyone()


@pytest.mark.parametrize(
    "method,kw",
    [
        ("dpo", {}),
        # the same DDP path with group weights: two worker processes (~10 s CPU), in the slow set
        pytest.param("group_dpo", {"group_step": 1.0}, marks=pytest.mark.slow),
    ],
)
def test_trainer_two_gloo_workers_equal_one_worker(tok, tmp_path, method, kw):
    """Weighted rows through the trainer under DDP: 2 gloo workers with micro-batches of 2
    train the model one worker trains with micro-batches of 4 (same global batches), and both
    workers hold the one-worker group weights."""
    from ddp_workers import spawn

    spawn(_ddp_worker, 2, str(tmp_path), method, kw)
    rows = [dict(r, weight=float(c)) for r, c in zip(BASE, COUNTS)] * 2
    one = train_preference(
        _m(0), tok, rows, _cfg(method=method, loss_kwargs=kw, batch_size=4), ref_model=_m(0)
    )
    for rank in range(2):
        got = torch.load(tmp_path / f"{method}-{rank}.pt", weights_only=False)
        torch.testing.assert_close(got["params"], _flat(one.model), atol=1e-9, rtol=1e-7)
        if method == "group_dpo":
            for g in "abc":
                assert got["alpha"][g] == pytest.approx(one.group_weights[g], rel=1e-10)
