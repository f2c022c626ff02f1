"""Sequence log-probs, the accelerate trainer, checkpoints and the TRL subclass (tiny models)."""

import copy
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("one_thread"),
]  # language-model tests (minutes)

from rdpo_theory import InputError  # noqa: E402
from rdpo_theory.studies.emotion import EmotionConfig, build_model, build_tokenizer  # noqa: E402
from rdpo_theory.torch.lm import encode_pairs, pair_logps, sequence_logps  # noqa: E402
from rdpo_theory.torch.train import (  # noqa: E402
    TrainConfig,
    latest_checkpoint,
    loss_and_backward,
    micro_batch_indices,
    read_metrics,
    train_preference,
)

CFG = EmotionConfig.smoke()


ROWS = [
    {"prompt": "the day", "chosen": " rage mad hate", "rejected": " afraid hide"},
    {"prompt": "a river and of", "chosen": " fury", "rejected": " panic dread worry the"},
    {"prompt": "we", "chosen": " angry slam door", "rejected": " scared"},
    {"prompt": "they walk", "chosen": " livid snarl", "rejected": " tremble nervous"},
] * 4


def _model(seed=0):
    return build_model(CFG, seed)


def _manual_logp(model, ids_prompt, ids_comp):
    """log p(completion | prompt) by an explicit token-by-token sum on the unpadded row."""
    ids = torch.tensor([ids_prompt + ids_comp])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return sum(float(lp[t - 1, ids[0, t]]) for t in range(len(ids_prompt), ids.shape[1]))


def test_sequence_logps_prompt_masking_and_padding(tok):
    model = _model().eval()
    b = encode_pairs(
        tok,
        [r["prompt"] for r in ROWS[:4]],
        [r["chosen"] for r in ROWS[:4]],
        [r["rejected"] for r in ROWS[:4]],
    )
    assert b["input_ids"].shape[0] == 8 and (b["attention_mask"] == 0).any()  # padding present
    with torch.no_grad():
        pc, pr, _ = pair_logps(model, b)
    for i, r in enumerate(ROWS[:4]):
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        for comp, got in ((r["chosen"], pc[i]), (r["rejected"], pr[i])):
            c = tok(comp, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            assert float(got) == pytest.approx(_manual_logp(model, p, c), abs=1e-4)


def test_left_padding_equals_right_padding(tok):
    model = _model().eval()
    b = encode_pairs(tok, ["the day", "we"], [" rage", " fury mad"], [" afraid", " hide"])
    ids, att, cm = b["input_ids"], b["attention_mask"], b["completion_mask"]
    # shift every row to the right end (left padding)
    L_ids, L_att, L_cm = (torch.zeros_like(t) for t in (ids, att, cm))
    for r in range(ids.shape[0]):
        n = int(att[r].sum())
        L_ids[r, -n:], L_att[r, -n:], L_cm[r, -n:] = ids[r, :n], 1, cm[r, :n]
    with torch.no_grad():
        right = sequence_logps(model, ids, att, cm)
        left = sequence_logps(model, L_ids, L_att, L_cm)
    np.testing.assert_allclose(left.numpy(), right.numpy(), atol=1e-5)


def test_inputs_embeds_path_equals_ids_path(tok):
    model = _model().eval()
    b = encode_pairs(tok, ["the day", "we"], [" rage", " fury mad"], [" afraid", " hide"])
    pc, pr, emb = pair_logps(model, b, with_embeddings=True)
    with torch.no_grad():
        pc2, pr2, none = pair_logps(model, b)
    assert none is None and emb[0].requires_grad and emb[0].shape[0] == 2
    np.testing.assert_allclose(pc.detach().numpy(), pc2.numpy(), atol=1e-5)
    np.testing.assert_allclose(pr.detach().numpy(), pr2.numpy(), atol=1e-5)


def test_encode_pairs_truncation_and_errors(tok):
    b = encode_pairs(tok, ["the a and of to in"], [" rage mad"], [" afraid"], max_length=5)
    assert b["input_ids"].shape[1] <= 5
    assert int(b["completion_mask"][0].sum()) == 3  # completion kept whole: 2 words + eos
    with pytest.raises(InputError, match="equal lengths"):
        encode_pairs(tok, ["a"], [" b", " c"], [" d"])
    with pytest.raises(InputError, match="empty"):
        encode_pairs(tok, [], [], [])


def _cfg(tmp_path=None, **kw):
    base = dict(
        method="dpo",
        beta=0.5,
        learning_rate=5e-3,
        batch_size=4,
        max_steps=6,
        mixed_precision="no",
        progress=False,
        seed=3,
        output_dir=None if tmp_path is None else tmp_path,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize(
    "method,kw",
    [
        ("dpo", {}),
        ("kldpo", {"tau": 0.5}),
        ("wdpo", {"rho0": 0.5}),
        ("wdpo", {"rho0": 0.5, "variant": "per-pair"}),
        ("chi2dpo", {"rho": 0.5}),  # accepted by TrainConfig, so it must run (issue 10)
        ("cvardpo", {"level": 0.5}),
    ],
)
def test_training_increases_margins_and_logs(tok, method, kw):
    model, ref = _model(), _model()
    res = train_preference(model, tok, ROWS, _cfg(method=method, loss_kwargs=kw), ref_model=ref)
    assert len(res.metrics) == 6
    first, last = res.metrics[0], res.metrics[-1]
    assert first["margin_mean"] == pytest.approx(0.0, abs=1e-5)  # policy starts at the reference
    assert last["margin_mean"] > 0.05 and last["loss"] < first["loss"]
    if method == "kldpo":
        assert 0 < last["weight_max"] <= 1 and last["weight_entropy"] <= np.log(4) + 1e-6
    if method == "wdpo":
        assert last["penalty"] > 0 and last["grad_rms"] > 0
    for p in ref.parameters():  # the reference stays frozen
        assert not p.requires_grad


def test_gradient_accumulation_equals_large_batch(tok):
    """DPO's mean loss is linear: 2 micro-batches of 4 == one batch of 8 (same data order)."""
    a, b = _model(), _model()
    ra = train_preference(
        a, tok, ROWS, _cfg(batch_size=8, max_steps=2, max_grad_norm=None), ref_model=_model()
    )
    rb = train_preference(
        b,
        tok,
        ROWS,
        _cfg(batch_size=4, grad_accum=2, max_steps=2, max_grad_norm=None),
        ref_model=_model(),
    )
    for ma, mb in zip(ra.metrics, rb.metrics):
        assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-5)
    # Adam's near-sign first steps amplify float noise in tiny gradients: 1e-4 is 2% of a step
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-4, rtol=1e-3)


def _param_grad(cfg, batch, dtype=torch.float64):
    """Flat parameter gradient of one micro-batch (policy seed 0, reference seed 1)."""
    model, ref = _model().to(dtype), _model(seed=1).to(dtype).requires_grad_(False)
    out = loss_and_backward(cfg, model, ref, batch)
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]), out


@pytest.mark.parametrize("variant", ["sqrt-mean", "per-pair"])
def test_wdpo_finite_difference_gradient_equals_double_backward(tok, variant):
    """Float64: the central-difference penalty gradient is the double-backward one up to
    O(h^2). Measured relative error of the penalty part ~1.04 eps^2 (1e-8 at eps = 1e-4;
    rounding ~1e-16 / 1e-4 is negligible), so 1e-6 leaves two orders of margin; the error
    drops ~100x from eps = 1e-3 to 1e-4, which checks second order."""
    b = encode_pairs(
        tok,
        [r["prompt"] for r in ROWS[:4]],
        [r["chosen"] for r in ROWS[:4]],
        [r["rejected"] for r in ROWS[:4]],
    )
    kw = {"rho0": 0.5, "variant": variant}
    g_dpo, _ = _param_grad(TrainConfig(method="dpo", beta=0.5), b)
    g_db, out_db = _param_grad(TrainConfig(method="wdpo", beta=0.5, loss_kwargs=kw), b)
    pen_db = g_db - g_dpo
    assert pen_db.norm() > 1e-3 * g_dpo.norm()  # the penalty gradient is not negligible
    errs = []
    for eps in (1e-3, 1e-4):
        cfg = TrainConfig(
            method="wdpo", beta=0.5, loss_kwargs=kw, wdpo_hvp="finite-difference", wdpo_fd_eps=eps
        )
        g_fd, out_fd = _param_grad(cfg, b)
        errs.append(float((g_fd - g_dpo - pen_db).norm() / pen_db.norm()))
        assert float(out_fd.loss) == pytest.approx(float(out_db.loss.detach()), rel=1e-12)
        assert float(out_fd.stats["penalty"]) == pytest.approx(
            float(out_db.stats["penalty"]), rel=1e-10
        )
        assert float(out_fd.stats["fd_step"]) > 0
    assert errs[1] < 1e-6
    assert 30 < errs[0] / errs[1] < 300


def test_wdpo_finite_difference_rho0_zero_is_dpo(tok):
    b = encode_pairs(tok, ["the day", "we"], [" rage", " fury mad"], [" afraid", " hide"])
    g_dpo, _ = _param_grad(TrainConfig(method="dpo", beta=0.5), b)
    cfg = TrainConfig(
        method="wdpo", beta=0.5, loss_kwargs={"rho0": 0.0}, wdpo_hvp="finite-difference"
    )
    g_fd, out = _param_grad(cfg, b)
    torch.testing.assert_close(g_fd, g_dpo, rtol=1e-12, atol=1e-14)
    assert float(out.stats["fd_step"]) == 0.0


def test_wdpo_finite_difference_through_trainer(tok):
    """Float32 training with the finite-difference option tracks double backward: the first
    step (same parameters) has the same loss and, to float32 finite-difference accuracy
    (~1e-4 on the penalty part, measured 3e-5 on the total), the same gradient norm; Adam's
    near-sign first updates amplify that into ~lr-sized parameter differences, so later losses
    agree to 1e-3."""
    kw = {"rho0": 0.5}
    runs = []
    for hvp in ("double-backward", "finite-difference"):
        # "batch" pinned: "auto" picks running for double backward only
        cfg = _cfg(
            method="wdpo", loss_kwargs=kw, max_steps=2, wdpo_hvp=hvp, robust_normalizer="batch"
        )
        runs.append(train_preference(_model(), tok, ROWS, cfg, ref_model=_model()).metrics)
    (a1, a2), (b1, b2) = runs
    assert b1["loss"] == pytest.approx(a1["loss"], rel=1e-6)
    assert b1["penalty"] == pytest.approx(a1["penalty"], rel=1e-6)
    assert b1["grad_norm"] == pytest.approx(a1["grad_norm"], rel=1e-4)
    assert b2["loss"] == pytest.approx(a2["loss"], rel=1e-3)
    assert b1["fd_step"] > 0 and "fd_step" not in a1


def test_checkpoint_resume_is_exact(tok, tmp_path):
    full = _model()
    train_preference(
        full, tok, ROWS, _cfg(tmp_path / "a", max_steps=4, warmup_steps=2), ref_model=_model()
    )
    part = _model()
    train_preference(
        part, tok, ROWS, _cfg(tmp_path / "b", max_steps=2, warmup_steps=2), ref_model=_model()
    )
    assert latest_checkpoint(tmp_path / "b").name == "step-2"
    resumed = _model()  # the start weights (checked); load_state must load the trained ones
    res = train_preference(
        resumed,
        tok,
        ROWS,
        _cfg(tmp_path / "b", max_steps=4, warmup_steps=2, resume=True),
        ref_model=_model(),
    )
    assert res.steps == 4 and [m["step"] for m in read_metrics(tmp_path / "b")] == [1, 2, 3, 4]
    for pa, pb in zip(full.parameters(), res.model.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["method"] == "dpo"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    back = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "final")
    AutoTokenizer.from_pretrained(tmp_path / "b" / "final")
    for pa, pb in zip(back.parameters(), res.model.parameters()):
        torch.testing.assert_close(pa, pb)


def test_micro_batches_are_seeded_permutations():
    a = micro_batch_indices(10, 4, 0, seed=1)
    b = micro_batch_indices(10, 4, 1, seed=1)
    assert len(set(a) | set(b)) == 8  # no repeats within an epoch
    np.testing.assert_array_equal(a, micro_batch_indices(10, 4, 0, seed=1))
    with pytest.raises(InputError, match="fewer than one"):
        micro_batch_indices(3, 4, 0, seed=1)


def test_baseline_method_through_trainer(tok):
    res = train_preference(
        _model(),
        tok,
        ROWS,
        _cfg(method="cdpo", loss_kwargs={"eps": 0.1}, max_steps=2),
        ref_model=_model(),
    )
    assert len(res.metrics) == 2


def test_bad_configs():
    with pytest.raises(InputError, match="method"):
        TrainConfig(method="ppo")
    with pytest.raises(InputError, match="rho0"):
        TrainConfig(method="wdpo")
    with pytest.raises(InputError, match="tau"):
        TrainConfig(method="kldpo")
    with pytest.raises(InputError, match="unknown keyword 'tau'"):
        TrainConfig(method="dpo", loss_kwargs={"tau": 1.0})
    with pytest.raises(InputError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(InputError, match="beta"):
        TrainConfig(beta=-1)
    wd = dict(method="wdpo", loss_kwargs={"rho0": 0.1})
    with pytest.raises(InputError, match="wdpo_hvp"):
        TrainConfig(**wd, wdpo_hvp="hessian")
    with pytest.raises(InputError, match="wdpo_hvp"):
        TrainConfig(method="dpo", wdpo_hvp="finite-difference")
    with pytest.raises(InputError, match="fp16"):
        TrainConfig(**wd, wdpo_hvp="finite-difference", mixed_precision="fp16")
    with pytest.raises(InputError, match="wdpo_fd_eps"):
        TrainConfig(**wd, wdpo_hvp="finite-difference", wdpo_fd_eps=0.0)
    with pytest.raises(InputError, match="wdpo_fd_precision"):
        TrainConfig(**wd, wdpo_hvp="finite-difference", wdpo_fd_precision="bf16")
    with pytest.raises(InputError, match="tau"):
        train_preference(
            _model(),
            build_tokenizer(),
            ROWS,
            _cfg(method="kldpo", loss_kwargs={"tau": 0.0}),
            ref_model=_model(),
        )
    with pytest.raises(InputError, match="chosen"):
        train_preference(_model(), build_tokenizer(), [{"prompt": "a"}], _cfg())


def test_trl_subclass(tok, tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import DPOConfig

    from rdpo_theory.torch.trl import RobustDPOTrainer

    ds = Dataset.from_list(ROWS)
    base = _model()
    for method, kw in [("kldpo", {"tau": 0.5}), ("wdpo", {"rho0": 0.5})]:
        args = DPOConfig(
            output_dir=str(tmp_path / method),
            per_device_train_batch_size=4,
            max_steps=3,
            learning_rate=5e-3,
            report_to=[],
            logging_steps=1,
            beta=0.5,
            save_strategy="no",
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
        )
        tr = RobustDPOTrainer(
            model=copy.deepcopy(base),
            ref_model=copy.deepcopy(base),
            args=args,
            train_dataset=ds,
            processing_class=tok,
            robust_method=method,
            robust_kwargs=kw,
        )
        tr.train()
        logs = [h for h in tr.state.log_history if "loss" in h]
        assert len(logs) == 3
        assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
        assert logs[-1]["rewards/margins"] > 0
        key = "robust/weight_entropy" if method == "kldpo" else "robust/penalty"
        assert logs[-1][key] > 0
    with pytest.raises(InputError, match="gradient_checkpointing"):
        RobustDPOTrainer(
            model=copy.deepcopy(base),
            ref_model=base,
            args=DPOConfig(
                output_dir=str(tmp_path / "x"),
                gradient_checkpointing=True,
                report_to=[],
                use_cpu=True,
                bf16=False,
            ),
            train_dataset=ds,
            processing_class=tok,
            robust_method="wdpo",
            robust_kwargs={"rho0": 1.0},
        )
