"""Selective log-softmax: the same values and gradients as the full float32 log-softmax, without
a float32 copy of the logits (rdpo_theory.torch.logprobs)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from rdpo_theory.torch import logprobs as LP
from rdpo_theory.torch.logprobs import naive_log_softmax, selective_log_softmax

pytest.importorskip("transformers")

from rdpo_theory.studies.emotion import EmotionConfig, build_model, build_tokenizer  # noqa: E402
from rdpo_theory.torch import lm  # noqa: E402
from rdpo_theory.torch.lm import encode_pairs, pair_logps  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = [
    {"prompt": "the day", "chosen": " rage mad hate", "rejected": " afraid hide"},
    {"prompt": "a river and of", "chosen": " fury", "rejected": " panic dread worry the"},
    {"prompt": "we", "chosen": " angry slam door", "rejected": " scared"},
]


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 rows, so the chunk loop and its last partial chunk are exercised."""
    monkeypatch.setattr(LP, "CHUNK_BYTES", 3 * 40 * 4)


def _head(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(40, 16, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    h = torch.randn(3, 7, 16, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    t = torch.randint(40, (3, 7), generator=g)
    w = torch.randn(3, 7, generator=g, dtype=torch.float64)
    return W, h, t, w


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_values_and_gradients_equal_naive(dtype, small_chunks):
    W, h, t, w = _head(dtype)
    res = {}
    for f in (selective_log_softmax, naive_log_softmax):
        out = f(torch.nn.functional.linear(h, W), t)
        res[f] = (out.detach(), *torch.autograd.grad((out * w.to(out.dtype)).sum(), [W, h]))
    assert res[selective_log_softmax][0].dtype == torch.promote_types(dtype, torch.float32)
    tol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-6}[dtype]
    torch.testing.assert_close(
        res[selective_log_softmax][0], res[naive_log_softmax][0], rtol=0, atol=tol
    )
    gtol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2}[dtype]
    for a, b in zip(res[selective_log_softmax][1:], res[naive_log_softmax][1:]):
        torch.testing.assert_close(a.double(), b.double(), rtol=gtol, atol=gtol)


def test_exact_log_softmax_float64():
    W, h, t, _ = _head(torch.float64)
    logits = torch.nn.functional.linear(h, W).detach()
    ref = torch.log_softmax(logits, -1).gather(-1, t.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(selective_log_softmax(logits, t), ref, rtol=0, atol=1e-13)


def test_double_backward_equals_naive(small_chunks):
    W, h, t, w = _head(torch.float64)
    res = []
    for f in (selective_log_softmax, naive_log_softmax):
        out = f(torch.nn.functional.linear(h, W), t)
        (gh,) = torch.autograd.grad((out * w).sum(), h, create_graph=True)
        res.append(torch.autograd.grad(gh.pow(2).sum(), [W, h]))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradcheck_and_gradgradcheck_float64(small_chunks):
    """First and second derivatives of the selective log-softmax against finite differences
    (torch.autograd.gradcheck / gradgradcheck, float64), directly on the logits and through a
    linear head; the second-order node's own backward recomputes the softmax by chunks."""
    W, h, t, _ = _head(torch.float64)
    z = torch.nn.functional.linear(h, W).detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: selective_log_softmax(x, t), (z,))
    assert torch.autograd.gradgradcheck(lambda x: selective_log_softmax(x, t), (z,))
    head = (W.detach().requires_grad_(), h.detach().requires_grad_())
    f = lambda W_, h_: selective_log_softmax(torch.nn.functional.linear(h_, W_), t)  # noqa: E731
    assert torch.autograd.gradgradcheck(f, head)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_double_backward_graph_keeps_no_float32_softmax(dtype, small_chunks):
    """The create_graph backward (WDPO's exact penalty gradient) keeps, among vocabulary-sized
    tensors, the logits and the head's saved copy of their gradient, both in the logits' dtype,
    and nothing else: no float32 softmax (the naive formula keeps one, in float32). The
    incoming gradient of the second backward is not modified."""
    W, h, t, w = _head(dtype)

    def saved_vocab_tensors(f):
        logits = torch.nn.functional.linear(h, W)
        out = f(logits, t)
        saved = {}

        def pack(x):
            if x.shape[-1:] == logits.shape[-1:] and x.numel() == logits.numel():
                saved[x.data_ptr()] = x.dtype
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            (gh,) = torch.autograd.grad((out * w.to(out.dtype)).sum(), h, create_graph=True)
        saved.pop(logits.data_ptr(), None)
        return gh, saved

    gh, saved = saved_vocab_tensors(selective_log_softmax)
    assert list(saved.values()) == [dtype]  # the gradient the head's matmul keeps
    _, saved_naive = saved_vocab_tensors(naive_log_softmax)
    assert torch.float32 in saved_naive.values() and len(saved_naive) >= 2
    u = torch.randn_like(gh)
    u0 = u.clone()
    torch.autograd.grad(gh, [W, h], u)
    assert torch.equal(u, u0)


def test_bf16_double_backward_close_to_naive(small_chunks):
    W, h, t, w = _head(torch.bfloat16)
    res = []
    for f in (selective_log_softmax, naive_log_softmax):
        out = f(torch.nn.functional.linear(h, W), t)
        (gh,) = torch.autograd.grad((out * w.float()).sum(), h, create_graph=True)
        res.append(torch.autograd.grad(gh.float().pow(2).sum(), [W, h]))
    for a, b in zip(*res):
        assert (a.double() - b.double()).norm() <= 2e-2 * b.double().norm()


def test_inplace_backward_guards():
    """The gradient overwrites the logits' storage only when nothing else saved them: a second
    backward through the same graph raises instead of reusing overwritten logits, and a head
    ending in tanh (which saves its output) gets a fresh gradient tensor, same values."""
    W, h, t, w = _head(torch.float64)
    out = selective_log_softmax(torch.nn.functional.linear(h, W), t).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        out.backward()
    grads = []
    for f in (selective_log_softmax, naive_log_softmax):
        x = torch.tanh(torch.nn.functional.linear(h, W))
        grads.append(torch.autograd.grad((f(x, t) * w).sum(), W)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="disagree"):
        selective_log_softmax(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def _old_sequence_logps(
    model, input_ids, attention_mask, completion_mask, *, inputs_embeds=None, fused_head=False
):
    """The previous implementation: a float32 copy of the sliced logits, full logsumexp."""
    if fused_head:
        raise ValueError("the old log-softmax baseline has no fused head")
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    kw = dict(attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    if inputs_embeds is None:
        out = model(input_ids=input_ids, **kw)
    else:
        out = model(inputs_embeds=inputs_embeds, **kw)
    tok = naive_log_softmax(out.logits[:, :-1], input_ids[:, 1:])
    mask = (completion_mask[:, 1:] * attention_mask[:, 1:]).to(tok.dtype)
    return (tok * mask).sum(-1)


@pytest.mark.parametrize("with_embeddings", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pair_logps_and_gradients_equal_old_on_tiny_model(with_embeddings, dtype, monkeypatch):
    """Tiny GPT-2: sequence log-probs equal the old float32 log-softmax to 1e-6 (relative) in
    float32, and so do the parameter gradients, for the plain forward and WDPO's inputs_embeds
    forward including the gradient of the squared embedding-gradient norm (double backward).
    Float32 double backward rounds differently element by element (both implementations are
    ~3e-7 from float64 in norm), so float32 gradients compare in norm; float64 elementwise."""
    tok = build_tokenizer()
    b = encode_pairs(tok, *zip(*[(r["prompt"], r["chosen"], r["rejected"]) for r in ROWS]))
    res = []
    for impl in (lm.sequence_logps, _old_sequence_logps):
        monkeypatch.setattr(lm, "sequence_logps", impl)
        model = build_model(EmotionConfig.smoke(), 0).to(dtype)
        params = list(model.parameters())
        pc, pr, emb = pair_logps(model, b, with_embeddings=with_embeddings)
        obj = (pc - 0.5 * pr).sum()
        if with_embeddings:
            ge = torch.autograd.grad(obj, emb, create_graph=True)
            obj = obj + sum(g.pow(2).sum() for g in ge)
        grads = torch.autograd.grad(obj, params)
        res.append((torch.cat([pc, pr]).detach(), torch.cat([g.reshape(-1) for g in grads])))
    (v_new, g_new), (v_old, g_old) = res
    if dtype == torch.float64:
        torch.testing.assert_close(v_new, v_old, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g_new, g_old, rtol=1e-10, atol=1e-10)
    else:
        assert (v_new - v_old).abs().max() <= 1e-6 * v_old.abs().max()
        assert (g_new - g_old).norm() <= 1e-5 * g_old.norm()
