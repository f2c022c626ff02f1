"""Issue 23: a log-probability of +inf (impossible) or NaN given to any torch loss gives a NaN
loss (never a finite number), or with the debug flag an InputError naming the argument; the
trainer's on_nonfinite rule then names the tensor. -inf (probability 0) stays arithmetic."""

import math

import pytest

torch = pytest.importorskip("torch")

from rdpo_theory.errors import InputError  # noqa: E402
from rdpo_theory.torch import guards  # noqa: E402
from rdpo_theory.torch.losses import LOGP_NAMES  # noqa: E402
from rdpo_theory.torch.train import loss_methods, resolve_loss  # noqa: E402

#: Parameters of each loss (the trainer-supplied ones for wdpo and group_dpo added below).
PARAMS = {
    "kldpo": {"tau": 1.0},
    "wdpo": {"rho0": 0.1},
    "cdpo": {"eps": 0.1},
    "rdpo": {"eps": 0.1},
    "chi2dpo": {"rho": 0.5},
    "cvardpo": {"level": 0.5},
    "drdpo": {"beta_prime": 1.0},
    "group_dpo": {"group_step": 0.1, "n_groups": 2},
}
#: Losses that hand the per-pair losses to a numpy routine, which refuses non-finite ones
#: with an InputError (an error, not a finite loss; the message names ``losses``).
NUMPY_CHECKED = ("chi2dpo", "cvardpo")


def _call(method, logps, **extra):
    kw = dict(PARAMS.get(method, {}), **extra)
    if method == "wdpo":
        kw["inputs"] = logps[0]
    if method == "group_dpo":
        kw["groups"] = torch.tensor([0, 1, 0, 1])
        kw["group_weights"] = torch.tensor([0.5, 0.5], dtype=torch.float64)
    return resolve_loss(method)(*logps, beta=0.5, **kw)


def _logps(which: int, value: float):
    torch.manual_seed(0)
    lp = [(-torch.rand(4, dtype=torch.float64) * 5).requires_grad_(True) for _ in range(4)]
    with torch.no_grad():
        lp[which][1] = value
    return lp


@pytest.mark.parametrize("method", loss_methods())
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_impossible_logp_never_gives_a_finite_loss(method, value):
    """Before: +inf in policy_chosen_logps gave DPO loss 0 on that pair, a finite mean."""
    for which in range(4):
        if method in NUMPY_CHECKED:
            with pytest.raises(InputError, match="NaN or inf"):
                _call(method, _logps(which, value))
            continue
        out = _call(method, _logps(which, value))
        assert math.isnan(float(out.loss)), (method, LOGP_NAMES[which], float(out.loss))


def test_logp_decorator_is_no_method():
    """loss_methods() listed 'logp' (the logp_loss decorator imported by baselines)."""
    assert "logp" not in loss_methods()
    with pytest.raises(InputError, match="method must be one of"):
        resolve_loss("logp")


@pytest.mark.parametrize("which", range(4))
def test_debug_flag_names_the_impossible_argument(which):
    guards.set_debug(True)
    try:
        for method in ("dpo", "kldpo", "wdpo"):
            with pytest.raises(InputError, match=LOGP_NAMES[which]):
                _call(method, _logps(which, math.inf))
    finally:
        guards.set_debug(None)


def test_minus_inf_reference_is_arithmetic():
    """-inf is a log-probability (probability 0): the margin is +inf and DPO's loss 0 there,
    exactly the limit; no NaN is made up."""
    lp = _logps(2, -math.inf)
    out = _call("dpo", lp)
    assert float(out.per_pair[1]) == 0.0
    assert torch.isfinite(out.loss)
