"""WDPO by finite-difference Hessian-vector products under data parallelism: 2 gloo workers
(accelerate, DDP on CPU) give the gradient one worker computes on their union (tiny GPT-2,
float64), for both variants: ``sqrt-mean``'s ``S`` is all-reduced over the global micro-batch."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from ddp_workers import accelerate_env, spawn

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from rdpo_theory.studies.emotion import EmotionConfig, build_model, build_tokenizer  # noqa: E402
from rdpo_theory.torch.lm import encode_pairs  # noqa: E402
from rdpo_theory.torch.train import TrainConfig, loss_and_backward  # noqa: E402

ROWS = [
    ("the day", " rage mad hate", " afraid hide"),
    ("a river and of", " fury", " panic dread worry the"),
    ("we", " angry slam door", " scared"),
    ("they walk", " livid snarl", " tremble nervous"),
]
EPS = 1e-5  # float64: O(h^2) truncation ~1e-10, rounding ~1e-16 / 1e-5


def _cfg(variant):
    return TrainConfig(
        method="wdpo",
        beta=0.5,
        loss_kwargs={"rho0": 0.5, "variant": variant},
        wdpo_hvp="finite-difference",
        wdpo_fd_eps=EPS,
        mixed_precision="no",
        progress=False,
    )


def _models():
    cfg = EmotionConfig.smoke()
    return build_model(cfg, 0).double(), build_model(cfg, 1).double().requires_grad_(False)


def _batch(rows):
    return encode_pairs(build_tokenizer(), *zip(*rows))


def _grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _worker(rank, world, port, path):
    accelerate_env(rank, world, port)
    from rdpo_theory.torch.train import make_accelerator

    res = {}
    for variant in ("per-pair", "sqrt-mean"):
        cfg = _cfg(variant)
        acc = make_accelerator(cfg)
        assert acc.num_processes == world
        model, ref = _models()
        model = acc.prepare(model)
        half = len(ROWS) // world
        batch = _batch(ROWS[rank * half : (rank + 1) * half])
        out = loss_and_backward(cfg, model, ref, batch, accelerator=acc)
        res[variant] = dict(grad=_grad(acc.unwrap_model(model)), loss=float(out.loss))
    torch.save(res, f"{path}/rank{rank}.pt")
    acc.end_training()


@pytest.mark.slow
def test_wdpo_finite_difference_two_gloo_workers_match_one_worker(tmp_path):
    spawn(_worker, 2, str(tmp_path))
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for variant in ("per-pair", "sqrt-mean"):
        g0, g1 = parts[0][variant]["grad"], parts[1][variant]["grad"]
        torch.testing.assert_close(g0, g1, rtol=0, atol=0)  # DDP: one gradient on all ranks
        halves = []
        for lo in (0, 2):  # one worker, each half its own micro-batch
            model, ref = _models()
            loss_and_backward(_cfg(variant), model, ref, _batch(ROWS[lo : lo + 2]))
            halves.append(_grad(model))
        assert (halves[0] - halves[1]).norm() > 1e-2 * halves[0].norm()  # the halves differ
        # the two workers equal one worker on the whole batch, up to the O(h^2) difference of
        # the step sizes h (each worker's h is taken on its own half)
        model, ref = _models()
        out = loss_and_backward(_cfg(variant), model, ref, _batch(ROWS))
        full = _grad(model)
        assert (g0 - full).norm() <= 1e-8 * full.norm(), variant
        # each worker's loss is its share; their mean is the one-worker objective
        mean_loss = (parts[0][variant]["loss"] + parts[1][variant]["loss"]) / 2
        assert mean_loss == pytest.approx(float(out.loss), rel=1e-12), variant
