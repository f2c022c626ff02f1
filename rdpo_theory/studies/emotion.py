"""A study: the paper's emotion-alignment experiment in miniature, CPU-sized
(docs/theory.md#shift-families); needs the ``llm`` extra (torch, transformers).

World. A word-level vocabulary with 48 neutral words and two "emotion" groups of 12 words each:
group 1 (``anger``) and group 2 (``fear``). A sentence of ``seq_len`` words has a latent mood
``(p_neutral, p_anger, p_fear) ~ Dirichlet(mood_concentration)`` and draws its words i.i.d.
from it, so the first ``prompt_len`` words (the prompt) carry information about how emotional
its continuation is.

Pipeline (the paper's Figure 2, end to end):

1. a tiny GPT-2 built from ``GPT2Config`` (no downloads) is trained briefly (SFT) on the corpus;
2. for each preference prompt two completions are sampled from the SFT model;
3. two rewards score a completion of ``completion_len`` words: the smoothed group frequencies
   ``r_k = (count_k + 1) / (completion_len + 2)`` in (0, 1), k = 1 (anger), 2 (fear);
4. labels are Bradley-Terry on the ``alpha0`` mixture (``rdpo_theory.worlds.mixture_reward``),
   ``P(first preferred) = sigmoid(reward_scale * (r_alpha0(a1) - r_alpha0(a2)))``;
5. DPO, WDPO and KLDPO are trained from the SFT model (reference = SFT) with
   :func:`rdpo_theory.torch.train.train_preference`;
6. each policy generates completions for held-out prompts; the table holds the mean mixed reward
   ``E r_alpha`` for alpha on a grid in [0, 1], per seed.

:func:`run_emotion` returns the tables; ``rdpo llm --tiny`` (:mod:`rdpo_theory.commands.llm`)
writes ``llm_tiny.csv`` (tidy: one row per seed, mixture, method, alpha),
``llm_tiny_metrics.csv`` (the training logs) and ``llm_tiny.png`` (drawn from the CSV only).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import expit

from .. import _validate as V
from ..errors import InputError
from ..methods import trained_id
from ..options import POSITIVE_INT, check, validate
from ..rng import make_rng, stream_seed
from ..worlds import mixture_reward

NEUTRAL = (
    "the a and of to in is was it that he she they we you with on for at by from this then "
    "there here as but or so when where who what day night road house door window table "
    "street city river tree light"
).split()
ANGER = "rage furious angry hate shout slam fury bitter hostile mad snarl livid".split()
FEAR = "afraid scared dread panic tremble terror anxious nervous fright hide shiver worry".split()
SPECIALS = ("<pad>", "<eos>", "<unk>")
GROUPS = {"anger": ANGER, "fear": FEAR}

#: Methods of the paper's Figure 2 as ``(loss, loss_kwargs)`` of
#: :class:`~rdpo_theory.torch.train.TrainConfig`, with the parameters rescaled to the tiny model:
#: WDPO (sqrt-mean) rho0 in {10, 50} (the embedding-gradient RMS here is ~1, so the penalty is
#: comparable to the loss); KLDPO tau in {0.1, 0.5} (per-pair losses here spread over ~0.5 nats,
#: so the paper's tau = 1 barely reweights). Tables name them by method id
#: (:func:`rdpo_theory.methods.trained_id`) with the parameters in their own columns.
DEFAULT_METHODS: tuple[tuple[str, dict], ...] = (
    ("dpo", {}),
    ("wdpo", {"rho0": 10.0, "variant": "sqrt-mean"}),
    ("wdpo", {"rho0": 50.0, "variant": "sqrt-mean"}),
    ("kldpo", {"tau": 0.1}),
    ("kldpo", {"tau": 0.5}),
)


def method_columns(loss: str, loss_kwargs: dict) -> dict:
    """Table columns of one trained method: ``method`` (its id), ``family`` (the loss) and one
    column per numeric parameter (``tau``, ``rho0``, ...; the ``variant`` is in the id)."""
    cols = {"method": trained_id(loss, loss_kwargs.get("variant")), "family": loss}
    cols.update({k: v for k, v in loss_kwargs.items() if k != "variant"})
    return cols


#: The integer sizes of :class:`EmotionConfig`, each declared >= 1.
SIZES = dict.fromkeys(
    (
        "n_corpus",
        "seq_len",
        "prompt_len",
        "n_layer",
        "n_embd",
        "n_head",
        "sft_steps",
        "sft_batch",
        "n_pairs",
        "train_steps",
        "batch_size",
        "n_eval_prompts",
    ),
    POSITIVE_INT,
)


@dataclass(frozen=True)
class EmotionConfig:
    """Sizes and settings of the miniature emotion experiment (defaults: ``rdpo llm --tiny``)."""

    n_corpus: int = 4000
    seq_len: int = 16
    prompt_len: int = 4
    mood_concentration: tuple[float, float, float] = (2.0, 0.5, 0.5)
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    sft_steps: int = 300
    sft_batch: int = 64
    sft_lr: float = 3e-3
    n_pairs: int = 1024
    reward_scale: float = 10.0
    alpha0: float = 0.1
    mixtures: tuple[str, ...] = ("convex", "geometric")
    beta: float = 0.1
    train_steps: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    n_eval_prompts: int = 256
    alphas: tuple[float, ...] = tuple(np.round(np.linspace(0, 1, 11), 2))
    methods: tuple[tuple[str, dict], ...] = field(default=DEFAULT_METHODS)

    def __post_init__(self):
        validate({k: getattr(self, k) for k in SIZES}, SIZES, owner="EmotionConfig")
        if self.prompt_len >= self.seq_len:
            raise InputError(f"prompt_len must be < seq_len, got {self.prompt_len}")
        V.unit_interval(self.alpha0, "alpha0")
        V.positive(self.reward_scale, "reward_scale")
        V.positive(self.beta, "beta")
        for m in self.mixtures:
            if m not in ("convex", "geometric"):
                raise InputError(f"mixtures must be 'convex' or 'geometric', got {m!r}")
        if len(self.mood_concentration) != 3 or min(self.mood_concentration) <= 0:
            raise InputError("mood_concentration must be three positive numbers")
        if self.n_pairs < self.batch_size:
            raise InputError(f"n_pairs ({self.n_pairs}) must be >= batch_size")

    @property
    def completion_len(self) -> int:
        return self.seq_len - self.prompt_len

    @classmethod
    def smoke(cls, **kw) -> EmotionConfig:
        """Seconds-sized sizes for tests."""
        base = dict(
            n_corpus=400,
            sft_steps=40,
            sft_batch=32,
            n_pairs=64,
            train_steps=4,
            batch_size=16,
            n_eval_prompts=32,
            warmup_steps=1,
            methods=(("dpo", {}), ("wdpo", {"rho0": 1.0}), ("kldpo", {"tau": 1.0})),
            mixtures=("convex",),
        )
        base.update(kw)
        return cls(**base)

    @classmethod
    def quick(cls, **kw) -> EmotionConfig:
        """The ``rdpo figures --quick`` sizes (about 3 minutes on 2 cores)."""
        base = dict(n_corpus=2000, sft_steps=200, n_pairs=512, train_steps=60, n_eval_prompts=128)
        base.update(kw)
        return cls(**base)


# ---------------------------------------------------------------------------- the world
def vocabulary() -> list[str]:
    """Specials, then neutral, anger and fear words (ids are positions)."""
    return list(SPECIALS) + NEUTRAL + ANGER + FEAR


def build_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` over :func:`vocabulary` (whitespace split)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def build_model(cfg: EmotionConfig, seed: int):
    """A randomly initialised tiny GPT-2 (``GPT2Config``, dropout off), seeded."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(int(seed))
    conf = GPT2Config(
        vocab_size=len(vocabulary()),
        n_positions=cfg.seq_len + 4,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(conf)


def sample_corpus(cfg: EmotionConfig, n: int, seed) -> list[list[str]]:
    """``n`` sentences of ``seq_len`` words with Dirichlet moods (see module docstring)."""
    rng = make_rng(seed)
    moods = rng.dirichlet(cfg.mood_concentration, size=n)
    groups = (NEUTRAL, ANGER, FEAR)
    out = []
    for mood in moods:
        g = rng.choice(3, size=cfg.seq_len, p=mood)
        out.append([groups[k][rng.integers(len(groups[k]))] for k in g])
    return out


def emotion_rewards(completions, completion_len: int) -> np.ndarray:
    """``(r_anger, r_fear)`` per completion, shape (n, 2):
    ``r_k = (count_k + 1) / (completion_len + 2)``, in (0, 1)."""
    check("completion_len", completion_len, POSITIVE_INT, owner="emotion_rewards")
    anger, fear = set(ANGER), set(FEAR)
    r = np.empty((len(completions), 2))
    for i, c in enumerate(completions):
        words = c.split()
        r[i, 0] = sum(w in anger for w in words)
        r[i, 1] = sum(w in fear for w in words)
    return (r + 1.0) / (completion_len + 2.0)


def sft(model, tokenizer, corpus: list[list[str]], cfg: EmotionConfig, seed: int):
    """Next-token training on the corpus (sentence + eos), AdamW, returns the model."""
    ids = torch.tensor(
        [tokenizer(" ".join(s), add_special_tokens=False)["input_ids"] + [1] for s in corpus]
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr)
    g = torch.Generator().manual_seed(int(seed))
    model.train()
    for _ in range(cfg.sft_steps):
        b = ids[torch.randint(len(ids), (cfg.sft_batch,), generator=g)]
        logits = model(input_ids=b, attention_mask=torch.ones_like(b)).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


def preference_rows(
    model, tokenizer, cfg: EmotionConfig, seed: int
) -> tuple[dict[str, list[dict]], pd.DataFrame]:
    """Prompts from fresh sentences, two SFT completions each, Bradley-Terry labels on the
    ``alpha0`` mixture. Returns ``({mixture: rows}, pairs table)``; both mixtures share the
    prompts and completions and differ only in labels."""
    from ..torch.lm import sample_completions

    prompts = [" ".join(s[: cfg.prompt_len]) for s in sample_corpus(cfg, cfg.n_pairs, (seed, 1))]
    a1 = sample_completions(
        model, tokenizer, prompts, max_new_tokens=cfg.completion_len, seed=seed * 7 + 1
    )
    a2 = sample_completions(
        model, tokenizer, prompts, max_new_tokens=cfg.completion_len, seed=seed * 7 + 2
    )
    r1, r2 = emotion_rewards(a1, cfg.completion_len), emotion_rewards(a2, cfg.completion_len)
    rng = make_rng(stream_seed(seed, 2))
    u = rng.random(cfg.n_pairs)
    rows, table = {}, []
    for mix in cfg.mixtures:
        m1 = mixture_reward(r1[:, 0], r1[:, 1], cfg.alpha0, mix)
        m2 = mixture_reward(r2[:, 0], r2[:, 1], cfg.alpha0, mix)
        p = expit(cfg.reward_scale * (m1 - m2))
        first = u < p
        rows[mix] = [
            {"prompt": pr, "chosen": " " + (x if f else y), "rejected": " " + (y if f else x)}
            for pr, x, y, f in zip(prompts, a1, a2, first)
        ]
        table.append(
            pd.DataFrame(
                {
                    "mixture": mix,
                    "prompt": prompts,
                    "a1": a1,
                    "a2": a2,
                    "p_first": p,
                    "first_preferred": first,
                }
            )
        )
    return rows, pd.concat(table, ignore_index=True)


def evaluate_policy(model, tokenizer, prompts, cfg: EmotionConfig, seed: int) -> pd.DataFrame:
    """Mean mixed reward of the policy's completions at each alpha, for both mixtures."""
    from ..torch.lm import sample_completions

    comps = sample_completions(
        model, tokenizer, prompts, max_new_tokens=cfg.completion_len, seed=seed
    )
    r = emotion_rewards(comps, cfg.completion_len)
    rows = []
    for mix in ("convex", "geometric"):
        for a in cfg.alphas:
            rows.append(
                dict(
                    eval_mixture=mix,
                    alpha=float(a),
                    reward=float(mixture_reward(r[:, 0], r[:, 1], float(a), mix).mean()),
                )
            )
    df = pd.DataFrame(rows)
    df["r_anger"], df["r_fear"] = r[:, 0].mean(), r[:, 1].mean()
    return df


# ---------------------------------------------------------------------------- the study
def _prepare_seed(cfg: EmotionConfig, seed: int, threads: int):
    torch.set_num_threads(threads)
    tok = build_tokenizer()
    model = build_model(cfg, seed)
    sft(model, tok, sample_corpus(cfg, cfg.n_corpus, (seed, 0)), cfg, seed)
    rows, pairs = preference_rows(model, tok, cfg, seed)
    eval_prompts = [
        " ".join(s[: cfg.prompt_len]) for s in sample_corpus(cfg, cfg.n_eval_prompts, (seed, 3))
    ]
    ev = evaluate_policy(model, tok, eval_prompts, cfg, seed=seed * 7 + 5)
    pairs["seed"] = seed
    return seed, model.state_dict(), rows, eval_prompts, ev, pairs


def _train_one(cfg: EmotionConfig, seed, state, rows, prompts, mixture, spec, threads, out):
    from ..torch.train import TrainConfig, train_preference

    torch.set_num_threads(threads)
    method, kw = spec
    tok = build_tokenizer()
    ref = build_model(cfg, seed)
    ref.load_state_dict(state)
    policy = copy.deepcopy(ref)
    tc = TrainConfig(
        method=method,
        beta=cfg.beta,
        loss_kwargs=dict(kw),
        learning_rate=cfg.learning_rate,
        batch_size=cfg.batch_size,
        max_steps=cfg.train_steps,
        warmup_steps=cfg.warmup_steps,
        seed=seed,
        mixed_precision="no",
        progress=False,
        output_dir=None,
        # the committed llm-tiny tables were made with the paper's per-batch normaliser, the
        # trainer's default before "auto"; pinned so that they reproduce
        robust_normalizer="batch",
    )
    res = train_preference(policy, tok, rows, tc, ref_model=ref)
    if out is not None:
        label = method + "".join(f"_{k}={v:g}" for k, v in kw.items() if isinstance(v, int | float))
        save_model(res.model, tok, model_dir(out, seed, mixture, label))
    ev = evaluate_policy(res.model, tok, prompts, cfg, seed=seed * 7 + 5)
    met = pd.DataFrame(res.metrics)
    for df in (ev, met):
        df["seed"], df["train_mixture"] = seed, mixture
        for k, v in method_columns(method, kw).items():
            df[k] = v
    return ev, met


def run_emotion(
    cfg: EmotionConfig | None = None,
    *,
    seeds=(0, 1, 2),
    jobs: int = 1,
    progress: bool = True,
    save_models=None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Run the miniature emotion experiment.

    With ``save_models`` (a folder) every trained policy is saved with ``save_pretrained``
    (model and tokenizer) under ``save_models/seed{S}/{mixture}/{method}`` (see
    :func:`model_dir`), the SFT reference under ``save_models/seed{S}/sft`` and the training
    pairs under ``save_models/seed{S}/{mixture}/pairs.jsonl``, ready for ``rdpo audit``.

    Returns
    -------
    table : DataFrame
        Tidy: ``seed, train_mixture, method, family``, one column per method parameter
        (``rho0``, ``tau``; empty where it does not apply), ``eval_mixture, alpha, reward,
        r_anger, r_fear``. ``method`` is an id of :mod:`rdpo_theory.methods`;
        ``method = "sft"`` rows are the SFT policy (the shared starting point).
    metrics : DataFrame
        The training logs of every run (one row per step).
    pairs : DataFrame
        The preference pairs (prompt, completions, label probability, label) per seed.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    cfg = cfg or EmotionConfig()
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise InputError("seeds is empty")
    n_jobs = _n_jobs(jobs)
    threads = 1  # the model is tiny: intra-op threads only add contention; parallelise runs
    old_threads = torch.get_num_threads()
    par = Parallel(n_jobs=n_jobs, backend="loky" if n_jobs > 1 else "sequential")
    try:
        prep = par(delayed(_prepare_seed)(cfg, s, threads) for s in seeds)
        if save_models is not None:
            _save_references(cfg, prep, Path(save_models))
        tasks = [(p, mix, spec) for p in prep for mix in cfg.mixtures for spec in cfg.methods]
        it = par(
            delayed(_train_one)(cfg, p[0], p[1], p[2][mix], p[3], mix, spec, threads, save_models)
            for p, mix, spec in tqdm(tasks, desc="llm-tiny runs", disable=not progress)
        )
    finally:
        torch.set_num_threads(old_threads)
    evals, mets = [], []
    for ev, met in it:
        evals.append(ev)
        mets.append(met)
    for seed, _, _, _, ev, _ in prep:
        for mix in cfg.mixtures:
            e = ev.copy()
            e["seed"], e["train_mixture"], e["method"], e["family"] = seed, mix, "sft", "sft"
            evals.append(e)
    table = pd.concat(evals, ignore_index=True)
    params = sorted({k for _, kw in cfg.methods for k in kw if k != "variant"})
    keys = ["seed", "train_mixture", "method", "family", *params]
    cols = keys + ["eval_mixture", "alpha", "reward", "r_anger", "r_fear"]
    table = table[cols].sort_values(keys + ["eval_mixture", "alpha"], ignore_index=True)
    pairs = pd.concat([p[5] for p in prep], ignore_index=True)
    return table, pd.concat(mets, ignore_index=True), pairs


def model_dir(root, seed: int, mixture: str, label: str) -> Path:
    """Folder of a saved policy: ``root/seed{seed}/{mixture}/{label}``, with the label's
    parentheses dropped (``kldpo(tau=0.1)`` -> ``kldpo_tau=0.1``)."""
    safe = label.replace("(", "_").replace(")", "").replace(",", "_").replace(" ", "")
    return Path(root) / f"seed{int(seed)}" / mixture / safe


def save_model(model, tokenizer, path) -> Path:
    """``save_pretrained`` of a model and its tokenizer into ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _save_references(cfg: EmotionConfig, prep, root: Path) -> None:
    import json

    tok = build_tokenizer()
    for seed, state, rows, _, _, _ in prep:
        ref = build_model(cfg, seed)
        ref.load_state_dict(state)
        save_model(ref, tok, root / f"seed{seed}" / "sft")
        for mix, mix_rows in rows.items():
            d = root / f"seed{seed}" / mix
            d.mkdir(parents=True, exist_ok=True)
            with open(d / "pairs.jsonl", "w") as f:
                for r in mix_rows:
                    f.write(json.dumps(r) + "\n")


def _n_jobs(jobs: int) -> int:
    import os

    if jobs is None or jobs == 0:
        return 1
    if jobs < 0:
        return max(1, (os.cpu_count() or 1) + 1 + jobs)
    return int(jobs)
