"""Issue 23, trainer side: TrainConfig's options declared once (help, choices, constraints),
`rdpo llm`'s flags generated from them with the old flags as aliases, the normaliser
vocabulary ("batch", with "micro-batch" deprecated), the weight semantics of the torch losses,
and rows with nothing to train on."""

import argparse
import dataclasses
import warnings

import pytest

torch = pytest.importorskip("torch")

from rdpo_theory.errors import InputError  # noqa: E402
from rdpo_theory.options import invalid_values  # noqa: E402
from rdpo_theory.torch import losses as TL  # noqa: E402
from rdpo_theory.torch.normalizers import DEFAULT_TRAINER_NORMALIZER  # noqa: E402
from rdpo_theory.torch.train import TrainConfig, check_rows  # noqa: E402

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _llm_parser():
    from rdpo_theory.commands import llm

    root = argparse.ArgumentParser(prog="rdpo")
    sub = root.add_subparsers()
    llm.add_parser(sub)
    llm.add_config_arguments(sub.choices["llm"])
    return root, sub.choices["llm"]


def test_every_field_is_declared_with_help():
    for name, f in FIELDS.items():
        assert f.metadata.get("help"), name
        assert len(f.metadata["help"]) > 15, name


def test_llm_help_comes_from_trainconfig(monkeypatch):
    """Every command-line field is a flag named after it, with the field's help text."""
    from rdpo_theory.commands.llm import TRAIN_EXCLUDED

    monkeypatch.setenv("COLUMNS", "100000")  # no line wrapping inside hyphenated words

    _, p = _llm_parser()
    text = " ".join(p.format_help().split())
    cli = [n for n, f in FIELDS.items() if f.metadata["cli"]]
    assert set(cli) == set(FIELDS) - set(TRAIN_EXCLUDED)
    for name in cli:
        assert f"--{name}" in text, name
        assert " ".join(FIELDS[name].metadata["help"].split()) in text, name
    assert "--lr" in text and "--steps" in text and "--warmup" in text  # old flags kept


def test_every_llm_option_has_help():
    _, p = _llm_parser()
    for action in p._actions:  # noqa: SLF001 - argparse keeps no public list of actions
        assert action.help and len(action.help) > 8, action.option_strings


def _configs(argv):
    from rdpo_theory.commands.llm import build_configs, check_args

    root, _ = _llm_parser()
    args = root.parse_args(["llm", "--model", "m", "--dataset", "d.jsonl", *argv])
    check_args(args)
    return build_configs(args)


def test_old_flags_parse_to_the_same_config(tmp_path):
    common = ["--out", str(tmp_path), "--methods", "dpo", "kldpo"]
    old = _configs(
        [*common, "--lr", "3e-4", "--steps", "7", "--warmup", "2", "--batch-size", "2"]
        + ["--max-length", "64", "--on-nonfinite", "skip", "--robust-decay", "0.5"]
    )
    new = _configs(
        [*common, "--learning_rate", "3e-4", "--max_steps", "7", "--warmup_steps", "2"]
        + ["--batch_size", "2", "--max_length", "64", "--on_nonfinite", "skip"]
        + ["--robust_decay", "0.5"]
    )
    assert old == new
    kl = new["kldpo"]
    assert (kl.learning_rate, kl.max_steps, kl.warmup_steps, kl.batch_size) == (3e-4, 7, 2, 2)
    assert (kl.max_length, kl.on_nonfinite, kl.robust_decay) == (64, "skip", 0.5)
    assert new["dpo"].robust_decay == FIELDS["robust_decay"].default  # robust methods only
    default = _configs(common)["dpo"]  # rdpo llm's own defaults
    assert (default.batch_size, default.learning_rate, default.warmup_steps) == (4, 5e-6, 10)
    assert default.max_grad_norm == 1.0
    no_clip = _configs([*common, "--max_grad_norm", "none", "--no-progress"])["dpo"]
    assert no_clip.max_grad_norm is None and no_clip.progress is False


def test_field_errors_name_the_field():
    with pytest.raises(InputError, match="The 'robust_decay' parameter of TrainConfig"):
        TrainConfig(robust_decay=0)
    with pytest.raises(InputError, match="The 'batch_size' parameter of TrainConfig"):
        TrainConfig(batch_size=True)


@pytest.mark.parametrize(
    "name", [n for n, f in FIELDS.items() if f.metadata.get("constraints") or f.metadata["choices"]]
)
def test_generated_invalid_values_are_refused(name):
    f = FIELDS[name]
    cs = f.metadata["constraints"]
    if cs is None:
        from rdpo_theory.options import Options

        cs = [Options(f.metadata["choices"])]
    bad = invalid_values(cs)
    assert bad
    for v in bad:
        with pytest.raises(InputError, match=f"'{name}'"):
            TrainConfig(**{name: v})


def test_micro_batch_is_a_deprecated_alias_of_batch(tmp_path):
    assert DEFAULT_TRAINER_NORMALIZER == "auto"
    assert TrainConfig().robust_normalizer == DEFAULT_TRAINER_NORMALIZER
    with pytest.warns(DeprecationWarning, match="'batch'"):
        cfg = TrainConfig(method="kldpo", loss_kwargs={"tau": 1.0}, robust_normalizer="micro-batch")
    assert cfg.robust_normalizer == "batch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig(method="kldpo", loss_kwargs={"tau": 1.0}, robust_normalizer="batch")
    with pytest.warns(DeprecationWarning):
        via_cli = _configs(["--out", str(tmp_path), "--robust_normalizer", "micro-batch"])
    assert via_cli["kldpo"].robust_normalizer == "batch"
    with pytest.raises(InputError, match="robust_normalizer"):
        TrainConfig(robust_normalizer="minibatch")


def test_resume_accepts_a_run_recorded_as_micro_batch():
    from rdpo_theory.torch.run_config import differing_fields

    old = {"robust_normalizer": "micro-batch", "beta": 0.1}
    assert differing_fields(old, {"robust_normalizer": "batch", "beta": 0.1}) == []


# ------------------------------------------------------------------- weight semantics
def test_loss_weights_are_relative_not_summing_to_one():
    """The torch losses take raw data weights: the loss is sum w l / sum w (independent
    formula), any positive scale gives the same loss, and a pair of weight 2 counts twice.
    Only the objectives that take the base measure itself need weights summing to 1."""
    torch.manual_seed(0)
    lp = [-torch.rand(5, dtype=torch.float64) * 3 for _ in range(4)]
    w = torch.tensor([1.0, 2.0, 0.0, 3.0, 0.5], dtype=torch.float64)  # sums to 6.5
    per = TL.dpo_pair_losses(TL.dpo_margins(*lp, beta=0.5))
    want = float((w * per).sum() / w.sum())
    for scale in (1.0, 1e-3, 40.0):
        assert float(TL.dpo_loss(*lp, beta=0.5, weights=scale * w).loss) == pytest.approx(want)
    twice = [torch.cat([t, t[1:2]]) for t in lp]  # pair 1 repeated: weight 2 = two copies
    ones = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert float(TL.dpo_loss(*twice, beta=0.5, weights=ones).loss) == pytest.approx(
        float(TL.dpo_loss(*lp, beta=0.5, weights=torch.tensor([1.0, 2, 0, 1, 1]).double()).loss)
    )
    kl = TL.kldpo_loss(*lp, beta=0.5, tau=1.0, weights=w)
    p = w / w.sum()
    obj, _ = TL.kldpo_objective(per, tau=1.0, weights=p)  # the base measure: sums to 1
    assert float(kl.loss) == pytest.approx(float(obj) * 1.0, rel=1e-12)
    with pytest.raises(InputError, match="sum to 1"):
        TL.kldpo_objective(per, tau=1.0, weights=w)


# ------------------------------------------------------------------- rows
def test_rows_with_three_empty_strings_are_refused_naming_the_row():
    good = {"prompt": "a", "chosen": "b", "rejected": "c"}
    empty = {"prompt": "", "chosen": "", "rejected": ""}
    with pytest.raises(InputError, match="dataset row 2: prompt, chosen and rejected are all"):
        check_rows([good, good, empty, good])
    rows = check_rows([good, {"prompt": "", "chosen": "x", "rejected": ""}])  # one non-empty
    assert len(rows) == 2


def test_llm_refuses_an_empty_row_in_file_order(tmp_path, capsys):
    """rdpo llm checks the rows before its train/held-out split, so the row number is the
    file's (0-based, non-blank rows), not a position in the shuffled training rows."""
    import json

    from rdpo_theory.cli import main

    ds = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 5
    rows[3] = {"prompt": "", "chosen": "", "rejected": ""}
    ds.write_text("\n".join(json.dumps(r) for r in rows))
    argv = ["llm", "--model", str(tmp_path / "m"), "--dataset", str(ds)]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "dataset row 3: prompt, chosen and rejected are all empty" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_trl_and_trainer_share_the_default_and_the_alias():
    """RobustDPOTrainer's default is the same constant (read from its source: importing trl
    costs seconds and the TRL tests run the trainer itself)."""
    import ast

    from rdpo_theory.torch import normalizers
    from rdpo_theory.torch.normalizers import check_trainer_normalizer

    with pytest.warns(DeprecationWarning):
        assert check_trainer_normalizer("micro-batch", "dpo", {}) == "batch"
    from pathlib import Path

    tree = ast.parse((Path(normalizers.__file__).parent / "trl.py").read_text())
    init = next(
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "__init__"
    )
    names = [a.arg for a in init.args.kwonlyargs]
    default = init.args.kw_defaults[names.index("robust_normalizer")]
    assert isinstance(default, ast.Name) and default.id == "DEFAULT_TRAINER_NORMALIZER"
