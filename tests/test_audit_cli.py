"""``rdpo audit`` on a log-prob table and on saved tiny causal LMs; scoring against a
pair-by-pair reference and a finite difference of the loss in the input embeddings."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from rdpo_theory import audit as A  # noqa: E402
from rdpo_theory import losses as L  # noqa: E402
from rdpo_theory.cli import main  # noqa: E402
from rdpo_theory.studies import audit as S  # noqa: E402
from rdpo_theory.studies import emotion as E  # noqa: E402

ROWS = [
    {"prompt": "the day", "chosen": " rage mad", "rejected": " afraid hide"},
    {"prompt": "a road by the", "chosen": " river", "rejected": " tree light city"},
    {"prompt": "night", "chosen": " he was afraid and", "rejected": " she"},
    {"prompt": "it is", "chosen": " fury", "rejected": " hate hate"},
    {"prompt": "then there", "chosen": " door window", "rejected": " table"},
]


def _table(rng, n=60, models=("a", "b")):
    parts = []
    for m in models:
        parts.append(
            pd.DataFrame(
                {
                    "model": m,
                    "chosen_logps": rng.normal(-10, 2, n),
                    "rejected_logps": rng.normal(-11, 2, n),
                    "ref_chosen_logps": rng.normal(-10, 1, n),
                    "ref_rejected_logps": rng.normal(-10, 1, n),
                    "weight": rng.uniform(0.5, 2.0, n),
                    "group": rng.choice(["x", "y", "z"], n),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def test_audit_logps_table_matches_the_api(tmp_path, capsys):
    rng = np.random.default_rng(0)
    t = _table(rng)
    path = tmp_path / "logps.csv"
    t.to_csv(path, index=False)
    out = tmp_path / "out"
    assert main(["audit", "--logps", str(path), "--beta", "0.5", "--out", str(out)]) == 0
    table = pd.read_csv(out / "audit.csv")
    assert set(table["model"]) == {"a", "b"} and set(table["divergence"]) == {"kl", "chi2", "cvar"}
    sub = t[t["model"] == "b"]
    m = (
        0.5
        * (
            (sub.chosen_logps - sub.ref_chosen_logps)
            - (sub.rejected_logps - sub.ref_rejected_logps)
        ).to_numpy()
    )
    p = sub.weight.to_numpy() / sub.weight.sum()
    for div in ("kl", "chi2", "cvar"):
        row = table[(table.model == "b") & (table.divergence == div) & (table.alpha == 0.1)]
        r = A.radius_for_subpopulation(0.1, div)
        ref = A.profile(L.dpo_loss(m), weights=p, divergence=div, rhos=[r])
        assert row["worst_loss"].iloc[0] == pytest.approx(ref["worst_loss"].iloc[0], rel=1e-12)
        assert row["worst_error"].iloc[0] == pytest.approx(
            A.worst_case_error(m, weights=p, divergence=div, rho=r), rel=1e-12
        )
    # the worst group's loss is below the audit at the ball covering its share
    groups = pd.read_csv(out / "audit_groups.csv")
    for model, g in groups.groupby("model"):
        kl = table[(table.model == model) & (table.divergence == "kl")]
        share = g["share"].min()
        wl = np.interp(-np.log(share), kl["radius"], kl["worst_loss"])
        assert g["loss"].max() <= wl + 1e-9
    top = [json.loads(s) for s in (out / "top_pairs.jsonl").read_text().splitlines()]
    assert len(top) == 2 * 3 * 10 and top[0]["rank"] == 1 and top[0]["ratio"] >= top[1]["ratio"]
    assert (out / "audit.png").stat().st_size > 0
    assert "worst-case DPO loss" in capsys.readouterr().out


def test_audit_bad_tables_name_the_row(tmp_path, capsys):
    t = _table(np.random.default_rng(1), n=5, models=("a",))
    t.loc[3, "weight"] = -1.0
    path = tmp_path / "bad.csv"
    t.to_csv(path, index=False)
    assert main(["audit", "--logps", str(path), "--out", str(tmp_path / "o")]) == 2
    # pandas row 3 is file line 5 (the header is line 1)
    assert "line 5, column 'weight': expected a number >= 0" in capsys.readouterr().err
    t = _table(np.random.default_rng(1), n=5, models=("a",)).drop(columns="ref_rejected_logps")
    t.to_csv(path, index=False)
    assert main(["audit", "--logps", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "ref_rejected_logps" in capsys.readouterr().err
    ds = tmp_path / "pairs.jsonl"
    rows = [dict(r, weight=1.0) for r in ROWS]
    del rows[2]["weight"]
    ds.write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["audit", "--model", str(tmp_path), "--dataset", str(ds)]) == 2
    assert "row 2 has no 'weight'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny")
    cfg = E.EmotionConfig.smoke()
    tok = E.build_tokenizer()
    for name, seed in (("ref", 0), ("dpo", 1), ("wdpo", 2)):
        E.save_model(E.build_model(cfg, seed), tok, root / name)
    return root


def test_score_pairs_matches_pair_by_pair_and_finite_differences(tiny):
    from transformers import AutoModelForCausalLM

    from rdpo_theory.torch.lm import encode_pairs, pair_logps
    from rdpo_theory.torch.score import score_pairs

    tok = E.build_tokenizer()
    pol = AutoModelForCausalLM.from_pretrained(tiny / "dpo").double()
    ref = AutoModelForCausalLM.from_pretrained(tiny / "ref").double()
    beta = 0.7
    t = score_pairs(pol, tok, ROWS, ref_model=ref, beta=beta, batch_size=3)
    for i, r in enumerate(ROWS):  # one pair per batch: no padding at all
        b = encode_pairs(tok, [r["prompt"]], [r["chosen"]], [r["rejected"]])
        with torch.no_grad():
            pc, pr, _ = pair_logps(pol, b)
            rc, rr, _ = pair_logps(ref, b)
        np.testing.assert_allclose(
            t.loc[i, list(A.LOGP_COLUMNS)],
            [pc.item(), pr.item(), rc.item(), rr.item()],
            rtol=1e-9,
        )
        # ||grad_e l|| is the derivative of l along the unit gradient direction
        emb = pol.get_input_embeddings()(b["input_ids"]).detach()

        def loss(e, b=b, rc=rc, rr=rr):
            from rdpo_theory.torch.lm import sequence_logps

            with torch.no_grad():
                lp = sequence_logps(
                    pol, b["input_ids"], b["attention_mask"], b["completion_mask"], inputs_embeds=e
                )
            m = beta * ((lp[0] - rc) - (lp[1] - rr))
            return torch.nn.functional.softplus(-m).item()

        e = emb.clone().requires_grad_(True)
        from rdpo_theory.torch.lm import sequence_logps

        lp = sequence_logps(
            pol, b["input_ids"], b["attention_mask"], b["completion_mask"], inputs_embeds=e
        )
        (g,) = torch.autograd.grad(
            torch.nn.functional.softplus(-beta * ((lp[0] - rc) - (lp[1] - rr))).sum(), e
        )
        v = g / g.norm()
        h = 1e-5
        fd = (loss(emb + h * v) - loss(emb - h * v)) / (2 * h)
        assert t.loc[i, "grad_sq_norm"] == pytest.approx(fd**2, rel=1e-6)


def test_audit_models_side_by_side(tiny, tmp_path):
    ds = tmp_path / "pairs.jsonl"
    ds.write_text(
        "\n".join(json.dumps(dict(r, group="g" + str(i % 2))) for i, r in enumerate(ROWS))
    )
    out = tmp_path / "out"
    args = ["audit", "--model", str(tiny / "dpo"), str(tiny / "wdpo"), "--ref", str(tiny / "ref")]
    args += ["--dataset", str(ds), "--rho0", "0.5", "--out", str(out), "--top-k", "2"]
    assert main(args) == 0
    table = pd.read_csv(out / "audit.csv")
    assert list(dict.fromkeys(table["model"])) == ["dpo", "wdpo"]
    fo = table[table["divergence"] == S.FIRST_ORDER]
    logps = pd.read_csv(out / "audit_logps.csv")
    for model, row in fo.set_index("model").iterrows():
        sub = logps[logps["model"] == model]
        _, l, p = S.pair_losses(sub, beta=0.1)
        want = p @ l + 0.5 * np.sqrt(p @ sub["grad_sq_norm"].to_numpy())
        assert row["worst_loss"] == pytest.approx(want, rel=1e-12)
    # the logps table written by --model audits to the same numbers through --logps
    out2 = tmp_path / "out2"
    assert main(["audit", "--logps", str(out / "audit_logps.csv"), "--out", str(out2)]) == 0
    again = pd.read_csv(out2 / "audit.csv")
    exact = table[table["divergence"] != S.FIRST_ORDER].reset_index(drop=True)
    np.testing.assert_allclose(again["worst_loss"], exact["worst_loss"], rtol=1e-12)
    top = [json.loads(s) for s in (out / "top_pairs.jsonl").read_text().splitlines()]
    assert top[0]["prompt"] == ROWS[top[0]["pair"]]["prompt"] and "group" in top[0]
    assert (out / "audit_groups.csv").exists()


def test_audit_figure_registered():
    from rdpo_theory.figures import load_all

    assert "audit-tiny" in load_all()


LOGP_HEADER = "chosen_logps,rejected_logps,ref_chosen_logps,ref_rejected_logps"


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("header-only", LOGP_HEADER + "\n", "has a header but no data rows"),
        ("dup", LOGP_HEADER + ",chosen_logps\n1,2,3,4,5\n", "duplicate columns ['chosen_logps']"),
        ("unknown", LOGP_HEADER + ",score\n1,2,3,4,5\n", "line 1: unknown columns ['score']"),
        ("extra field", LOGP_HEADER + "\n-1,-2,-3,-4\n-1,-2,-3,-4,9\n", "line 3: has 5 fields"),
        ("underscore", LOGP_HEADER + "\n-1,-2,-3,-1_000\n", "line 2, column 'ref_rejected"),
        (
            "after a quoted multi-line field",
            "model," + LOGP_HEADER + '\n"a\nb",-1,-2,-3,-4\nm,-1,-2,x,-4\n',
            "line 4, column 'ref_chosen_logps': expected a number, got 'x'",
        ),
        ("jsonl dup key", '{"chosen_logps": 1, "chosen_logps": 2}\n', "has the key"),
        (
            "jsonl unknown",
            json.dumps(dict.fromkeys(LOGP_HEADER.split(","), -1.0) | {"extra": 1}) + "\n",
            "line 1: unknown columns ['extra']",
        ),
    ],
)
def test_audit_logps_is_read_through_io(tmp_path, capsys, name, text, message):
    """Issue 23: --logps went through pandas: header-only files and directories gave
    tracebacks, duplicate and unknown columns passed, and errors named 0-based rows."""
    path = tmp_path / ("t.jsonl" if name.startswith("jsonl") else "t.csv")
    path.write_text(text)
    out = tmp_path / "o"
    assert main(["audit", "--logps", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused before anything was written


def test_audit_logps_directory_is_a_clean_error(tmp_path, capsys):
    assert main(["audit", "--logps", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is a directory" in capsys.readouterr().err
