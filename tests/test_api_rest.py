"""The API traps of issue 10 stay gone: one name per option (``learning_rate``, ``weights``),
options as a dataclass, loss keywords checked from signatures before training, one wrapper for
four-log-prob losses."""

import dataclasses
import inspect
import warnings

import numpy as np
import pytest
import torch

from rdpo_theory import InputError, approx, approx_reweight
from rdpo_theory import losses as NL
from rdpo_theory.approx import FitOptions
from rdpo_theory.torch import baselines as TB
from rdpo_theory.torch import losses as TL


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    y = (rng.random(80) < 0.7).astype(float)
    return X, y


# ---------------------------------------------------------------------------- FitOptions
def test_fit_options_have_help_and_defaults():
    fields = dataclasses.fields(FitOptions)
    assert len(fields) >= 10
    for f in fields:
        assert f.metadata.get("help"), f"FitOptions.{f.name} has no help text"
    assert FitOptions().learning_rate == 0.05 and FitOptions().batch_size is None


@pytest.mark.parametrize("front", ["dpo", "kldpo", "wdpo"])
def test_front_ends_take_options_as_keywords_and_lr_alias(data, front):
    X, y = data
    fn = getattr(approx, front)
    extra = {"dpo": {}, "kldpo": {"tau": 1.0}, "wdpo": {"rho0": 0.1}}[front]
    kw = dict(beta=1.0, max_steps=25, gtol=0.0, batch_size=16, seed=3, schedule="cosine")
    a = fn(X, y, learning_rate=0.03, optimizer="sgd", **kw, **extra)
    b = fn(X, y, lr=0.03, optimizer="sgd", **kw, **extra)
    c = fn(
        X,
        y,
        options=FitOptions(learning_rate=0.03, optimizer="sgd", **kw_opts(kw)),
        **extra,
        beta=1.0,
    )
    np.testing.assert_array_equal(a.theta, b.theta)
    np.testing.assert_array_equal(a.theta, c.theta)
    assert a.extras["learning_rate"] == 0.03 and a.steps == 25
    d = fn(X, y, lr=0.01, optimizer="sgd", **kw, **extra)  # the option is really used
    assert not np.allclose(a.theta, d.theta)


def kw_opts(kw):
    return {k: v for k, v in kw.items() if k != "beta"}


@pytest.mark.parametrize(
    "fn, extra",
    [
        (approx.dpo, {}),
        (approx.kldpo, {"tau": 1.0}),
        (approx.wdpo, {"rho0": 0.1}),
        (approx_reweight.chi2dpo, {"rho": 0.1}),
        (approx_reweight.drdpo, {"beta_prime": 1.0}),
    ],
)
def test_unknown_option_is_refused_with_valid_names(data, fn, extra):
    X, y = data
    with pytest.raises(InputError, match=r"unknown keyword 'lr_rate'.*learning_rate.*max_steps"):
        fn(X, y, beta=1.0, lr_rate=0.1, **extra)


def test_alias_and_name_together_and_bad_options(data):
    X, y = data
    with pytest.raises(InputError, match="both 'lr' and 'learning_rate'"):
        approx.dpo(X, y, beta=1.0, lr=0.1, learning_rate=0.1)
    with pytest.raises(InputError, match="learning_rate"):
        FitOptions(learning_rate=0)
    with pytest.raises(InputError, match="options must be a FitOptions"):
        approx.dpo(X, y, beta=1.0, options={"max_steps": 3})


def test_option_names_shared_with_train_config():
    """learning_rate, schedule, batch_size, max_steps, seed mean the same in both."""
    pytest.importorskip("accelerate")
    from rdpo_theory.torch.train import TrainConfig

    shared = {"learning_rate", "schedule", "batch_size", "max_steps", "seed"}
    assert shared <= {f.name for f in dataclasses.fields(FitOptions)}
    assert shared <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert "lr" not in {f.name for f in dataclasses.fields(TrainConfig)}
    # the schedules both know decay the same way: linear reaches 0 at max_steps
    res = approx.dpo(
        np.eye(2), np.array([1.0, 0.0]), beta=1.0, schedule="linear", max_steps=4, gtol=0.0
    )
    np.testing.assert_allclose(res.trace["lr"], 0.05 * np.array([1, 0.75, 0.5, 0.25, 0.0]))


# ---------------------------------------------------------------------------- weights
def _all_signatures():
    mods = (TL, TB, NL, approx, approx_reweight)
    for mod in mods:
        for name, fn in vars(mod).items():
            if inspect.isfunction(fn) and not name.startswith("_"):
                yield f"{mod.__name__}.{name}", inspect.signature(fn)


def test_data_weights_are_called_weights_everywhere():
    offenders = [n for n, sig in _all_signatures() if "base_weights" in sig.parameters]
    assert offenders == []
    for fn in (TL.kl_weights, TL.kldpo_objective, TB.chi2_objective, TB.drdpo_objective):
        assert "weights" in inspect.signature(fn).parameters


def test_base_weights_is_a_deprecated_alias():
    rng = np.random.default_rng(1)
    l = rng.random(6)
    p = rng.random(6)
    p /= p.sum()
    pt, lt = torch.tensor(p), torch.tensor(l)
    with pytest.warns(DeprecationWarning, match="base_weights"):
        old = TL.kl_weights(lt, tau=0.5, base_weights=pt)
    np.testing.assert_array_equal(old.numpy(), TL.kl_weights(lt, tau=0.5, weights=pt).numpy())
    with pytest.warns(DeprecationWarning):
        old_np = NL.kl_weights(l, tau=0.5, base_weights=p)
    np.testing.assert_allclose(old_np, TL.kl_weights(lt, tau=0.5, weights=pt).numpy(), rtol=1e-12)
    with pytest.raises(InputError, match="both"):
        TL.kl_weights(lt, tau=0.5, weights=pt, base_weights=pt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TB.chi2_objective(lt, rho=0.1, weights=pt)  # the new name never warns


# ---------------------------------------------------------------------------- four-log-prob form
LOSSES = [
    TL.dpo_loss,
    TL.kldpo_loss,
    TL.wdpo_loss,
    TB.cdpo_loss,
    TB.rdpo_loss,
    TB.ipo_loss,
    TB.drdpo_loss,
    TB.group_dpo_loss,
    TB.chi2dpo_loss,
    TB.cvardpo_loss,
]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda f: f.__name__)
def test_every_loss_has_the_four_logp_signature(loss):
    params = list(inspect.signature(loss).parameters.values())
    assert [p.name for p in params[:4]] == list(TL.LOGP_NAMES)
    assert all(p.kind is p.KEYWORD_ONLY for p in params[4:])
    assert "beta" in TL.loss_parameters(loss)


def test_logp_loss_wrapper_forms_margins_and_stats():
    @TL.logp_loss
    def hinge_loss(margins, *, beta, gap: float = 1.0):
        """Hinge on the margin."""
        per = torch.relu(gap - margins)
        return TL.LossOutput(per.mean(), per, margins)

    pc, pr, rc, rr = (
        torch.tensor(v, dtype=torch.float64)
        for v in ([1.0, 0.0], [0.0, 0.5], [0.2, 0.1], [0.1, 0.1])
    )
    out = hinge_loss(pc, pr, rc, rr, beta=2.0, gap=1.0)
    m = 2.0 * ((pc - rc) - (pr - rr))
    torch.testing.assert_close(out.margins, m)
    torch.testing.assert_close(out.loss, torch.relu(1.0 - m).mean())
    assert float(out.stats["accuracy"]) == 0.5 and hinge_loss.__doc__ == "Hinge on the margin."
    assert list(TL.loss_parameters(hinge_loss)) == ["beta", "gap"]
    with pytest.raises(InputError, match="policy_rejected_logps"):
        hinge_loss(pc, pr[:1], rc, rr, beta=1.0)


# ---------------------------------------------------------------------------- TrainConfig
def test_train_config_checks_loss_kwargs_from_signatures():
    pytest.importorskip("accelerate")
    from rdpo_theory.torch.train import TrainConfig, check_loss_kwargs, loss_methods, resolve_loss

    with pytest.raises(InputError, match=r"must give 'rho' for method 'chi2dpo'"):
        TrainConfig(method="chi2dpo")
    with pytest.raises(InputError, match=r"must give 'level'"):
        TrainConfig(method="cvardpo")
    with pytest.raises(InputError, match=r"must give 'eps'"):
        TrainConfig(method="cdpo")
    with pytest.raises(InputError, match=r"unknown keyword 'radius'.*valid keywords: rho"):
        TrainConfig(method="chi2dpo", loss_kwargs={"rho": 0.1, "radius": 1})
    # group_dpo trains from the rows' group column; it needs its exponentiated-gradient step
    with pytest.raises(InputError, match="group_step"):
        TrainConfig(method="group_dpo")
    with pytest.raises(InputError, match="trainer sets itself"):
        TrainConfig(method="wdpo", loss_kwargs={"rho0": 0.1, "inputs": None})
    with pytest.raises(InputError, match="method must be one of"):
        TrainConfig(method="simpo")
    # every other method the registry lists is accepted once its required keywords are given
    for m in loss_methods():
        if m == "group_dpo":
            continue
        params = TL.loss_parameters(resolve_loss(m))
        kw = {
            k: 0.1
            for k, p in params.items()
            if k not in ("beta", "inputs") and p.default is inspect.Parameter.empty
        }
        assert TrainConfig(method=m, loss_kwargs=kw).loss_kwargs == check_loss_kwargs(m, kw)


# ---------------------------------------------------------------------------- method ids
def test_every_study_uses_the_method_ids():
    from pathlib import Path

    import pandas as pd

    from rdpo_theory import methods as M
    from rdpo_theory.studies import rates as R
    from rdpo_theory.studies import shift as S

    assert set(R.METHODS) <= set(M.METHODS)
    assert set(S.METHODS) <= set(M.METHODS)
    figures = Path(__file__).resolve().parents[1] / "figures"
    for name in ("rates_runs", "shift_runs", "approx_runs", "llm_tiny", "llm_tiny_metrics"):
        path = figures / f"{name}.csv"
        if not path.exists():
            continue
        used = set(pd.read_csv(path, usecols=["method"])["method"])
        assert used <= set(M.METHODS), (name, used - set(M.METHODS))
    with pytest.raises(InputError, match="method must be one of"):
        M.check("kldpo(tau=0.1)")


def test_method_ids_of_trained_losses_and_labels():
    from rdpo_theory import methods as M

    assert M.trained_id("kldpo") == M.trained_id("kldpo", "normalized") == "kldpo-alg2"
    assert M.trained_id("kldpo", "clipped") == "kldpo-clipped"
    assert M.trained_id("wdpo", "per-pair") == "wdpo-per-pair"
    assert M.trained_id("cdpo") == "cdpo"
    with pytest.raises(InputError):
        M.trained_id("wdpo", "sqrt")
    assert M.label("kldpo-alg2", tau=0.1, rho0=float("nan")) == "KLDPO (Alg. 2), tau=0.1"
    assert M.family("wdpo-exact") == M.family("wdpo-finite") == "w1"
    assert M.family("wdpo-alg1") == M.family("wdpo-per-pair") == "w2"


# ---------------------------------------------------------------------------- layering
def test_importing_plots_keeps_the_users_backend():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (
        "import matplotlib; matplotlib.use('svg'); import rdpo_theory.plots, "
        "rdpo_theory.plots.rates, rdpo_theory.plots.shift; print(matplotlib.get_backend())"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["PYTHONPATH"] = str(root)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "svg"


def test_no_module_imports_another_modules_underscore_names():
    """Shared helpers are promoted (public names) or moved, never imported as ``_name``
    (``_validate`` is the package's private validation module, imported by design)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bad = []
    for f in sorted((root / "rdpo_theory").rglob("*.py")) + sorted(
        (root / "benchmarks").glob("*.py")
    ):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                bad += [
                    f"{f.name}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                    and not a.name.startswith("__")
                    and a.name != "_validate"
                ]
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id not in ("self", "cls")
            ):
                bad.append(f"{f.name}:{node.lineno} {node.value.id}.{node.attr}")
    assert bad == []


def test_studies_import_nothing_from_commands_and_do_not_write():
    import ast
    from pathlib import Path

    studies = Path(__file__).resolve().parents[1] / "rdpo_theory" / "studies"
    for f in studies.glob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                assert "commands" not in mod and "plots" not in mod and mod != "figures", (f, mod)
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("to_csv", "savefig"), (f.name, node.lineno)


def test_robust_risk_lives_once_in_exact():
    """exact.robust_risk against independent formulas; the studies call it (no own copy)."""
    from pathlib import Path

    from rdpo_theory.data import as_data
    from rdpo_theory.exact import robust_risk
    from rdpo_theory.exact.certificates import transport_primal_sup
    from rdpo_theory.losses import dpo_losses, dpo_risk

    rng = np.random.default_rng(5)
    X = rng.normal(size=(12, 2))
    y = (rng.random(12) < 0.6).astype(float)
    data = as_data(X, y)
    theta = np.array([0.7, -0.4])
    base = dpo_risk(theta, data, beta=1.5)
    assert robust_risk(theta, data, method="dpo", beta=1.5) == pytest.approx(base, rel=1e-15)
    # W1, continuous x: E l + rho beta ||theta||
    w1 = robust_risk(theta, data, method="wdpo", rho=0.1, beta=1.5)
    assert w1 == pytest.approx(base + 0.1 * 1.5 * np.linalg.norm(theta), rel=1e-14)
    # KL: the dual min_lam lam rho + lam log E exp(l / lam), by a grid
    l = dpo_losses(theta, data, beta=1.5)
    lams = np.geomspace(1e-3, 1e3, 200001)
    from scipy.special import logsumexp

    lse = logsumexp(np.outer(1 / lams, l), axis=1) - np.log(l.size)
    dual = np.min(lams * 0.05 + lams * lse)
    kl = robust_risk(theta, data, method="kldpo", rho=0.05, beta=1.5)
    assert base < kl <= dual + 1e-9 and kl == pytest.approx(dual, rel=1e-6)
    # finite candidates with label flips allowed at cost kappa: the transport LP
    cand = as_data(np.vstack([X, X]), np.r_[y, 1 - y])
    C = np.linalg.norm(X[:, None] - cand.X[None], axis=2) + 0.3 * (y[:, None] != cand.y[None])
    ref = transport_primal_sup(dpo_losses(theta, cand, beta=1.5), data.weights, C, 0.5)[0]
    got = robust_risk(theta, data, method="wdpo", rho=0.5, beta=1.5, candidates=cand, kappa=0.3)
    assert got == pytest.approx(ref, rel=1e-12)
    # chi-square: the sorted closed form equals the dual eta + sqrt(1 + 2 rho) ||(l - eta)+||
    etas = np.linspace(l.min() - 3, l.max(), 200001)
    chi_dual = np.min(
        etas + np.sqrt(1.2) * np.sqrt(np.mean(np.maximum(l - etas[:, None], 0) ** 2, 1))
    )
    chi = robust_risk(theta, data, method="chi2", rho=0.1, beta=1.5)
    assert base < chi <= chi_dual + 1e-12 and chi == pytest.approx(chi_dual, rel=1e-7)
    with pytest.raises(InputError, match="method must be one of"):
        robust_risk(theta, data, method="cdpo", rho=0.1, beta=1.0)
    with pytest.raises(InputError, match="rho must be 0"):
        robust_risk(theta, data, method="dpo", rho=0.1, beta=1.0)
    studies = Path(__file__).resolve().parents[1] / "rdpo_theory" / "studies"
    for f in studies.glob("*.py"):
        text = f.read_text()
        assert "kl_primal_sup" not in text and "transport_primal_sup" not in text, f.name


def test_rdpo_llm_builds_a_config_for_every_trainable_method(tmp_path):
    pytest.importorskip("accelerate")
    from rdpo_theory.cli import build_parser
    from rdpo_theory.commands.llm import build_configs, check_args
    from rdpo_theory.torch.train import loss_methods

    methods = [m for m in loss_methods() if m != "group_dpo"]
    argv = ["llm", "--model", "m", "--dataset", "d.jsonl", "--out", str(tmp_path), "--methods"]
    args = build_parser().parse_args(argv + methods)
    check_args(args)
    configs = build_configs(args)
    assert set(configs) == set(methods)
    assert configs["chi2dpo"].loss_kwargs == {"rho": 0.1}
    assert configs["drdpo"].loss_kwargs == {"beta_prime": 1.0}
