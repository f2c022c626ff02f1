"""Trainer guards (issue 16 items 1, 2 and 5): non-finite steps, runs that cannot mix, exact
resume after an interruption, sequences longer than the model's positions."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from rdpo_theory import InputError, NonFiniteError  # noqa: E402
from rdpo_theory.studies.emotion import EmotionConfig, build_model  # noqa: E402
from rdpo_theory.torch import guards, loop  # noqa: E402
from rdpo_theory.torch import train as T  # noqa: E402
from rdpo_theory.torch.losses import dpo_loss, kldpo_loss  # noqa: E402
from rdpo_theory.torch.train import TrainConfig, read_metrics, train_preference  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = EmotionConfig.smoke()
ROWS = [
    {"prompt": "the day", "chosen": " rage mad hate", "rejected": " afraid hide"},
    {"prompt": "a river and of", "chosen": " fury", "rejected": " panic dread worry the"},
    {"prompt": "we", "chosen": " angry slam door", "rejected": " scared"},
    {"prompt": "they walk", "chosen": " livid snarl", "rejected": " tremble nervous"},
] * 4


def _model(seed=0, dropout=0.0):
    m = build_model(CFG, seed)
    if dropout:
        from transformers import GPT2LMHeadModel

        conf = m.config
        conf.resid_pdrop = conf.embd_pdrop = conf.attn_pdrop = dropout
        torch.manual_seed(seed)
        m = GPT2LMHeadModel(conf)
    return m


def _nan_model(seed=1):
    m = _model(seed)
    with torch.no_grad():
        m.lm_head.weight[0, 0] = float("nan")  # tied to the embeddings: every logit is NaN
    return m


def _cfg(out=None, **kw):
    base = dict(
        method="dpo",
        beta=0.5,
        learning_rate=5e-3,
        batch_size=4,
        max_steps=3,
        mixed_precision="no",
        progress=False,
        seed=3,
        output_dir=out,
    )
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------- item 1: non-finite steps
@pytest.mark.parametrize("method,kw", [("dpo", {}), ("kldpo", {"tau": 0.5})])
def test_nan_reference_raises_and_writes_no_model(tok, tmp_path, method, kw):
    """Issue 16 failure 1: NaN reference log-probs used to 'succeed' with NaN losses, 28
    non-finite parameter tensors and a broken final/. Now: a clear error at step 1. (KLDPO
    runs with its default running normaliser, which leaves a NaN batch out of its average.)"""
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = _cfg(tmp_path / "run", method=method, loss_kwargs=kw)
    with pytest.raises(NonFiniteError, match="step 1: non-finite reference_chosen_logps") as e:
        train_preference(model, tok, ROWS, cfg, ref_model=_nan_model())
    assert e.value.step == 1 and e.value.quantity == "reference_chosen_logps"
    assert not (tmp_path / "run" / "final").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()
    for p, q in zip(model.parameters(), before):  # the optimizer never stepped
        torch.testing.assert_close(p.detach(), q)


def _inject_nan_at(monkeypatch, calls: set[int], *, grad_only=False):
    """Make micro-batch calls in ``calls`` (1-based) produce NaN gradients (and a NaN loss
    unless ``grad_only``)."""
    real = T.loss_and_backward
    count = {"n": 0}

    def fake(cfg, model, ref_model, batch, **kwargs):
        out = real(cfg, model, ref_model, batch, **kwargs)
        count["n"] += 1
        if count["n"] in calls:
            p = next(p for p in model.parameters() if p.grad is not None)
            p.grad[(0,) * p.grad.ndim] = float("nan")
            if not grad_only:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(loop, "loss_and_backward", fake)


def test_skip_mode_drops_the_step_and_counts_it(tok, tmp_path, monkeypatch):
    _inject_nan_at(monkeypatch, {2})
    res = train_preference(
        _model(), tok, ROWS, _cfg(tmp_path, on_nonfinite="skip"), ref_model=_model()
    )
    m = res.metrics
    assert [r["skipped"] for r in m] == [0, 1, 0]
    assert [r["skipped_total"] for r in m] == [0, 1, 1]
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
    logged = read_metrics(tmp_path)
    assert logged[1]["loss"] is None  # NaN is written as JSON null
    assert (tmp_path / "final").is_dir()
    state = json.loads((tmp_path / "checkpoints" / "step-3" / T.STATE_FILE).read_text())
    assert state["running"]["skipped_total"] == 1


def test_skipped_step_leaves_weights_unchanged(tok, monkeypatch):
    """A skipped step is a no-op on the weights: 2 steps with step 2 skipped == 1 step."""
    _inject_nan_at(monkeypatch, {2})
    a = train_preference(
        _model(), tok, ROWS, _cfg(max_steps=2, on_nonfinite="skip"), ref_model=_model()
    )
    monkeypatch.undo()
    b = train_preference(_model(), tok, ROWS, _cfg(max_steps=1), ref_model=_model())
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb)


def test_skipped_step_leaves_the_running_normalizer_unchanged(tok, tmp_path, monkeypatch):
    """KLDPO's default ("auto" -> running) folds each micro-batch's log Z into its running
    average during the forward pass; a step whose gradient turns out non-finite and is skipped
    must not keep that update: 2 steps with step 2 skipped leave the statistic of 1 step."""
    kl = dict(method="kldpo", loss_kwargs={"tau": 0.5}, on_nonfinite="skip")
    _inject_nan_at(monkeypatch, {2}, grad_only=True)
    a = train_preference(
        _model(), tok, ROWS, _cfg(tmp_path / "a", max_steps=2, **kl), ref_model=_model()
    )
    monkeypatch.undo()
    b = train_preference(
        _model(), tok, ROWS, _cfg(tmp_path / "b", max_steps=1, **kl), ref_model=_model()
    )
    assert a.robust_normalizer == b.robust_normalizer == "running"
    assert [r["skipped"] for r in a.metrics] == [0, 1]

    def saved(run, step):
        state = json.loads((tmp_path / run / "checkpoints" / step / T.STATE_FILE).read_text())
        return state["running"]["normalizer"]

    assert saved("a", "step-2") == saved("b", "step-1")
    assert saved("b", "step-1")["value"] is not None


def test_nonfinite_gradient_alone_is_caught(tok, monkeypatch):
    _inject_nan_at(monkeypatch, {1}, grad_only=True)
    with pytest.raises(NonFiniteError, match="step 1: non-finite grad_norm .first non-finite"):
        train_preference(_model(), tok, ROWS, _cfg(max_grad_norm=None), ref_model=_model())


def test_grad_accumulation_names_the_micro_batch(tok):
    with pytest.raises(NonFiniteError, match="micro-batch 0"):
        train_preference(_model(), tok, ROWS, _cfg(grad_accum=2), ref_model=_nan_model())


def test_never_saves_nonfinite_parameters():
    with pytest.raises(NonFiniteError, match="refusing to save the final model"):
        guards.check_finite_parameters(_nan_model(), what="save the final model")


def test_losses_propagate_nan_unless_debug(monkeypatch):
    x = torch.zeros(3, dtype=torch.float64)
    bad = torch.tensor([0.0, float("nan"), 0.0], dtype=torch.float64)
    assert torch.isnan(dpo_loss(x, x, bad, x, beta=1.0).loss)  # documented: propagates
    guards.set_debug(True)
    try:
        with pytest.raises(InputError, match="reference_chosen_logps .1 of 3 .* index 1"):
            dpo_loss(x, x, bad, x, beta=1.0)
        with pytest.raises(InputError, match="policy_rejected_logps"):
            kldpo_loss(x, bad, x, x, beta=1.0, tau=1.0)
    finally:
        guards.set_debug(None)
    monkeypatch.setenv("RDPO_DEBUG", "1")
    with pytest.raises(InputError, match="reference_chosen_logps"):
        dpo_loss(x, x, bad, x, beta=1.0)


# ---------------------------------------------------------------- item 2: runs cannot mix
def test_resume_refuses_a_different_run(tok, tmp_path):
    """Issue 16 failure 2: resuming another method's directory used to mix the runs (metrics
    read dpo, dpo, kldpo, kldpo). Now refused, naming each differing field."""
    train_preference(_model(), tok, ROWS, _cfg(tmp_path, max_steps=2), ref_model=_model())
    before = (tmp_path / "metrics.jsonl").read_text()
    other = _cfg(tmp_path, max_steps=4, resume=True, method="kldpo", loss_kwargs={"tau": 1.0})
    with pytest.raises(InputError, match="differs in 3 field") as e:
        train_preference(_model(), tok, ROWS, other, ref_model=_model())
    assert "method: recorded 'dpo', now 'kldpo'" in str(e.value)
    assert "loss_kwargs" in str(e.value)
    # "auto" resolves to batch for DPO and to running for KLDPO: the run block says so
    assert "run.robust_normalizer: recorded 'batch', now 'running'" in str(e.value)
    for change, field in (
        ({"beta": 0.25}, "beta"),
        ({"batch_size": 8}, "batch_size"),
    ):
        with pytest.raises(InputError, match=field):
            cfg = _cfg(tmp_path, max_steps=4, resume=True, **change)
            train_preference(_model(), tok, ROWS, cfg, ref_model=_model())
    with pytest.raises(InputError, match="run.data_sha256"):
        cfg = _cfg(tmp_path, max_steps=4, resume=True)
        train_preference(_model(), tok, ROWS[::-1], cfg, ref_model=_model())
    with pytest.raises(InputError, match="run.model.config_sha256"):
        cfg = _cfg(tmp_path, max_steps=4, resume=True)
        train_preference(_model(dropout=0.1), tok, ROWS, cfg, ref_model=_model())
    assert (tmp_path / "metrics.jsonl").read_text() == before  # nothing was touched
    with pytest.raises(InputError, match="already holds checkpoints"):
        train_preference(_model(), tok, ROWS, _cfg(tmp_path, max_steps=4), ref_model=_model())
    rec = json.loads((tmp_path / "config.json").read_text())
    assert rec["method"] == "dpo" and rec["run"]["package_version"]
    assert rec["run"]["global_batch"] == 4 and len(rec["run"]["data_sha256"]) == 64


def _permuted_tokenizer():
    """The tiny world's words with two ids swapped: same words, other ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from rdpo_theory.studies.emotion import vocabulary

    words = vocabulary()
    words[-1], words[-2] = words[-2], words[-1]
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=t, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def test_resume_refuses_other_weights_or_tokenizer_ids(tok, tmp_path):
    """Issue 23: resume accepted a tokenizer with the same words but other ids, and a reference
    (or a starting policy) with the same config but other weights. config.json now records the
    vocabulary hash (token -> id) and the weight hashes of the models as given, and resume
    refuses a mismatch naming the field; the same inputs resume."""
    kw = dict(max_steps=2, save_every=1)
    train_preference(_model(), tok, ROWS, _cfg(tmp_path, **kw), ref_model=_model())
    rec = json.loads((tmp_path / "config.json").read_text())["run"]
    assert rec["model"]["weights_sha256"] == rec["reference_model"]["weights_sha256"]
    assert len(rec["tokenizer"]["vocab_sha256"]) == 64
    other_tok = _permuted_tokenizer()
    assert sorted(other_tok.get_vocab()) == sorted(tok.get_vocab())  # same words
    assert other_tok.get_vocab() != tok.get_vocab()  # other ids
    resume = _cfg(tmp_path, resume=True, max_steps=3, save_every=1)
    cases = (
        (dict(tokenizer=other_tok), "run.tokenizer.vocab_sha256"),
        (dict(ref_model=_model(seed=5)), "run.reference_model.weights_sha256"),
        (dict(model=_model(seed=5)), "run.model.weights_sha256"),
    )
    for change, field in cases:
        args = {"model": _model(), "tokenizer": tok, "ref_model": _model(), **change}
        with pytest.raises(InputError, match="differs in 1 field") as e:
            train_preference(
                args["model"], args["tokenizer"], ROWS, resume, ref_model=args["ref_model"]
            )
        assert field in str(e.value)
    # without ref_model the reference is a copy of the policy: other start weights are both
    train_preference(_model(seed=5), tok, ROWS, _cfg(tmp_path / "c", **kw))
    with pytest.raises(InputError, match="differs in 2 field") as e:
        train_preference(_model(seed=6), tok, ROWS, _cfg(tmp_path / "c", resume=True, max_steps=3))
    assert "run.reference_model.weights_sha256" in str(e.value)
    res = train_preference(_model(), tok, ROWS, resume, ref_model=_model())
    assert [m["step"] for m in res.metrics] == [1, 2, 3]


def test_interrupted_run_resumes_to_the_uninterrupted_one(tok, tmp_path, monkeypatch):
    """Dropout on (the RNG matters), a linear schedule, skips counted: a run killed in step 4
    after its step-2 checkpoint, then resumed, equals the run that was never interrupted."""
    kw = dict(max_steps=5, save_every=2, disable_dropout=False, schedule="linear", warmup_steps=1)
    full = train_preference(
        _model(dropout=0.2), tok, ROWS, _cfg(tmp_path / "a", **kw), ref_model=_model()
    )
    real = T.loss_and_backward
    count = {"n": 0}

    def dies_at_4(*a, **k):
        count["n"] += 1
        if count["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(loop, "loss_and_backward", dies_at_4)
    with pytest.raises(KeyboardInterrupt):
        train_preference(
            _model(dropout=0.2), tok, ROWS, _cfg(tmp_path / "b", **kw), ref_model=_model()
        )
    monkeypatch.undo()
    assert [m["step"] for m in read_metrics(tmp_path / "b")] == [1, 2, 3]
    torch.manual_seed(12345)  # a different global RNG state: resume must restore its own
    # the model the run started from (its weight hash is checked); the trained weights, not
    # these, come from the step-2 checkpoint: without them the losses below would differ
    res = train_preference(
        _model(dropout=0.2),
        tok,
        ROWS,
        _cfg(tmp_path / "b", resume=True, **kw),
        ref_model=_model(),
    )
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [m["step"] for m in b] == [1, 2, 3, 4, 5]
    for ra, rb in zip(a, b):
        for k in ("loss", "grad_norm", "lr", "margin_mean"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-6, abs=1e-9), (ra["step"], k)
    for pa, pb in zip(full.model.parameters(), res.model.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- item 5: long sequences
def test_sequences_longer_than_positions_are_truncated_not_indexerror(tok):
    """Issue 16 failure 4 (long sequences): rows longer than the model's positions raised
    IndexError. Now max_length is capped at the positions and truncation is counted."""
    model = _model()
    limit = model.config.n_positions
    long_rows = [
        {"prompt": " ".join(["the"] * (2 * limit)), "chosen": " rage", "rejected": " fear"}
    ] * 4
    with pytest.warns(UserWarning) as rec:
        res = train_preference(
            model, tok, long_rows, _cfg(max_steps=1, max_length=4 * limit), ref_model=_model()
        )
    text = " ".join(str(w.message) for w in rec)
    assert f"exceeds the model's {limit} positions" in text
    assert "8 of 8 sequences" in text and "prompt's end and the completion's start" in text
    assert res.metrics[-1]["truncated_total"] == 8
