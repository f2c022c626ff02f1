"""TrainConfig(robust_normalizer="running") (rdpo_theory.torch.normalizers in the trainer)."""

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from rdpo_theory import InputError  # noqa: E402
from rdpo_theory.studies.emotion import EmotionConfig, build_model, build_tokenizer  # noqa: E402
from rdpo_theory.torch.train import TrainConfig, read_metrics, train_preference  # noqa: E402

CFG = EmotionConfig.smoke()
ROWS = [
    {"prompt": "the day", "chosen": " rage mad hate", "rejected": " afraid hide"},
    {"prompt": "a river and of", "chosen": " fury", "rejected": " panic dread worry the"},
    {"prompt": "we", "chosen": " angry slam door", "rejected": " scared"},
    {"prompt": "they walk", "chosen": " livid snarl", "rejected": " tremble nervous"},
] * 4
KL = dict(method="kldpo", loss_kwargs={"tau": 0.5})
pytestmark = pytest.mark.usefixtures("one_thread")
W = dict(method="wdpo", loss_kwargs={"rho0": 0.05})


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
        robust_normalizer="batch",  # the per-micro-batch normaliser, unless a test names another
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
        build_model(CFG, 0),  # the start weights (checked); trained ones from the checkpoint
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


# ---------------------------------------------------------------------------- accumulated
def _train64(tok, cfg, policy_seed=0):
    """float64 models (policy and reference differ, so the per-pair losses differ): the
    comparisons below are exact up to float64 rounding."""
    model = build_model(CFG, policy_seed).double()
    return train_preference(model, tok, ROWS, cfg, ref_model=build_model(CFG, 1).double())


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


KL_CLIPPED = dict(method="kldpo", loss_kwargs={"tau": 0.1, "variant": "clipped", "clip": 2.0})


@pytest.mark.parametrize(
    "kw",
    [KL, pytest.param(KL_CLIPPED, marks=pytest.mark.slow), pytest.param(W, marks=pytest.mark.slow)],
    ids=["kldpo", "kldpo-clipped", "wdpo"],
)
def test_accumulated_four_by_two_equals_one_by_eight(tok, kw):
    """grad_accum 4 x micro-batch 2 trains exactly like one micro-batch of 8 (the same 8 rows
    per step: the data order is a function of the global micro-batch index), parameters
    compared after 3 steps; the micro-batch normaliser does not."""
    steps = dict(max_steps=3)
    one = _train64(tok, _cfg(robust_normalizer="accumulated", batch_size=8, **steps, **kw))
    four = _train64(
        tok, _cfg(robust_normalizer="accumulated", batch_size=2, grad_accum=4, **steps, **kw)
    )
    ref = _flat(one.model)
    moved = (ref - _flat(build_model(CFG, 0).double())).norm()
    assert moved > 1e-3  # the runs really trained
    assert (_flat(four.model) - ref).norm() <= 1e-9 * moved
    # the step's diagnostics are the same too (one normalisation group of 8 pairs)
    for k in ("ess", "weight_max", "normalizer"):
        if k in one.metrics[0]:
            assert four.metrics[0][k] == pytest.approx(one.metrics[0][k], rel=1e-6)
    # with A = 1 the accumulated normaliser is the micro-batch one
    mb = _train64(tok, _cfg(batch_size=8, **steps, **kw))
    assert (_flat(mb.model) - ref).norm() <= 1e-6 * moved
    # the per-micro-batch normaliser at 4 x 2 normalises over 2 pairs: another run
    mb4 = _train64(tok, _cfg(batch_size=2, grad_accum=4, **steps, **kw))
    assert (_flat(mb4.model) - ref).norm() > 1e-3 * moved


# ---------------------------------------------------------------------------- logged values
def _step0_values(tok, cfg, wdpo=False):
    """Per micro-batch of step 0, by hand (numpy, float64): the per-pair DPO losses of the
    untrained policy against its reference, or (``wdpo``) the squared norms of their gradients
    with respect to the input embeddings."""
    from rdpo_theory.torch.lm import encode_pairs, pair_logps
    from rdpo_theory.torch.train import micro_batch_indices

    policy, ref = build_model(CFG, 0).double(), build_model(CFG, 1).double()
    out = []
    for a in range(cfg.grad_accum):
        idx = micro_batch_indices(len(ROWS), cfg.batch_size, a, cfg.seed)
        rows = [ROWS[i] for i in idx]
        batch = encode_pairs(tok, *([r[k] for r in rows] for k in ("prompt", "chosen", "rejected")))
        with torch.no_grad():
            rc, rr, _ = pair_logps(ref, batch)
        pc, pr, emb = pair_logps(policy, batch, with_embeddings=True)
        m = cfg.beta * ((pc - rc) - (pr - rr))
        loss = torch.nn.functional.softplus(-m)
        if wdpo:
            g = torch.autograd.grad(loss.sum(), emb)
            out.append(sum(t.pow(2).sum((1, 2)) for t in g).detach().numpy())
        else:
            out.append(loss.detach().numpy())
    return out


def _hand_kl(l, log_z=None, *, tau, clip=None):
    """KLDPO weights and their diagnostics, from their definitions."""
    import numpy as np

    if clip is None:
        if log_z is None:
            log_z = np.log(np.mean(np.exp(l / tau)))
        w = np.exp(l / tau - log_z)
        stat, frac = log_z, None
    else:
        stat = l.mean()
        raw = np.exp((l - stat) / tau)
        w, frac = np.minimum(raw, clip), np.mean(raw > clip)
    d = dict(ess=w.sum() ** 2 / (w**2).sum(), weight_max=w.max() / w.sum(), normalizer=stat)
    d["weight_mean"] = w.mean()
    if frac is not None:
        d["clip_fraction"] = frac
    return d


def _mean_dicts(ds):
    return {k: sum(d[k] for d in ds) / len(ds) for k in ds[0]}


@pytest.mark.parametrize(
    "normalizer,variant",
    [
        ("batch", "normalized"),
        ("batch", "clipped"),
        ("accumulated", "normalized"),
        ("accumulated", "clipped"),
        ("running", "normalized"),
    ],
)
def test_logged_kl_diagnostics_equal_a_hand_computation(tok, normalizer, variant):
    """Step 1 of a run with 2 micro-batches of 4: ess, weight_max, weight_mean, the normaliser
    and (clipped) the clipped fraction, from the per-pair losses by hand. Micro-batch and
    running values are the mean over the step's two micro-batches (the running statistic
    after each: decay 0.5); accumulated values are those of the step's 8 pairs."""
    import numpy as np

    tau = 0.1
    lk = {"tau": tau} if variant == "normalized" else {"tau": tau, "variant": variant, "clip": 2.0}
    cfg = _cfg(
        method="kldpo",
        loss_kwargs=lk,
        robust_normalizer=normalizer,
        robust_decay=0.5,
        grad_accum=2,
        max_steps=1,
    )
    logged = _train64(tok, cfg).metrics[0]
    ls = _step0_values(tok, cfg)
    clip = lk.get("clip")
    if normalizer == "accumulated":
        want = _hand_kl(np.concatenate(ls), tau=tau, clip=clip)
    elif normalizer == "batch":
        want = _mean_dicts([_hand_kl(l, tau=tau, clip=clip) for l in ls])
    else:
        z1 = np.mean(np.exp(ls[0] / tau))
        z2 = 0.5 * z1 + 0.5 * np.mean(np.exp(ls[1] / tau))
        want = _mean_dicts(
            [_hand_kl(ls[0], np.log(z1), tau=tau), _hand_kl(ls[1], np.log(z2), tau=tau)]
        )
    pairs = 8 if normalizer == "accumulated" else 4
    assert want["ess"] < 0.95 * pairs  # the weights are far from uniform: the check can fail
    if clip is not None:
        assert 0 < want["clip_fraction"] < 1
    for k, v in want.items():
        assert logged[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k


@pytest.mark.parametrize("normalizer", ["batch", "accumulated", "running"])
def test_logged_wdpo_normalizer_equals_a_hand_computation(tok, normalizer):
    """WDPO sqrt-mean logs its normaliser S = mean ||grad_z l_i||^2 (step 1, 2 micro-batches
    of 4): per micro-batch averaged over the step, over the step's 8 pairs, or the running
    average after each micro-batch (decay 0.5)."""
    import numpy as np

    cfg = _cfg(robust_normalizer=normalizer, robust_decay=0.5, grad_accum=2, max_steps=1, **W)
    logged = _train64(tok, cfg).metrics[0]
    s1, s2 = (float(np.mean(s)) for s in _step0_values(tok, cfg, wdpo=True))
    want = {"batch": (s1 + s2) / 2, "accumulated": (s1 + s2) / 2}
    want["running"] = (s1 + (0.5 * s1 + 0.5 * s2)) / 2
    assert abs(s1 - s2) > 1e-3 * s1  # the micro-batches differ
    assert logged["normalizer"] == pytest.approx(want[normalizer], rel=1e-5)


# ---------------------------------------------------------------------------- emotion world
@pytest.mark.slow
def test_running_mean_weights_do_not_depend_on_the_micro_batch_size(tok):
    """On the tiny emotion world (SFT reference, a policy moved by 4 DPO steps, 64 pairs),
    KLDPO with robust_normalizer='running' (tau 0.5, decay a = 0.05) at micro-batch B = 2 and
    B = 8 gives the same mean weights.

    The policy is held fixed (learning rate 1e-9), so the runs differ only in how the
    normaliser sees the data. Pair i's weight at step t is ``exp(l_i / tau) / Z_t``; the mean
    over the data and over K = 256 steps after a burn-in of 64 (both whole epochs) is
    ``m(B) = Z* mean_t (1 / Z_t)`` with ``Z* = mean_i exp(l_i / tau)`` the full-data partition
    sum, computed here by hand; the right answer is 1 for every B.

    Tolerance, per B: ``m(B) - 1`` is a Jensen term ``Var(Z_t) / Z*^2 ~ a / (2 - a) cv_B^2``
    (the stationary variance of the moving average) plus the deviation of ``mean_t Z_t`` from
    Z*. Over whole epochs ``mean_t Z_b = Z*`` exactly (every pair once per epoch), and
    ``sum_t Z_t = sum_t Z_b + (1 - a) / a (Z_start - Z_end)``, so that deviation is
    ``(1 - a) (Z_start - Z_end) / (a K Z*)``, bounded at 3 standard deviations by
    ``3 sqrt(2 a / (2 - a)) cv_B / (a K)``. ``cv_B^2 = cv^2 (n - B) / (B (n - 1))`` is the
    squared coefficient of variation of the batch mean of ``exp(l / tau)`` drawn without
    replacement. The two runs must agree within the sum of their tolerances (about 0.08 and
    0.03 here); the micro-batch normaliser's ``Z* mean_b (1 / Z_b)`` at B = 2, computed on the
    same batches, misses 1 by far more (the check can fail)."""
    import copy

    import numpy as np

    from rdpo_theory.studies.emotion import preference_rows, sample_corpus, sft
    from rdpo_theory.torch.lm import encode_pairs, pair_logps
    from rdpo_theory.torch.train import micro_batch_indices

    ecfg = EmotionConfig.smoke()
    ref = sft(build_model(ecfg, 0), tok, sample_corpus(ecfg, ecfg.n_corpus, (0, 0)), ecfg, 0)
    rows = preference_rows(ref, tok, ecfg, 0)[0]["convex"]
    n, tau, a, burn, K = len(rows), 0.5, 0.05, 64, 256
    base = dict(beta=0.5, mixed_precision="no", progress=False, save_final_model=False)
    dpo = TrainConfig(method="dpo", learning_rate=3e-3, batch_size=16, max_steps=4, **base)
    policy = train_preference(copy.deepcopy(ref), tok, rows, dpo, ref_model=ref).model
    batch = encode_pairs(tok, *([r[k] for r in rows] for k in ("prompt", "chosen", "rejected")))
    with torch.no_grad():
        pc, pr, _ = pair_logps(policy, batch)
        rc, rr, _ = pair_logps(ref, batch)
    e = np.exp(torch.nn.functional.softplus(-0.5 * ((pc - rc) - (pr - rr))).double().numpy() / tau)
    z_star, cv2 = e.mean(), e.var() / e.mean() ** 2
    assert cv2 > 1.0  # weights far from uniform

    def tol(B):
        cvb2 = cv2 * (n - B) / (B * (n - 1))
        return a / (2 - a) * cvb2 + 3 * np.sqrt(2 * a / (2 - a) * cvb2) / (a * K)

    m = {}
    for B in (2, 8):
        cfg = TrainConfig(
            method="kldpo",
            loss_kwargs={"tau": tau},
            robust_normalizer="running",
            robust_decay=a,
            learning_rate=1e-9,
            batch_size=B,
            max_steps=burn + K,
            **base,
        )
        res = train_preference(copy.deepcopy(policy), tok, rows, cfg, ref_model=ref)
        log_z = np.array([r["normalizer"] for r in res.metrics[burn:]])
        m[B] = z_star * np.mean(np.exp(-log_z))
        assert abs(m[B] - 1) <= tol(B), (B, m[B], tol(B))
    assert abs(m[2] - m[8]) <= tol(2) + tol(8)
    # the micro-batch normaliser on the same B = 2 batches (one epoch)
    zb = [e[micro_batch_indices(n, 2, t, 0)].mean() for t in range(n // 2)]
    assert z_star * np.mean(1 / np.array(zb)) - 1 > 3 * (tol(2) + tol(8))


def test_cli_robust_normalizer_reaches_the_robust_methods_only(tmp_path, capsys):
    """`rdpo llm --model DIR --robust-normalizer running --robust-decay 0.5`: the recorded run
    configuration of KLDPO carries the options, DPO's keeps the batch default, and bad
    values stop the command with one line naming the option."""
    from rdpo_theory.cli import main

    model_dir = tmp_path / "tiny-gpt2"
    build_model(CFG, 0).save_pretrained(model_dir)
    build_tokenizer().save_pretrained(model_dir)
    ds = tmp_path / "pairs.jsonl"
    ds.write_text("\n".join(json.dumps(r) for r in ROWS))
    out = tmp_path / "out"
    argv = ["llm", "--model", str(model_dir), "--dataset", str(ds), "--out", str(out)]
    argv += ["--methods", "dpo", "kldpo", "--steps", "2", "--batch-size", "4"]
    argv += ["--eval-fraction", "0.25", "--robust-normalizer", "running", "--robust-decay", "0.5"]
    assert main(argv) == 0
    kl = json.loads((out / "kldpo" / "config.json").read_text())
    dpo = json.loads((out / "dpo" / "config.json").read_text())
    assert (kl["robust_normalizer"], kl["robust_decay"]) == ("running", 0.5)
    assert dpo["robust_normalizer"] == "auto"  # the default, resolved to batch for DPO
    assert (kl["run"]["robust_normalizer"], dpo["run"]["robust_normalizer"]) == ("running", "batch")
    normalizers = [m["normalizer"] for m in read_metrics(out / "kldpo") if "normalizer" in m]
    assert normalizers and all(torch.isfinite(torch.tensor(normalizers)))
    capsys.readouterr()
    bad = argv[:5] + ["--out", str(tmp_path / "o2"), "--methods", "dpo"]
    assert main(bad + ["--robust-normalizer", "running"]) != 0
    assert "--robust_normalizer sets kldpo/wdpo" in capsys.readouterr().err
    fresh = argv[:5] + ["--out", str(tmp_path / "o3")] + argv[7:-2]
    assert main(fresh + ["--robust-decay", "2"]) != 0
    err = capsys.readouterr().err
    assert "--methods kldpo" in err and "decay" in err and "Traceback" not in err


# ------------------------------------------------------------- the "auto" default (issue 25)
@pytest.mark.parametrize(
    "method, kwargs, hvp, weighted, expected",
    [
        ("kldpo", {"tau": 0.5}, "double-backward", False, "running"),
        ("kldpo", {"tau": 0.5, "variant": "normalized"}, "double-backward", False, "running"),
        ("kldpo", {"tau": 0.5, "variant": "clipped"}, "double-backward", False, "batch"),
        ("kldpo", {"tau": 0.5}, "double-backward", True, "batch"),
        ("wdpo", {"rho0": 0.1}, "double-backward", False, "running"),
        ("wdpo", {"rho0": 0.1}, "finite-difference", False, "batch"),
        ("wdpo", {"rho0": 0.1, "variant": "per-pair"}, "double-backward", False, "batch"),
        ("wdpo", {"rho0": 0.1}, "double-backward", True, "batch"),
        ("dpo", {}, "double-backward", False, "batch"),
        ("chi2dpo", {"rho": 0.3}, "double-backward", False, "batch"),
    ],
)
def test_auto_resolves_to_running_where_it_applies(method, kwargs, hvp, weighted, expected):
    from rdpo_theory.torch.normalizers import resolve_trainer_normalizer

    got = resolve_trainer_normalizer("auto", method, kwargs, wdpo_hvp=hvp, weighted=weighted)
    assert got == expected
    # an explicit choice is kept as given
    for explicit in ("batch", "accumulated", "running"):
        assert resolve_trainer_normalizer(explicit, method, kwargs) == explicit


@pytest.mark.parametrize("kw", [KL, W], ids=["kldpo", "wdpo"])
def test_default_trains_with_the_running_normalizer(tok, kw, tmp_path):
    """TrainConfig's default ("auto") is the running normaliser for KLDPO and WDPO: the same
    parameters as an explicit robust_normalizer="running" run, recorded in config.json and in
    the result; an explicit "batch" run differs."""
    auto = _train(tok, _cfg(tmp_path / "auto", robust_normalizer="auto", **kw))
    running = _train(tok, _cfg(robust_normalizer="running", **kw))
    batch = _train(tok, _cfg(**kw))
    assert TrainConfig().robust_normalizer == "auto"
    assert (auto.robust_normalizer, running.robust_normalizer) == ("running", "running")
    assert batch.robust_normalizer == "batch"
    rec = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert (rec["robust_normalizer"], rec["run"]["robust_normalizer"]) == ("auto", "running")
    gap = max(
        (a - b).abs().max() for a, b in zip(auto.model.parameters(), batch.model.parameters())
    )
    for a, b in zip(auto.model.parameters(), running.model.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert gap > 1e-6  # the running normaliser really is another one at batch_size 4


def test_auto_with_weighted_rows_uses_the_batch_normalizer(tok):
    rows = [dict(r, weight=1.0 + (i % 3)) for i, r in enumerate(ROWS)]
    cfg = _cfg(robust_normalizer="auto", **KL)
    res = train_preference(build_model(CFG, 0), tok, rows, cfg, ref_model=build_model(CFG, 0))
    assert res.robust_normalizer == "batch"
    with pytest.raises(InputError, match="'weight' column"):
        train_preference(
            build_model(CFG, 0),
            tok,
            rows,
            _cfg(robust_normalizer="running", **KL),
            ref_model=build_model(CFG, 0),
        )
