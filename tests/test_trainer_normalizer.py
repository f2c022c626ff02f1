"""TrainConfig(robust_normalizer="running") (rdpo_theory.torch.normalizers in the trainer)."""

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from rdpo_theory import InputError  # noqa: E402
from rdpo_theory.torch.emotion import EmotionConfig, build_model, build_tokenizer  # noqa: E402
from rdpo_theory.torch.train import TrainConfig, read_metrics, train_preference  # noqa: E402

CFG = EmotionConfig.smoke()
ROWS = [
    {"prompt": "the day", "chosen": " rage mad hate", "rejected": " afraid hide"},
    {"prompt": "a river and of", "chosen": " fury", "rejected": " panic dread worry the"},
    {"prompt": "we", "chosen": " angry slam door", "rejected": " scared"},
    {"prompt": "they walk", "chosen": " livid snarl", "rejected": " tremble nervous"},
] * 4
KL = dict(method="kldpo", loss_kwargs={"tau": 0.5})
W = dict(method="wdpo", loss_kwargs={"rho0": 0.05})


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _cfg(out=None, **kw):
    base = dict(
        beta=0.5,
        learning_rate=5e-3,
        batch_size=4,
        max_steps=3,
        mixed_precision="no",
        progress=False,
        seed=3,
        output_dir=out,
        save_final_model=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def _train(tok, cfg):
    return train_preference(build_model(CFG, 0), tok, ROWS, cfg, ref_model=build_model(CFG, 0))


@pytest.mark.parametrize("kw", [KL, W], ids=["kldpo", "wdpo"])
def test_running_with_decay_one_is_the_micro_batch_normalizer(tok, kw):
    a = _train(tok, _cfg(**kw))
    b = _train(tok, _cfg(robust_normalizer="running", robust_decay=1.0, **kw))
    # the running path forms the weights in float64, the micro-batch path in float32: equal up
    # to float32 rounding, which Adam's normalisation amplifies on near-zero gradient entries
    # (3 steps of size 5e-3)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, atol=5e-5, rtol=1e-3)


def test_running_resume_reproduces_the_uninterrupted_run(tok, tmp_path):
    kw = dict(robust_normalizer="running", robust_decay=0.3, **KL)
    full = _train(tok, _cfg(tmp_path / "a", max_steps=4, **kw))
    _train(tok, _cfg(tmp_path / "b", max_steps=2, save_every=2, **kw))
    saved = json.loads(
        (tmp_path / "b" / "checkpoints" / "step-2" / "trainer_state.json").read_text()
    )
    assert saved["running"]["normalizer"]["steps"] == 2
    res = train_preference(
        build_model(CFG, 9),
        tok,
        ROWS,
        _cfg(tmp_path / "b", max_steps=4, resume=True, **kw),
        ref_model=build_model(CFG, 0),
    )
    for pa, pb in zip(full.model.parameters(), res.model.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)
    ma, mb = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [m["normalizer"] for m in ma] == pytest.approx([m["normalizer"] for m in mb], rel=1e-6)
    assert {"ess", "weight_max", "normalizer"} <= set(ma[-1])


def test_trainer_normalizer_validation():
    with pytest.raises(InputError, match="robust_normalizer"):
        TrainConfig(method="kldpo", loss_kwargs={"tau": 1.0}, robust_normalizer="global")
    with pytest.raises(InputError, match="running"):
        TrainConfig(method="dpo", robust_normalizer="running")
    with pytest.raises(InputError, match="running"):
        TrainConfig(
            method="kldpo",
            loss_kwargs={"tau": 1.0, "variant": "clipped"},
            robust_normalizer="running",
        )
    with pytest.raises(InputError, match="decay"):
        TrainConfig(
            method="kldpo", loss_kwargs={"tau": 1.0}, robust_normalizer="running", robust_decay=0.0
        )
