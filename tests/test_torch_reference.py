"""LoRA through PEFT (the base model with adapters disabled as the reference) and precomputed
reference log-probs, against the reference computations they replace (tiny GPT-2)."""

import copy
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
peft = pytest.importorskip("peft")

from rdpo_theory import InputError  # noqa: E402
from rdpo_theory.studies.emotion import EmotionConfig, build_model, build_tokenizer  # noqa: E402
from rdpo_theory.torch import reference as R  # noqa: E402
from rdpo_theory.torch.lm import encode_pairs, pair_logps  # noqa: E402
from rdpo_theory.torch.train import (  # noqa: E402
    TrainConfig,
    latest_checkpoint,
    loss_and_backward,
    train_preference,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = [
    {"prompt": "the day", "chosen": " rage mad hate", "rejected": " afraid hide"},
    {"prompt": "a river and of", "chosen": " fury", "rejected": " panic dread worry the"},
    {"prompt": "we", "chosen": " angry slam door", "rejected": " scared"},
    {"prompt": "they walk", "chosen": " livid snarl", "rejected": " tremble nervous"},
] * 3


def _model(seed=0, dtype=torch.float32):
    return build_model(EmotionConfig.smoke(), seed).to(dtype)


def _lora():
    return peft.LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, fan_in_fan_out=True
    )


def _cfg(out=None, **kw):
    base = dict(
        method="dpo",
        beta=0.5,
        learning_rate=2e-2,
        batch_size=4,
        max_steps=3,
        mixed_precision="no",
        progress=False,
        seed=3,
        output_dir=out,
    )
    base.update(kw)
    return TrainConfig(**base)


def _batch(tok, rows=ROWS[:4]):
    return encode_pairs(tok, *zip(*[(r["prompt"], r["chosen"], r["rejected"]) for r in rows]))


def _is_adapter(name):
    return "lora_" in name


def test_lora_reference_is_base_and_only_adapters_train(tok, tmp_path):
    base = _model()
    before = copy.deepcopy(base)
    res = train_preference(base, tok, ROWS, _cfg(tmp_path, peft_config=_lora()))
    pm = res.model
    assert isinstance(pm, peft.PeftModel)
    # the base weights never change
    after = {
        n.replace("base_model.model.", "").replace(".base_layer", ""): p
        for n, p in pm.named_parameters()
        if not _is_adapter(n)
    }
    for n, p in before.named_parameters():
        torch.testing.assert_close(after[n], p, rtol=0, atol=0)
    # the adapters did learn: the policy moved away from the base
    b = _batch(tok)
    with torch.no_grad():
        pc, pr, _ = pair_logps(pm, b)
        bc, br, _ = pair_logps(before.eval(), b)
    assert (pc - bc).abs().max() > 1e-3
    # the reference (adapters disabled) is the base model's log-probs
    rc, rr = R.reference_logps(None, pm, b)
    torch.testing.assert_close(rc, bc, rtol=0, atol=1e-6)
    torch.testing.assert_close(rr, br, rtol=0, atol=1e-6)
    # only adapter parameters receive gradients
    for p in pm.parameters():
        p.grad = None
    pm.train()
    loss_and_backward(_cfg(method="wdpo", loss_kwargs={"rho0": 0.5}), pm, None, b)
    got = {n for n, p in pm.named_parameters() if p.grad is not None}
    assert got and all(_is_adapter(n) for n in got)
    assert got == {n for n, p in pm.named_parameters() if _is_adapter(n)}
    # final/ holds the adapters only
    files = {p.name for p in (tmp_path / "final").iterdir()}
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert "model.safetensors" not in files
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["peft_config"]["r"] == 4


@pytest.mark.parametrize(
    "method,kw,opts",
    [
        ("kldpo", {"tau": 0.5}, {}),
        ("wdpo", {"rho0": 0.5}, {}),
        ("wdpo", {"rho0": 0.5, "variant": "per-pair"}, {}),
        ("wdpo", {"rho0": 0.5}, {"wdpo_hvp": "finite-difference"}),
        ("cdpo", {"eps": 0.1}, {}),
        ("ipo", {}, {}),
    ],
)
def test_lora_methods_train_adapters(tok, method, kw, opts):
    base = _model()
    before = copy.deepcopy(base)
    res = train_preference(
        base, tok, ROWS, _cfg(method=method, loss_kwargs=kw, peft_config=_lora(), **opts)
    )
    first, last = res.metrics[0], res.metrics[-1]
    assert first["margin_mean"] == pytest.approx(0.0, abs=1e-6)  # B = 0: policy = base
    assert last["margin_mean"] > first["margin_mean"]
    b = _batch(tok)
    rc, _ = R.reference_logps(None, res.model, b)
    with torch.no_grad():
        bc, _, _ = pair_logps(before.eval(), b)
    torch.testing.assert_close(rc, bc, rtol=0, atol=1e-6)


def test_lora_resume_equals_uninterrupted(tok, tmp_path):
    kw = dict(peft_config=_lora(), method="kldpo", loss_kwargs={"tau": 0.5}, warmup_steps=1)
    full = train_preference(_model(), tok, ROWS, _cfg(tmp_path / "a", max_steps=4, **kw))
    train_preference(_model(), tok, ROWS, _cfg(tmp_path / "b", max_steps=2, **kw))
    ck = latest_checkpoint(tmp_path / "b")
    assert ck.name == "step-2"
    from safetensors import safe_open

    with safe_open(str(ck / "model.safetensors"), framework="pt") as h:
        keys = set(h.keys())
    assert keys and all(_is_adapter(k) for k in keys)  # adapter-only checkpoint
    res = train_preference(
        _model(), tok, ROWS, _cfg(tmp_path / "b", max_steps=4, resume=True, **kw)
    )
    assert res.steps == 4
    for (na, pa), (nb, pb) in zip(full.model.named_parameters(), res.model.named_parameters()):
        assert na == nb
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)
    for ma, mb in zip(full.metrics[2:], res.metrics[2:]):
        assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-5)
    # a checkpoint that does not hold this model's adapters is refused, not half-loaded
    from accelerate import Accelerator

    from rdpo_theory.torch.adapters import load_adapter_checkpoint

    small = peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True)
    with pytest.raises(InputError, match="does not hold this model's adapters"):
        load_adapter_checkpoint(Accelerator(cpu=True), peft.get_peft_model(_model(), small), ck)
    # resuming with other adapters is refused (the recorded configuration differs)
    other = dict(kw, peft_config=peft.LoraConfig(r=2, target_modules=["c_attn"]))
    with pytest.raises(InputError, match="peft_config"):
        train_preference(
            _model(), tok, ROWS, _cfg(tmp_path / "b", max_steps=5, resume=True, **other)
        )


@pytest.mark.parametrize(
    "method,kw,opts",
    [
        ("dpo", {}, {}),
        ("wdpo", {"rho0": 0.5}, {}),
        ("wdpo", {"rho0": 0.5}, {"wdpo_hvp": "finite-difference"}),
        ("kldpo", {"tau": 0.5}, {"peft_config": "lora"}),
    ],
)
def test_precomputed_reference_equals_live_step_for_step(tok, tmp_path, method, kw, opts):
    """Float64, so batching differences (the precompute pass groups rows differently) stay at
    rounding level: every logged step and the final parameters agree to 1e-9."""
    opts = dict(opts)
    if opts.get("peft_config") == "lora":
        opts["peft_config"] = _lora()
    c = dict(method=method, loss_kwargs=kw, **opts)
    live = train_preference(_model(dtype=torch.float64), tok, ROWS, _cfg(**c))
    pre = train_preference(
        _model(dtype=torch.float64),
        tok,
        ROWS,
        _cfg(tmp_path, precompute_ref=True, ref_cache_dir=tmp_path / "cache", **c),
    )
    assert len(live.metrics) == len(pre.metrics) == 3
    for a, b in zip(live.metrics, pre.metrics):
        for k in ("loss", "margin_mean", "reward_chosen", "reward_rejected", "grad_norm"):
            assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-12), k
    for pa, pb in zip(live.model.parameters(), pre.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-9, atol=1e-12)
    assert len(list((tmp_path / "cache").glob("ref_logps-*.json"))) == 1


def test_reference_cache_reuse_and_rows_with_values(tok, tmp_path, monkeypatch):
    model = _model()
    rows = R.with_reference_logps(model, tok, ROWS, cache_dir=tmp_path)
    (f,) = tmp_path.glob("ref_logps-*.json")
    b = _batch(tok)
    with torch.no_grad():
        bc, br, _ = pair_logps(model.eval(), b)
    torch.testing.assert_close(
        torch.tensor([r["ref_chosen_logp"] for r in rows[:4]], dtype=torch.float32), bc
    )

    def boom(*a, **k):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(R, "precompute_reference_logps", boom)
    again = R.with_reference_logps(_model(), tok, ROWS, cache_dir=tmp_path)
    assert again == rows  # same data and weights: the file is read
    with pytest.raises(AssertionError, match="recomputed"):  # other weights: another key
        R.with_reference_logps(_model(seed=5), tok, ROWS, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="recomputed"):  # other data: another key
        R.with_reference_logps(_model(), tok, ROWS[:8], cache_dir=tmp_path)
    # rows carrying the values train without any reference model
    res = train_preference(_model(), tok, rows, _cfg(max_steps=1))
    live = train_preference(_model(), tok, ROWS, _cfg(max_steps=1))
    assert res.metrics[0]["loss"] == pytest.approx(live.metrics[0]["loss"], rel=1e-6)


def test_reference_errors(tok):
    bad = [dict(r) for r in ROWS]
    bad[0].update(ref_chosen_logp=-1.0, ref_rejected_logp=-2.0)
    with pytest.raises(InputError, match="row 1 needs a finite number 'ref_chosen_logp'"):
        train_preference(_model(), tok, bad, _cfg())
    bad = [dict(r, ref_chosen_logp=-1.0, ref_rejected_logp=float("nan")) for r in ROWS]
    with pytest.raises(InputError, match="row 0"):
        train_preference(_model(), tok, bad, _cfg())
    with pytest.raises(InputError, match="ref_model must be None"):
        train_preference(_model(), tok, ROWS, _cfg(peft_config=_lora()), ref_model=_model())
    with pytest.raises(InputError, match="no reference"):
        R.reference_logps(None, _model(), _batch(tok))


def test_cli_lora_and_precomputed_reference(tmp_path, capsys):
    """`rdpo llm --model DIR --dataset FILE --lora-r 4 --precompute-ref`: the cache file lies
    beside the dataset, adapters land in final/, and the held-out pairs are scored against the
    precomputed reference."""
    from rdpo_theory.cli import main

    model_dir = tmp_path / "tiny-gpt2"
    _model().save_pretrained(model_dir)
    build_tokenizer().save_pretrained(model_dir)
    ds = tmp_path / "data" / "pairs.jsonl"
    ds.parent.mkdir()
    rows = [{"prompt": "the day", "chosen": " rage mad", "rejected": " afraid hide"}] * 20
    ds.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    argv = ["llm", "--model", str(model_dir), "--dataset", str(ds), "--out", str(out)]
    argv += ["--methods", "dpo", "wdpo", "--steps", "3", "--batch-size", "4", "--lr", "5e-2"]
    argv += ["--rho0", "0.1", "--eval-fraction", "0.2", "--lora-r", "4", "--precompute-ref"]
    assert main(argv) == 0
    assert len(list(ds.parent.glob("ref_logps-*.json"))) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dpo"]["heldout_pairs"] == 4
    assert summary["dpo"]["heldout_accuracy"] == 1.0
    assert (out / "wdpo" / "final" / "adapter_model.safetensors").exists()
    assert json.loads((out / "dpo" / "config.json").read_text())["peft_config"]["r"] == 4
    capsys.readouterr()
    assert main(argv[:-3] + ["--lora-r", "-1"]) != 0
    assert "--lora-r must be an int >= 0" in capsys.readouterr().err
