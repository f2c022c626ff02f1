"""The declared-options module: one validator, one message shape, generated flags."""

import argparse
import dataclasses

import numpy as np
import pytest

from rdpo_theory.errors import InputError
from rdpo_theory.options import (
    DECLARED,
    NONE,
    NONNEGATIVE,
    POSITIVE_INT,
    Interval,
    Options,
    add_arguments,
    check,
    declare,
    from_arguments,
    invalid_values,
    option,
    validate_fields,
)


def test_message_shape():
    with pytest.raises(
        InputError, match=r"^The 'rho' parameter of kldpo must be a float >= 0\. Got -1 instead\.$"
    ):
        check("rho", -1, NONNEGATIVE, owner="kldpo")


@pytest.mark.parametrize("bad", ["0.1", True, float("nan"), float("inf"), None, [0.1]])
def test_strings_bools_nan_refused_as_numbers(bad):
    with pytest.raises(InputError, match="'rho'"):
        check("rho", bad, NONNEGATIVE, owner="kldpo")


def test_numpy_scalars_accepted():
    assert check("rho", np.float64(0.5), NONNEGATIVE) == 0.5
    assert check("n", np.int64(3), POSITIVE_INT) == 3


@pytest.mark.parametrize(
    "constraints",
    [
        NONNEGATIVE,
        POSITIVE_INT,
        POSITIVE_INT + [NONE],
        [Options(("a", "b"))],
        [Interval(float, 0, 1, closed="neither")],
    ],
)
def test_generated_invalid_values_are_refused(constraints):
    vals = invalid_values(constraints)
    assert len(vals) >= 3
    for v in vals:
        with pytest.raises(InputError):
            check("p", v, constraints)


@dataclasses.dataclass
class _Cfg:
    max_steps: int = option(
        10, help="optimizer steps", constraints=POSITIVE_INT, aliases=("--steps",)
    )
    lr: float = option(
        1e-3, help="learning rate", constraints=[Interval(float, 0, None, closed="neither")]
    )
    mode: str = option("a", help="mode", choices=("a", "b"))
    flag: bool = option(False, help="a switch")

    def __post_init__(self):
        validate_fields(self)


def test_flags_generated_from_dataclass():
    p = argparse.ArgumentParser()
    assert add_arguments(p, _Cfg) == ["max_steps", "lr", "mode", "flag"]
    cfg = from_arguments(
        _Cfg, p.parse_args(["--steps", "5", "--max-steps", "6", "--lr", "0.1", "--flag"])
    )
    assert cfg == _Cfg(max_steps=6, lr=0.1, mode="a", flag=True)
    assert from_arguments(_Cfg, p.parse_args([])) == _Cfg()
    with pytest.raises(SystemExit):
        p.parse_args(["--max_steps", "1_000"])
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "c"])


def test_fields_validated():
    with pytest.raises(InputError, match="'max_steps' parameter of _Cfg"):
        _Cfg(max_steps=0)
    with pytest.raises(InputError, match="'mode'"):
        _Cfg(mode="c")


@declare({"rho": NONNEGATIVE, "n": POSITIVE_INT})
def _solver(x, *, rho, n=1):
    return x * rho * n


def test_declare_checks_before_the_body_and_registers():
    assert _solver(2, rho=0.5) == 1.0
    with pytest.raises(InputError, match="The 'rho' parameter of _solver"):
        _solver(2, rho="0.5")
    with pytest.raises(InputError, match="'n'"):
        _solver(2, rho=0.5, n=0)
    assert any(k.endswith("_solver") for k in DECLARED)
    assert _solver.parameter_constraints["n"] == POSITIVE_INT
    # the generated-test recipe: one invalid value alone is refused before anything else
    for bad in invalid_values(NONNEGATIVE):
        with pytest.raises(InputError):
            _solver(rho=bad)
