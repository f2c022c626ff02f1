"""The fused linear head (rdpo_theory.torch.logprobs.linear_selective_log_softmax) and the
``fused_head`` option of the sequence log-probs and the trainer: the same values, gradients and
second derivatives as the full logits, without any (rows x vocabulary) tensor."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from rdpo_theory.torch import logprobs as LP
from rdpo_theory.torch.logprobs import (
    head_compute_dtype,
    linear_selective_log_softmax,
    naive_log_softmax,
)

pytestmark = pytest.mark.usefixtures("one_thread")

V, D = 13, 5  # N = 3 * 7 = 21 rows > D, so N * V exceeds every parameter's size


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 2 or 3 rows (for 2 or 3 float64 temporaries of V): the chunk loops and their
    last partial chunk run in the forward, the backward and the double backward."""
    monkeypatch.setattr(LP, "CHUNK_BYTES", 6 * V * 8)


def _head(dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V, D, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    b = (
        torch.randn(V, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
        if bias
        else None
    )
    h = torch.randn(3, 7, D, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    t = torch.randint(V, (3, 7), generator=g)
    w = torch.randn(3, 7, generator=g, dtype=torch.float64)
    return h, W, b, t, w


def _naive(h, W, t, b=None):
    return naive_log_softmax(torch.nn.functional.linear(h, W, b), t)


def _leaves(h, W, b):
    return [x for x in (h, W, b) if x is not None]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_values_and_gradients_equal_naive(dtype, bias, small_chunks):
    """Values and first-order gradients equal the full log-softmax of ``h W^T + b``: to 1e-12
    in float64; float32 to rounding; bf16/fp16 logits are rounded alike in both (same matmul
    dtype), the gradients differ by the naive path's rounding of its weight gradient."""
    h, W, b, t, w = _head(dtype, bias)
    res = []
    for f in (linear_selective_log_softmax, _naive):
        out = f(h, W, t, b)
        grads = torch.autograd.grad((out * w.to(out.dtype)).sum(), _leaves(h, W, b))
        res.append((out.detach(), grads))
    (v, g), (v0, g0) = res
    assert v.dtype == torch.promote_types(dtype, torch.float32)
    vtol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-5)
    torch.testing.assert_close(v, v0, rtol=0, atol=vtol)
    for a, a0, x in zip(g, g0, _leaves(h, W, b)):
        assert a.dtype == x.dtype and a.shape == x.shape
        a, a0 = a.double(), a0.double()
        if dtype == torch.float64:
            torch.testing.assert_close(a, a0, rtol=1e-12, atol=1e-12)
        else:
            gtol = 1e-6 if dtype == torch.float32 else 1e-2
            assert (a - a0).norm() <= gtol * a0.norm()


def test_exact_against_log_softmax_float64():
    h, W, b, t, _ = _head()
    z = (h @ W.T + b).detach()
    ref = torch.log_softmax(z, -1).gather(-1, t.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(linear_selective_log_softmax(h, W, t, b), ref, rtol=0, atol=1e-13)


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_and_gradgradcheck_float64(bias, small_chunks):
    """First and second derivatives against finite differences, in (h, W, b) and in the row
    weights ``w`` that play the incoming gradient ``g`` of the double-backward node."""
    h, W, b, t, w = _head(bias=bias)
    h, W = h[:2, :4].detach().requires_grad_(), W.detach().requires_grad_()  # 8 rows
    t, w = t[:2, :4], w[:2, :4].requires_grad_()
    args = tuple(_leaves(h, W, b))

    def f(*a):
        return linear_selective_log_softmax(a[0], a[1], t, a[2] if bias else None)

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)
    assert torch.autograd.gradgradcheck(lambda *a: f(*a[:-1]) * a[-1], (*args, w))


@pytest.mark.parametrize("bias", [True, False])
def test_double_backward_equals_naive(bias, small_chunks):
    """WDPO's pattern: the gradient with respect to the head's input (create_graph), then the
    gradient of its squared norm plus a term in the weight's own gradient, in float64."""
    res = []
    for f in (linear_selective_log_softmax, _naive):
        h, W, b, t, w = _head(bias=bias)
        out = f(h, W, t, b)
        gh, gW = torch.autograd.grad((out * w).sum(), [h, W], create_graph=True)
        obj = gh.pow(2).sum() + (gW * W).sum().sin()
        res.append(torch.autograd.grad(obj, _leaves(h, W, b)))
    for a, a0 in zip(*res):
        torch.testing.assert_close(a, a0, rtol=1e-11, atol=1e-12)


def test_third_derivative_raises(small_chunks):
    h, W, b, t, w = _head()
    (gh,) = torch.autograd.grad(
        linear_selective_log_softmax(h, W, t, b).sum(), h, create_graph=True
    )
    (ghh,) = torch.autograd.grad(gh.pow(2).sum(), h, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(ghh.sum(), h)


def _saved_numels(fn):
    """Numbers of elements of every tensor saved for backward while ``fn`` runs."""
    sizes = []

    def pack(x):
        sizes.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return sizes


@pytest.mark.parametrize("f", [linear_selective_log_softmax, _naive])
def test_no_vocabulary_sized_tensor_is_saved(f, small_chunks):
    """Neither the first-order graph nor the create_graph (double-backward) graph keeps a
    tensor of N x V elements (the logits' size); the naive formula keeps several."""
    h, W, b, t, w = _head()
    N = t.numel()
    held = {}

    def first():
        held["out"] = f(h, W, t, b)

    def second():
        held["gh"] = torch.autograd.grad((held["out"] * w).sum(), h, create_graph=True)[0]

    sizes = _saved_numels(first) + _saved_numels(second)
    big = [s for s in sizes if s >= N * V]
    if f is linear_selective_log_softmax:
        assert sizes and not big and max(sizes) == max(N * D, V * D)  # hidden states, weight
    else:
        assert len(big) >= 2
    torch.autograd.grad(held["gh"].pow(2).sum(), [h, W])  # the graph is complete


def test_frozen_weight_and_frozen_hidden(small_chunks):
    """Only the gradients that are needed are computed: a frozen weight (a LoRA base head)
    gets none and ``h``'s gradient is unchanged; a frozen ``h`` gives the weight's."""
    h, W, b, t, w = _head()
    gh0, gW0, gb0 = torch.autograd.grad((_naive(h, W, t, b) * w).sum(), [h, W, b])
    Wf, bf = W.detach(), b.detach()
    (gh,) = torch.autograd.grad((linear_selective_log_softmax(h, Wf, t, bf) * w).sum(), h)
    torch.testing.assert_close(gh, gh0, rtol=1e-12, atol=1e-12)
    out = linear_selective_log_softmax(h.detach(), W, t, b)
    gW, gb = torch.autograd.grad((out * w).sum(), [W, b])
    torch.testing.assert_close(gW, gW0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gb, gb0, rtol=1e-12, atol=1e-12)
    # double backward with a frozen head: the embedding-gradient penalty reaches h only
    res = []
    for f in (linear_selective_log_softmax, _naive):
        (g1,) = torch.autograd.grad((f(h, Wf, t, bf) * w).sum(), h, create_graph=True)
        res.append(torch.autograd.grad(g1.pow(2).sum(), h)[0])
    torch.testing.assert_close(res[0], res[1], rtol=1e-11, atol=1e-12)


def test_tied_weight(small_chunks):
    """The head's weight is also the input embedding (GPT-2 ties lm_head to wte): the two
    gradient contributions add up, in first and second order."""
    g = torch.Generator().manual_seed(3)
    A = torch.randn(D, D, generator=g, dtype=torch.float64)
    ids = torch.randint(V, (3, 7), generator=g)
    t = torch.randint(V, (3, 7), generator=g)
    res = []
    for f in (linear_selective_log_softmax, _naive):
        W = torch.randn(V, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        W.requires_grad_()
        e = W[ids]
        out = f(torch.tanh(e @ A), W, t)
        (ge,) = torch.autograd.grad(out.sum(), e, create_graph=True)
        res.append(torch.autograd.grad(out.sum() + ge.pow(2).sum(), W)[0])
    torch.testing.assert_close(res[0], res[1], rtol=1e-11, atol=1e-12)


def test_cpu_autocast_bf16():
    """Under CPU autocast (bf16) with float32 parameters the head runs in bf16 exactly where
    ``nn.Linear`` would, reductions in float32; gradients come back in float32, also when
    the backward runs outside the autocast region (the compute dtype is fixed at forward)."""
    h, W, b, t, w = _head(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head_compute_dtype(h, W, b) == torch.bfloat16
        out = linear_selective_log_softmax(h, W, t, b)
        ref = _naive(h, W, t, b)  # linear in bf16 under autocast, then float32
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    g = torch.autograd.grad((out * w).sum(), [h, W, b])
    g0 = torch.autograd.grad((ref * w).sum(), [h, W, b])
    for a, a0 in zip(g, g0):
        assert a.dtype == torch.float32
        assert (a - a0).norm() <= 2e-2 * a0.norm()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float64 is never autocast
        hd, Wd = h.double(), W.double()
        assert head_compute_dtype(hd, Wd) == torch.float64


def test_bad_inputs():
    h, W, b, t, _ = _head()
    with pytest.raises(ValueError, match="disagree"):
        linear_selective_log_softmax(h, W, t[:, :3], b)
    with pytest.raises(ValueError, match="must end in D"):
        linear_selective_log_softmax(h[..., :3], W, t, b)
    with pytest.raises(ValueError, match="bias"):
        linear_selective_log_softmax(h, W, t, b[:3])
    with pytest.raises(ValueError, match="share a dtype"):
        linear_selective_log_softmax(h.float(), W, t, b)
    with pytest.raises(ValueError, match="int64"):
        linear_selective_log_softmax(h, W, t.int(), b)


# --------------------------------------------------------------------- sequence log-probs
pytest.importorskip("transformers")

from rdpo_theory import InputError  # noqa: E402
from rdpo_theory.studies.emotion import EmotionConfig, build_model, build_tokenizer  # noqa: E402
from rdpo_theory.torch.lm import encode_pairs, pair_logps  # noqa: E402

ROWS = [
    {"prompt": "the day", "chosen": " rage mad hate", "rejected": " afraid hide"},
    {"prompt": "a river and of", "chosen": " fury", "rejected": " panic dread worry the"},
    {"prompt": "we", "chosen": " angry slam door", "rejected": " scared"},
    {"prompt": "they walk", "chosen": " livid snarl", "rejected": " tremble nervous"},
]


@pytest.fixture(scope="module")
def batch():
    tok = build_tokenizer()
    return encode_pairs(tok, *zip(*[(r["prompt"], r["chosen"], r["rejected"]) for r in ROWS]))


@pytest.fixture
def lm_chunks(monkeypatch):
    """A few rows per chunk on the tiny model's vocabulary."""
    monkeypatch.setattr(LP, "CHUNK_BYTES", 5 * 3 * 8 * len(build_tokenizer()))


def _model(dtype=torch.float32, seed=0, *, untied_bias=False):
    model = build_model(EmotionConfig.smoke(), seed)
    if untied_bias:  # an untied head with a bias
        from transformers import GPT2Config, GPT2LMHeadModel

        conf = GPT2Config(**{**model.config.to_dict(), "tie_word_embeddings": False})
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(conf)
        old = model.lm_head
        model.lm_head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
        assert model.lm_head.weight is not model.transformer.wte.weight
    return model.to(dtype)


def _logps_and_grads(model, batch, fused, with_embeddings):
    params = [p for p in model.parameters() if p.requires_grad]
    pc, pr, emb = pair_logps(model, batch, with_embeddings=with_embeddings, fused_head=fused)
    obj = (pc - 0.5 * pr).sum()
    if with_embeddings:
        ge = torch.autograd.grad(obj, emb, create_graph=True)
        obj = obj + sum(g.pow(2).sum() for g in ge)
    grads = torch.autograd.grad(obj, params)
    return torch.cat([pc, pr]).detach(), torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("with_embeddings", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pair_logps_fused_equals_default(dtype, with_embeddings, batch, lm_chunks):
    """Tiny GPT-2 (tied head): fused_head gives the default path's sequence log-probs and
    parameter gradients, including WDPO's gradient of the squared embedding-gradient norm
    (double backward): float64 to 1e-10, float32 to rounding (in norm)."""
    (v1, g1), (v0, g0) = (
        _logps_and_grads(_model(dtype), batch, fused, with_embeddings) for fused in (True, False)
    )
    if dtype == torch.float64:
        torch.testing.assert_close(v1, v0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g1, g0, rtol=1e-10, atol=1e-10)
    else:
        assert (v1 - v0).abs().max() <= 1e-5 * v0.abs().max()
        assert (g1 - g0).norm() <= 1e-5 * g0.norm()


def test_untied_head_with_bias(batch, lm_chunks):
    res = [
        _logps_and_grads(_model(torch.float64, untied_bias=True), batch, fused, True)
        for fused in (True, False)
    ]
    torch.testing.assert_close(res[0][0], res[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res[0][1], res[1][1], rtol=1e-10, atol=1e-10)


def test_llama_model(batch, lm_chunks):
    """Another architecture: a tiny Llama (RMSNorm, rotary positions, untied head), float64,
    WDPO's double backward included."""
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(
        vocab_size=len(build_tokenizer()),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    res = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = LlamaForCausalLM(conf).double()
        res.append(_logps_and_grads(model, batch, fused, True))
    torch.testing.assert_close(res[0][0], res[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res[0][1], res[1][1], rtol=1e-10, atol=1e-10)


def test_frozen_head_model(batch, lm_chunks):
    """A frozen (tied) head and embedding: gradients of the other parameters still agree."""
    res = []
    for fused in (True, False):
        model = _model(torch.float64)
        model.lm_head.weight.requires_grad_(False)
        res.append(_logps_and_grads(model, batch, fused, True))
    torch.testing.assert_close(res[0][1], res[1][1], rtol=1e-10, atol=1e-10)


class _Scaled(torch.nn.Linear):
    """A head that is an nn.Linear subclass (not plain): refused by type."""


def test_refusals(batch, monkeypatch):
    """Models whose logits are not ``nn.Linear(hidden_states[-1])`` are refused with an error
    naming fused_head: a non-Linear head, a config-declared logit transform, and a forward
    that scales its logits after the head (caught by the last-position check)."""
    model = _model()
    assert pair_logps(model, batch, fused_head=True)[0].shape == (len(ROWS),)
    wrapped = _model()
    wrapped.lm_head = torch.nn.Sequential(wrapped.lm_head)
    with pytest.raises(InputError, match="fused_head.*plain torch.nn.Linear.*Sequential"):
        pair_logps(wrapped, batch, fused_head=True)
    sub = _model()
    lin = sub.lm_head
    sub.lm_head = _Scaled(lin.in_features, lin.out_features, bias=False)
    with pytest.raises(InputError, match="fused_head.*_Scaled"):
        pair_logps(sub, batch, fused_head=True)
    capped = _model()
    capped.config.final_logit_softcapping = 30.0
    with pytest.raises(InputError, match="fused_head.*final_logit_softcapping"):
        pair_logps(capped, batch, fused_head=True)

    class FullyShardedDataParallel(torch.nn.Module):  # the FSDP wrapper's name
        def __init__(self, module):
            super().__init__()
            self.module = module

    with pytest.raises(InputError, match="fused_head.*FSDP"):
        pair_logps(FullyShardedDataParallel(_model()), batch, fused_head=True)
    old = _model()

    def forward(input_ids=None, attention_mask=None, position_ids=None, use_cache=None):
        raise AssertionError("not called")

    monkeypatch.setattr(old, "forward", forward)
    with pytest.raises(InputError, match="fused_head.*logits_to_keep"):
        pair_logps(old, batch, fused_head=True)
    scaled = _model()
    inner_forward = scaled.forward

    def forward(*a, **kw):
        out = inner_forward(*a, **kw)
        out.logits = out.logits * 1.05
        return out

    monkeypatch.setattr(scaled, "forward", forward)
    assert pair_logps(scaled, batch)[0].shape == (len(ROWS),)  # the default path runs
    with pytest.raises(InputError, match="fused_head=True cannot be used.*differ"):
        pair_logps(scaled, batch, fused_head=True)


def test_autocast_inside_forward_head_dtype(batch, monkeypatch):
    """A model that autocasts to bf16 inside its forward only (as an accelerate-prepared model
    with mixed_precision="bf16" does, here on CPU): the fused head runs in the dtype the
    model's head ran in (bf16, recorded by a hook), so it passes the last-position check and
    matches the default path to bf16 rounding."""
    from rdpo_theory.torch import lm

    model = _model()
    inner_forward = model.forward

    def forward(*a, **kw):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return inner_forward(*a, **kw)

    monkeypatch.setattr(model, "forward", forward)
    seen = []
    orig = LP.linear_selective_log_softmax

    def spy(*a, **kw):
        seen.append(kw.get("compute_dtype"))
        return orig(*a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lm, "linear_selective_log_softmax", spy)
        with torch.no_grad():
            fused = torch.cat(pair_logps(model, batch, fused_head=True)[:2])
    with torch.no_grad():
        default = torch.cat(pair_logps(model, batch)[:2])
        full = torch.cat(pair_logps(_model(), batch)[:2])  # float32 throughout
    assert seen == [torch.bfloat16]
    assert (fused - default).abs().max() <= 1e-2 * default.abs().max()
    assert (default - full).abs().max() > 1e-5 * full.abs().max()  # bf16 did round


# ------------------------------------------------------------------------------ trainer
@pytest.mark.parametrize(
    "method,kw,opts",
    [
        ("dpo", {}, {}),
        ("kldpo", {"tau": 0.5}, {}),
        ("wdpo", {"rho0": 0.5}, {}),
        ("wdpo", {"rho0": 0.5}, {"wdpo_hvp": "finite-difference"}),
        ("wdpo", {"rho0": 0.5, "variant": "per-pair"}, {}),
    ],
)
def test_training_step_fused_equals_default(method, kw, opts, batch, lm_chunks):
    """One trainer micro-batch (policy and reference forward, loss, backward; WDPO by double
    backward and by finite differences), float64: the same loss, penalty and parameter
    gradients with fused_head on and off."""
    from rdpo_theory.torch.train import TrainConfig, loss_and_backward

    res = []
    for fused in (True, False):
        cfg = TrainConfig(method=method, beta=0.5, loss_kwargs=kw, fused_head=fused, **opts)
        model = _model(torch.float64)
        ref = _model(torch.float64, seed=1).requires_grad_(False)
        out = loss_and_backward(cfg, model, ref, dict(batch))
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        res.append((out, grad))
    (o1, g1), (o0, g0) = res
    assert float(o1.loss.detach()) == pytest.approx(float(o0.loss.detach()), rel=1e-12)
    if method == "wdpo":
        assert float(o1.stats["penalty"]) == pytest.approx(float(o0.stats["penalty"]), rel=1e-10)
    assert g0.norm() > 0
    torch.testing.assert_close(g1, g0, rtol=1e-9, atol=1e-10)


def test_precomputed_reference_and_config(batch, capsys):
    """Precomputed reference log-probs agree with fused_head; the option must be a bool and
    is a resumable field (it changes memory, not values); `rdpo llm --tiny` refuses it."""
    from rdpo_theory.torch.reference import precompute_reference_logps
    from rdpo_theory.torch.run_config import RESUMABLE_FIELDS
    from rdpo_theory.torch.train import TrainConfig

    tok = build_tokenizer()
    model = _model(torch.float64)
    vals = [
        precompute_reference_logps(model, tok, ROWS, batch_size=3, fused_head=f)
        for f in (True, False)
    ]
    assert vals[0].shape == (len(ROWS), 2)
    torch.testing.assert_close(torch.tensor(vals[0]), torch.tensor(vals[1]), rtol=0, atol=1e-12)
    with pytest.raises(InputError, match="'fused_head' parameter of TrainConfig must be"):
        TrainConfig(fused_head=1)
    assert "fused_head" in RESUMABLE_FIELDS
    from rdpo_theory.cli import main

    assert main(["llm", "--tiny", "--fused-head"]) == 2
    assert "--fused_head does not apply to --tiny" in capsys.readouterr().err


def test_lora_model(batch, lm_chunks):
    """A PEFT (LoRA) policy: the frozen base head is fused (its weight gets no gradient) and the
    adapters' gradients agree, WDPO's double backward included; LoRA on the head itself is
    refused."""
    peft = pytest.importorskip("peft")

    def lora(targets):
        cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets, init_lora_weights=False)
        torch.manual_seed(5)
        return peft.get_peft_model(_model(torch.float64), cfg)

    res = [_logps_and_grads(lora(["c_attn", "c_fc"]), batch, f, True) for f in (True, False)]
    torch.testing.assert_close(res[0][0], res[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res[0][1], res[1][1], rtol=1e-10, atol=1e-10)
    with pytest.raises(InputError, match="fused_head.*plain torch.nn.Linear"):
        pair_logps(lora(["c_attn", "lm_head"]), batch, fused_head=True)


# --------------------------------------------------------------------------- data parallel
DDP_METHODS = [
    ("dpo", {}, {}),
    ("wdpo", {"rho0": 0.5}, {"wdpo_hvp": "finite-difference", "wdpo_fd_eps": 1e-5}),
]


def _ddp_worker(rank, world, port, path):
    from ddp_workers import accelerate_env

    accelerate_env(rank, world, port)
    from rdpo_theory.torch.train import TrainConfig, loss_and_backward, make_accelerator

    half = len(ROWS) // world
    tok = build_tokenizer()
    part = ROWS[rank * half : (rank + 1) * half]
    b = encode_pairs(tok, *zip(*[(r["prompt"], r["chosen"], r["rejected"]) for r in part]))
    res = {}
    for i, (method, kw, opts) in enumerate(DDP_METHODS):
        for fused in (True, False):
            cfg = TrainConfig(
                method=method,
                beta=0.5,
                loss_kwargs=kw,
                mixed_precision="no",
                progress=False,
                fused_head=fused,
                **opts,
            )
            acc = make_accelerator(cfg)
            assert acc.num_processes == world
            model = acc.prepare(_model(torch.float64))
            ref = _model(torch.float64, seed=1).requires_grad_(False)
            loss_and_backward(cfg, model, ref, dict(b), accelerator=acc)
            grads = [p.grad.reshape(-1) for p in acc.unwrap_model(model).parameters()]
            res[(i, fused)] = torch.cat(grads)
    torch.save(res, f"{path}/fused{rank}.pt")
    acc.end_training()


@pytest.mark.slow
def test_ddp_two_gloo_workers(tmp_path):
    """A DDP-wrapped policy (accelerate, 2 gloo workers on CPU, float64): the fused head is
    found through the wrapper and gives the default path's all-reduced gradients (DPO, and
    WDPO by finite differences, the data-parallel WDPO)."""
    from ddp_workers import spawn

    spawn(_ddp_worker, 2, str(tmp_path))
    parts = [torch.load(tmp_path / f"fused{r}.pt") for r in range(2)]
    for i in range(len(DDP_METHODS)):
        g1, g0 = parts[0][(i, True)], parts[0][(i, False)]
        assert g0.norm() > 0
        torch.testing.assert_close(g1, g0, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(parts[1][(i, True)], g1, rtol=0, atol=0)  # all-reduced


def test_cli_fused_head(tmp_path):
    """`rdpo llm --model DIR --dataset FILE --fused-head`: the run records fused_head, and its
    first step's loss and held-out margin equal the default run's (float32 rounding)."""
    import json

    from rdpo_theory.cli import main

    model_dir = tmp_path / "tiny-gpt2"
    _model().save_pretrained(model_dir)
    build_tokenizer().save_pretrained(model_dir)
    ds = tmp_path / "pairs.jsonl"
    ds.write_text("\n".join(json.dumps(r) for r in ROWS * 3))
    res = {}
    for fused in (True, False):
        out = tmp_path / f"out{fused}"
        argv = ["llm", "--model", str(model_dir), "--dataset", str(ds), "--out", str(out)]
        argv += ["--methods", "wdpo", "--steps", "2", "--batch-size", "2", "--rho0", "0.5"]
        argv += ["--eval-fraction", "0.25"] + (["--fused-head"] if fused else [])
        assert main(argv) == 0
        assert json.loads((out / "wdpo" / "config.json").read_text())["fused_head"] is fused
        first = json.loads((out / "wdpo" / "metrics.jsonl").read_text().splitlines()[0])
        res[fused] = (first["loss"], json.loads((out / "summary.json").read_text()))
    assert res[True][0] == pytest.approx(res[False][0], rel=1e-6)
    margins = [res[f][1]["wdpo"]["heldout_margin"] for f in (True, False)]
    assert margins[0] == pytest.approx(margins[1], rel=1e-4, abs=1e-6)
