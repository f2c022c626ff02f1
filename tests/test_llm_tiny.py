"""The miniature emotion pipeline end to end at smoke size, its pieces, and ``rdpo llm``."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("transformers")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # LM tests (minutes)

from rdpo_theory import InputError  # noqa: E402
from rdpo_theory.cli import main  # noqa: E402
from rdpo_theory.studies import emotion as E  # noqa: E402
from rdpo_theory.worlds import mixture_reward  # noqa: E402


def test_rewards_closed_form():
    r = E.emotion_rewards(["rage the mad afraid", "", "hide hide hide"], 4)
    np.testing.assert_allclose(r, np.array([[3, 2], [1, 1], [1, 4]]) / 6.0)
    with pytest.raises(InputError, match="completion_len"):
        E.emotion_rewards(["a"], 0)


def test_corpus_and_tokenizer_round_trip():
    cfg = E.EmotionConfig.smoke()
    corpus = E.sample_corpus(cfg, 50, 0)
    assert all(len(s) == cfg.seq_len for s in corpus)
    assert corpus == E.sample_corpus(cfg, 50, 0)  # seeded
    tok = E.build_tokenizer()
    text = " ".join(corpus[0])
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids) == text


def test_labels_follow_bradley_terry_on_the_mixture():
    """With a huge reward_scale the chosen completion has the larger alpha0-mixed reward."""
    cfg = E.EmotionConfig.smoke(reward_scale=1e6, mixtures=("convex", "geometric"))
    tok = E.build_tokenizer()
    model = E.build_model(cfg, 0)
    E.sft(model, tok, E.sample_corpus(cfg, cfg.n_corpus, 0), cfg, 0)
    rows, pairs = E.preference_rows(model, tok, cfg, seed=0)
    for mix in cfg.mixtures:
        ch = E.emotion_rewards([r["chosen"] for r in rows[mix]], cfg.completion_len)
        rj = E.emotion_rewards([r["rejected"] for r in rows[mix]], cfg.completion_len)
        mc = mixture_reward(ch[:, 0], ch[:, 1], cfg.alpha0, mix)
        mr = mixture_reward(rj[:, 0], rj[:, 1], cfg.alpha0, mix)
        assert np.all(mc >= mr - 1e-12)
    assert set(pairs["mixture"]) == {"convex", "geometric"}


def test_pipeline_smoke_end_to_end(tmp_path):
    cfg = E.EmotionConfig.smoke()
    table, metrics, pairs = E.run_emotion(cfg, seeds=(0,), jobs=1, progress=False)
    assert set(table["method"]) == {"dpo", "wdpo-alg1", "kldpo-alg2", "sft"}
    assert len(table) == (len(cfg.methods) + 1) * 2 * len(cfg.alphas)  # 2 evaluation mixtures
    # parameters in their own columns, never inside the method id
    assert set(table.loc[table["method"] == "kldpo-alg2", "tau"]) == {1.0}
    assert set(table.loc[table["method"] == "wdpo-alg1", "rho0"]) == {1.0}
    assert table.loc[table["method"] == "dpo", ["tau", "rho0"]].isna().all().all()
    assert table["reward"].between(0, 1).all()
    # convex mixed reward is exactly linear between the two group rewards
    conv = table[table["eval_mixture"] == "convex"]
    np.testing.assert_allclose(
        conv["reward"], conv["alpha"] * conv["r_anger"] + (1 - conv["alpha"]) * conv["r_fear"]
    )
    # geometric <= convex (AM-GM), per completion and so in the mean
    geo = table[table["eval_mixture"] == "geometric"].reset_index(drop=True)
    assert np.all(geo["reward"].to_numpy() <= conv["reward"].to_numpy() + 1e-12)
    assert {"loss", "reward_margin", "weight_entropy", "penalty"} <= set(metrics.columns)
    from rdpo_theory.commands.llm import write_tiny_outputs

    paths = write_tiny_outputs(tmp_path, table, metrics, pairs, cfg)
    assert all(p.exists() for p in paths)
    # the figure is drawn from the CSV alone
    from rdpo_theory.plots.llm import plot_emotion

    redraw = plot_emotion(tmp_path / "llm_tiny.csv", tmp_path / "again.png")
    assert redraw.stat().st_size > 1000
    back = pd.read_csv(tmp_path / "llm_tiny.csv")
    assert len(back) == len(table)


def test_cli_model_and_dataset_path(tmp_path, capsys):
    """`rdpo llm --model DIR --dataset FILE` on a tiny model saved with save_pretrained."""
    cfg = E.EmotionConfig.smoke()
    model_dir = tmp_path / "tiny-gpt2"
    E.build_model(cfg, 0).save_pretrained(model_dir)
    E.build_tokenizer().save_pretrained(model_dir)
    ds = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "the day", "chosen": " rage mad", "rejected": " afraid hide"}] * 20
    ds.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    code = main(
        [
            "llm",
            "--model",
            str(model_dir),
            "--dataset",
            str(ds),
            "--out",
            str(out),
            "--methods",
            "dpo",
            "wdpo",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--lr",
            "1e-2",
            "--rho0",
            "0.1",
            "--eval-fraction",
            "0.2",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dpo"]["heldout_pairs"] == 4
    assert summary["dpo"]["heldout_accuracy"] == 1.0  # the same pair, learnt
    assert (out / "wdpo" / "metrics.jsonl").exists() and (out / "dpo" / "final").is_dir()
    assert "held-out reward accuracy" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    assert main(["llm", "--model", str(tmp_path), "--dataset", str(tmp_path / "no.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b"}\n')
    assert main(["llm", "--model", str(tmp_path), "--dataset", str(bad)]) == 2
    assert "rejected" in capsys.readouterr().err


def test_figure_registered():
    from rdpo_theory.figures import load_all

    assert "llm-tiny" in load_all()
