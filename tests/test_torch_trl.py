"""RobustDPOTrainer on TRL 1.16: its losses on TRL's own log-probs equal TRL's losses, and it
runs under precomputed reference log-probs (tiny GPT-2)."""

import copy
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from rdpo_theory import InputError  # noqa: E402
from rdpo_theory.studies.emotion import EmotionConfig, build_model  # noqa: E402
from rdpo_theory.torch.trl import RobustDPOTrainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = [
    {"prompt": "the day", "chosen": " rage mad hate", "rejected": " afraid hide"},
    {"prompt": "a river and of", "chosen": " fury", "rejected": " panic dread worry the"},
    {"prompt": "we", "chosen": " angry slam door", "rejected": " scared"},
    {"prompt": "they walk", "chosen": " livid snarl", "rejected": " tremble nervous"},
] * 2


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=5e-3,
        report_to=[],
        logging_steps=1,
        beta=0.5,
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
    )
    base.update(kw)
    return DPOConfig(**base)


def _pair(tok, tmp_path, robust=None, args=None, policy_seed=0, **kw):
    """A TRL DPOTrainer (robust is None) or a RobustDPOTrainer, on a policy that differs from
    its reference (so the margins are not zero)."""
    policy, ref = (
        build_model(EmotionConfig.smoke(), policy_seed),
        build_model(EmotionConfig.smoke(), 1),
    )
    common = dict(
        model=policy,
        ref_model=ref,
        args=args or _args(tmp_path),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tok,
    )
    if robust is None:
        return DPOTrainer(**common)
    return RobustDPOTrainer(**common, robust_method=robust, **kw)


def _loss(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer.compute_loss(trainer.model, batch)


@pytest.mark.parametrize(
    "opts",
    [{}, {"use_weighting": True}, {"precompute_ref_log_probs": True}],
    ids=["plain", "wpo-weights", "precomputed-ref"],
)
def test_dpo_equals_trl_sigmoid_loss(tok, tmp_path, opts):
    trl_loss = _loss(_pair(tok, tmp_path, args=_args(tmp_path, **opts)))
    ours = _loss(_pair(tok, tmp_path, robust="dpo", args=_args(tmp_path, **opts)))
    assert float(trl_loss) > 0.1
    assert float(ours) == pytest.approx(float(trl_loss), rel=1e-6)
    # the gradients agree too (same graph: TRL's fused forward)
    t1, t2 = (
        _pair(tok, tmp_path, args=_args(tmp_path, **opts)),
        _pair(tok, tmp_path, robust="dpo", args=_args(tmp_path, **opts)),
    )
    grads = []
    for t in (t1, t2):
        _loss(t).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in t.model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_rdpo_with_label_smoothing_equals_trl_robust_loss(tok, tmp_path):
    trl_loss = _loss(
        _pair(tok, tmp_path, args=_args(tmp_path, loss_type=["robust"], label_smoothing=0.2))
    )
    ours = _loss(_pair(tok, tmp_path, robust="rdpo", args=_args(tmp_path, label_smoothing=0.2)))
    assert float(ours) == pytest.approx(float(trl_loss), rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,kw", [("kldpo", {"tau": 0.5}), ("wdpo", {"rho0": 0.5}), ("cdpo", {})]
)
def test_robust_methods_train_with_precomputed_reference(tok, tmp_path, method, kw):
    args = _args(tmp_path, precompute_ref_log_probs=True, max_steps=3, label_smoothing=0.1)
    if method != "cdpo":
        args = _args(tmp_path, precompute_ref_log_probs=True, max_steps=3)
    base = build_model(EmotionConfig.smoke(), 0)
    tr = RobustDPOTrainer(
        model=copy.deepcopy(base),
        args=args,
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tok,
        robust_method=method,
        robust_kwargs=kw,
    )
    assert tr.ref_model is None  # precomputed: no reference model in memory
    tr.train()
    logs = [h for h in tr.state.log_history if "loss" in h]
    assert len(logs) == 3
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert logs[-1]["rewards/margins"] > 0
    if method != "cdpo":
        key = "robust/weight_entropy" if method == "kldpo" else "robust/penalty"
        assert logs[-1][key] > 0


def test_refuses_options_it_cannot_combine(tok, tmp_path):
    bad = [
        (dict(loss_type=["ipo"]), "kldpo", {"tau": 1.0}, "loss_type"),
        (dict(label_smoothing=0.1), "kldpo", {"tau": 1.0}, "label_smoothing"),
        (dict(label_smoothing=0.1), "cdpo", {"eps": 0.2}, "disagrees"),
        (dict(use_weighting=True), "kldpo", {"tau": 1.0}, "use_weighting"),
        (dict(ld_alpha=0.5), "dpo", {}, "ld_alpha"),
        (dict(f_divergence_type="forward_kl"), "dpo", {}, "f_divergence_type"),
        (dict(gradient_checkpointing=True), "wdpo", {"rho0": 1.0}, "gradient_checkpointing"),
    ]
    for opts, method, kw, match in bad:
        with pytest.raises(InputError, match=match):
            _pair(tok, tmp_path, robust=method, args=_args(tmp_path, **opts), robust_kwargs=kw)


# ---------------------------------------------------------------------------- normalisers
def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _robust(tok, args, method, kw, normalizer, **more):
    return RobustDPOTrainer(
        model=build_model(EmotionConfig.smoke(), 0),
        ref_model=build_model(EmotionConfig.smoke(), 1),
        args=args,
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tok,
        robust_method=method,
        robust_kwargs=kw,
        robust_normalizer=normalizer,
        **more,
    )


@pytest.mark.parametrize(
    "method,kw",
    [
        ("kldpo", {"tau": 0.2}),
        pytest.param(
            "kldpo", {"tau": 0.1, "variant": "clipped", "clip": 2.0}, marks=pytest.mark.slow
        ),
        pytest.param("wdpo", {"rho0": 0.05}, marks=pytest.mark.slow),
    ],
    ids=["kldpo", "kldpo-clipped", "wdpo"],
)
def test_accumulated_normalizer_two_by_two_equals_one_by_four(tok, tmp_path, method, kw):
    """robust_normalizer='accumulated' through TRL's gradient accumulation: 2 micro-batches of 2
    per step train like one micro-batch of 4 (the same shuffled rows), 2 steps; the per-micro-
    batch normaliser does not. The step's diagnostics are logged under robust/."""
    runs = {}
    for name, (bs, ga, norm) in {
        "one": (4, 1, "accumulated"),
        "two": (2, 2, "accumulated"),
        "mb": (2, 2, "batch"),
    }.items():
        args = _args(
            tmp_path / name, per_device_train_batch_size=bs, gradient_accumulation_steps=ga
        )
        tr = _robust(tok, args, method, kw, norm)
        tr.train()
        runs[name] = (_flat(tr.model), tr.state.log_history)
    start = _flat(build_model(EmotionConfig.smoke(), 0))
    moved = (runs["one"][0] - start).norm()
    assert moved > 1e-3
    # float32 forward passes over batches padded differently: rounding ~1e-7, amplified by
    # Adam on near-zero gradient entries (2 steps of size 5e-3)
    assert (runs["two"][0] - runs["one"][0]).norm() <= 1e-4 * moved
    assert (runs["mb"][0] - runs["one"][0]).norm() > 1e-2 * moved
    log = [h for h in runs["two"][1] if "loss" in h][0]
    assert "robust/normalizer" in log
    if method == "kldpo":
        assert 1.0 <= log["robust/ess"] <= 4.0


def test_running_normalizer_resumes_from_a_checkpoint(tok, tmp_path):
    """robust_normalizer='running' saves its statistic in each checkpoint folder and
    train(resume_from_checkpoint=...) continues the uninterrupted run."""
    import json

    from rdpo_theory.torch.trl import NORMALIZER_FILE

    kw = dict(robust_decay=0.3)
    opts = dict(max_steps=4, per_device_train_batch_size=2, save_strategy="steps", save_steps=2)
    full = _robust(tok, _args(tmp_path / "a", **opts), "kldpo", {"tau": 0.2}, "running", **kw)
    full.train()
    ckpt = tmp_path / "a" / "checkpoint-2"
    saved = json.loads((ckpt / NORMALIZER_FILE).read_text())
    assert saved["steps"] == 2 and saved["value"] is not None
    resumed = _robust(tok, _args(tmp_path / "a", **opts), "kldpo", {"tau": 0.2}, "running", **kw)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed._running.steps == 4
    assert float(resumed._running.value) == pytest.approx(float(full._running.value), rel=1e-6)
    torch.testing.assert_close(_flat(resumed.model), _flat(full.model), atol=1e-6, rtol=1e-5)


def test_normalizer_options_are_validated(tok, tmp_path):
    with pytest.raises(InputError, match="robust_normalizer"):
        _robust(tok, _args(tmp_path), "kldpo", {"tau": 1.0}, "global")
    with pytest.raises(InputError, match="applies to kldpo and wdpo"):
        _robust(tok, _args(tmp_path), "dpo", {}, "accumulated")
    with pytest.raises(InputError, match="decay"):
        _robust(tok, _args(tmp_path), "kldpo", {"tau": 1.0}, "running", robust_decay=2.0)


def test_default_normalizer_resolves_per_method(tok, tmp_path):
    """RobustDPOTrainer's default robust_normalizer ("auto") is running for KLDPO normalized
    and WDPO sqrt-mean, batch for DPO, clipped KLDPO and weighted rows."""
    kl = _pair(tok, tmp_path, robust="kldpo", robust_kwargs={"tau": 0.5})
    assert kl.robust_normalizer == "running" and kl._running is not None
    assert _pair(tok, tmp_path, robust="wdpo", robust_kwargs={"rho0": 0.1}).robust_normalizer == (
        "running"
    )
    assert _pair(tok, tmp_path, robust="dpo").robust_normalizer == "batch"
    clipped = {"tau": 0.5, "variant": "clipped", "clip": 2.0}
    assert _pair(tok, tmp_path, robust="kldpo", robust_kwargs=clipped).robust_normalizer == "batch"
    weighted = RobustDPOTrainer(
        model=build_model(EmotionConfig.smoke(), 0),
        ref_model=build_model(EmotionConfig.smoke(), 1),
        args=_args(tmp_path),
        train_dataset=Dataset.from_list([dict(r, weight=2.0) for r in ROWS]),
        processing_class=tok,
        robust_method="kldpo",
        robust_kwargs={"tau": 0.5},
    )
    assert weighted.robust_normalizer == "batch" and weighted._running is None


def test_nonfinite_loss_stops_training(tok, tmp_path):
    """A NaN reference makes the training loss NaN: the trainer stops with NonFiniteError
    naming the reference log-probs before any update (TRL alone would go on)."""
    from rdpo_theory.errors import NonFiniteError

    ref = build_model(EmotionConfig.smoke(), 1)
    with torch.no_grad():
        ref.lm_head.weight[0, 0] = float("nan")  # tied to the embeddings: every logit is NaN
    policy = build_model(EmotionConfig.smoke(), 0)
    before = _flat(policy).clone()
    tr = RobustDPOTrainer(
        model=policy,
        ref_model=ref,
        args=_args(tmp_path),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tok,
        robust_method="kldpo",
        robust_kwargs={"tau": 0.5},
    )
    with pytest.raises(NonFiniteError, match="step 1: non-finite reference_chosen_logps"):
        tr.train()
    torch.testing.assert_close(_flat(tr.model), before, atol=0, rtol=0)
