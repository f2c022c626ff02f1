"""``rdpo llm``: the miniature emotion experiment, or preference training of a local HF model."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..extras import require
from ..figures import register, write_tables
from ..io import dumps_json
from ..methods import listed
from ..options import POSITIVE_INT, check


def add_parser(sub) -> None:
    p = sub.add_parser(
        "llm",
        help="robust DPO on language models: --tiny emotion experiment or --model/--dataset",
        description="Either run the emotion experiment in miniature on a tiny GPT-2 (--tiny), or "
        "train a local Hugging Face causal LM on a local JSON-lines preference file "
        "(--model PATH --dataset FILE with rows {prompt, chosen, rejected}). Multi-GPU: "
        "`accelerate launch -m rdpo_theory.cli llm --model ...`.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tiny", action="store_true", help="the miniature emotion experiment")
    src.add_argument("--model", help="local folder (or hub name if online) of a causal LM")
    p.add_argument("--dataset", type=Path, help="JSON-lines file: prompt, chosen, rejected")
    p.add_argument("--out", type=Path, default=Path("llm_out"), help="output folder")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="--tiny at figure-quick sizes")
    size.add_argument("--smoke", action="store_true", help="--tiny at test sizes (seconds)")
    p.add_argument("--seeds", type=int, default=None, help="--tiny: number of seeds (default 3)")
    p.add_argument(
        "--jobs", type=int, default=None, help="--tiny: parallel jobs (default -1 = all cores)"
    )
    p.add_argument(
        "--save-models",
        action="store_true",
        help="--tiny: save every trained policy, the SFT reference and the training pairs "
        "under OUT/models/seed{S}/{mixture}/ (inputs for `rdpo audit`)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="--model: methods to train, each into OUT/METHOD (dpo kldpo wdpo or a baseline; "
        "default dpo kldpo wdpo)",
    )
    opt = {
        "--tau": (float, "KLDPO temperature"),
        "--rho0": (float, "WDPO radius coefficient"),
        "--eps": (float, "cdpo/rdpo flip or smoothing rate"),
        "--rho": (float, "chi2dpo chi-square radius"),
        "--level": (float, "cvardpo CVaR tail fraction"),
        "--beta-prime": (float, "drdpo soft-min temperature"),
        "--group-step": (float, "group_dpo exponentiated-gradient step of the group weights"),
        "--eval-fraction": (float, "held-out share of pairs"),
    }
    for flag, (kind, text) in opt.items():
        key = flag[2:].replace("-", "_")
        p.add_argument(
            flag, type=kind, default=None, help=f"--model: {text} (default {MODEL_DEFAULTS[key]})"
        )
    p.add_argument(
        "--kl-variant",
        default=None,
        choices=["normalized", "clipped"],
        help="--model: KLDPO weights normalised by the batch partition sum or clipped around "
        "a centre (default normalized)",
    )
    p.add_argument(
        "--wdpo-variant",
        default=None,
        choices=["sqrt-mean", "per-pair"],
        help="--model: WDPO penalty rho0 sqrt(mean ||grad||^2) or the per-pair mean "
        "(default sqrt-mean)",
    )
    p.add_argument(
        "--cover-groups",
        action="store_true",
        help="--model: set chi2dpo's --rho and cvardpo's --level to the balls that contain "
        "every group's share alpha_min (the smallest group share of the training rows): "
        "rho = (1 - alpha_min) / (2 alpha_min), level = alpha_min; rows need a 'group'",
    )
    p.add_argument(
        "--lora-r",
        type=int,
        default=None,
        help="--model: train LoRA adapters of this rank on all linear layers (needs peft); the "
        "reference is the base model with adapters disabled (default 0: full fine-tuning)",
    )
    p.add_argument(
        "--lora-alpha", type=float, default=None, help="--model: LoRA alpha (default 2 r)"
    )
    p.add_argument(
        "--lora-dropout", type=float, default=None, help="--model: LoRA dropout (default 0)"
    )
    p.set_defaults(func=run)


def add_config_arguments(p) -> None:
    """The training flags, generated from TrainConfig (which imports torch): added by
    :func:`rdpo_theory.cli.build_parser` only when ``rdpo llm`` runs, so that other commands
    never import torch."""
    train = p.add_argument_group(
        "training options (--model; the fields of rdpo_theory.torch.train.TrainConfig)"
    )
    add_train_arguments(train)


#: Defaults of the --model options that are not TrainConfig fields (None in the parser, so
#: that a given option is detected).
MODEL_DEFAULTS = {
    "methods": list(listed("llm")),
    "tau": 1.0,
    "kl_variant": "normalized",
    "rho0": 0.01,
    "wdpo_variant": "sqrt-mean",
    "eps": 0.1,
    "rho": 0.1,
    "level": 0.5,
    "beta_prime": 1.0,
    "group_step": 0.01,
    "eval_fraction": 0.1,
    "lora_r": 0,
    "lora_alpha": None,
    "lora_dropout": 0.0,
}
#: ``rdpo llm``'s defaults for TrainConfig fields where they differ from the class's (a
#: command run on a local model: smaller micro-batches, a warmup, a token budget).
TRAIN_DEFAULTS = {"batch_size": 4, "learning_rate": 5e-6, "warmup_steps": 10, "max_length": 512}
#: TrainConfig fields that ``rdpo llm`` sets itself (from --methods, --out, --lora-*, the
#: method options), so they are not flags.
TRAIN_EXCLUDED = ("method", "loss_kwargs", "output_dir", "peft_config")
TINY_DEFAULTS = {"seeds": 3, "jobs": -1}
#: Options that set one family of methods: refused when --methods has none of them. TrainConfig
#: fields are spelt as their flags (the field name).
METHOD_OPTIONS = {
    "tau": ({"kldpo"}, "--tau"),
    "kl_variant": ({"kldpo"}, "--kl-variant"),
    "rho0": ({"wdpo"}, "--rho0"),
    "wdpo_variant": ({"wdpo"}, "--wdpo-variant"),
    "robust_normalizer": ({"kldpo", "wdpo"}, "--robust_normalizer"),
    "robust_decay": ({"kldpo", "wdpo"}, "--robust_decay"),
    "wdpo_hvp": ({"wdpo"}, "--wdpo_hvp"),
    "wdpo_fd_eps": ({"wdpo"}, "--wdpo_fd_eps"),
    "wdpo_fd_precision": ({"wdpo"}, "--wdpo_fd_precision"),
    "eps": ({"cdpo", "rdpo"}, "--eps"),
    "rho": ({"chi2dpo"}, "--rho"),
    "level": ({"cvardpo"}, "--level"),
    "beta_prime": ({"drdpo"}, "--beta-prime"),
    "group_step": ({"group_dpo"}, "--group-step"),
}


class _NotGiven:
    """The parsed value of a training flag that was not given (its default is filled in by
    :func:`check_args`); distinct from None, which ``--max_grad_norm none`` gives."""

    def __repr__(self) -> str:
        return "<not given>"


NOT_GIVEN = _NotGiven()


class _Recorder:
    """Passes ``add_argument`` calls to a parser (or group) and keeps the actions made."""

    def __init__(self, parser):
        self.parser, self.actions = parser, []

    def add_argument(self, *args, **kwargs):
        action = self.parser.add_argument(*args, **kwargs)
        self.actions.append(action)
        return action


def add_train_arguments(parser) -> list[str]:
    """One flag per command-line field of :class:`~rdpo_theory.torch.train.TrainConfig`
    (:func:`rdpo_theory.options.add_arguments`: the field name is the flag, the dashed
    spelling and the old flags ``--lr``, ``--steps``, ``--warmup`` are aliases; the help is the
    field's). The help shows the default ``rdpo llm`` uses (:data:`TRAIN_DEFAULTS`, else the
    field's), while the parsed default is :data:`NOT_GIVEN`, so that :func:`check_args` sees
    which options were given. Returns the field names."""
    from ..options import add_arguments
    from ..torch.config import TrainConfig

    rec = _Recorder(parser)
    names = add_arguments(rec, TrainConfig, exclude=TRAIN_EXCLUDED, defaults=TRAIN_DEFAULTS)
    for action in rec.actions:
        shown = "none" if action.default is None else str(action.default)
        text = action.help or ""
        if "%(default)s" not in text:
            text += " (default: %(default)s)"
        action.help = "--model: " + text.replace("%(default)s", shown)
        action.default = NOT_GIVEN
    return names


def train_defaults() -> dict:
    """The default of every command-line TrainConfig field under ``rdpo llm``."""
    import dataclasses

    from ..torch.config import TrainConfig

    out = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in TRAIN_EXCLUDED or not f.metadata.get("cli", True):
            continue
        out[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return {**out, **TRAIN_DEFAULTS}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def check_args(args) -> None:
    """Refuse options that do not apply to the chosen mode or methods; fill the defaults."""
    import argparse

    from . import checks as C

    train = train_defaults()
    # a view in which an option is None exactly when it was not given (a training option given
    # as "none", e.g. --max_grad_norm none, is given)
    seen = dict(vars(args))
    seen.update({k: None if getattr(args, k) is NOT_GIVEN else "given" for k in train})
    seen = argparse.Namespace(**seen)
    if args.tiny:
        given = {k: _flag(k) for k in MODEL_DEFAULTS}
        given.update({k: f"--{k}" for k in train if k != "resume"})
        C.not_applicable(seen, given, "to --tiny (they set --model training)")
        if seen.resume is not None:
            raise InputError("--resume does not apply to --tiny")
        if args.cover_groups:
            raise InputError("--cover-groups does not apply to --tiny (it sets --model training)")
    else:
        C.not_applicable(args, {k: _flag(k) for k in TINY_DEFAULTS}, "to --model (they set --tiny)")
        if args.quick or args.smoke:
            raise InputError("--quick and --smoke apply to --tiny only")
        if args.save_models:
            raise InputError(
                "--save-models applies to --tiny only (--model saves OUT/METHOD/final)"
            )
        methods = set(args.methods or MODEL_DEFAULTS["methods"])
        for key, (family, flag) in METHOD_OPTIONS.items():
            if getattr(seen, key) is not None and not family & methods:
                raise InputError(
                    f"{flag} sets {'/'.join(sorted(family))}, which --methods does not include"
                )
    for key, value in train.items():
        if getattr(args, key) is NOT_GIVEN:
            setattr(args, key, value)
    for key, value in {**MODEL_DEFAULTS, **TINY_DEFAULTS}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def run(args) -> int:
    check_args(args)
    require("llm", what="rdpo llm")
    if args.tiny:
        return _run_tiny(args)
    return _run_model(args)


def _run_tiny(args) -> int:
    from ..studies.emotion import EmotionConfig, run_emotion
    from . import checks as C

    if args.dataset is not None:
        raise InputError("--dataset does not apply to --tiny (it generates its own pairs)")
    check("seeds", args.seeds, POSITIVE_INT, owner="rdpo llm")
    C.jobs(args.jobs)
    C.output_dir(args.out)
    cfg = (
        EmotionConfig.smoke()
        if args.smoke
        else EmotionConfig.quick()
        if args.quick
        else EmotionConfig()
    )
    save = args.out / "models" if args.save_models else None
    table, metrics, pairs = run_emotion(
        cfg, seeds=range(args.seeds), jobs=args.jobs, save_models=save
    )
    paths = write_tiny_outputs(args.out, table, metrics, pairs, cfg)
    _print_summary(table)
    for p in paths:
        print(p)
    return 0


def _print_summary(table) -> None:
    from ..methods import label, series_columns

    sub = table[table["train_mixture"] == table["eval_mixture"]].copy()
    keys = series_columns(sub)
    sub["series"] = [
        label(r[0], **dict(zip(keys[1:], r[1:]))) for r in sub[keys].itertuples(index=False)
    ]
    piv = sub.pivot_table(
        index=["train_mixture", "alpha"], columns="series", values="reward", aggfunc="mean"
    )
    print(piv.round(3).to_string())


def write_tiny_outputs(out, table, metrics, pairs, cfg) -> list[Path]:
    """Write the tables of :func:`rdpo_theory.studies.emotion.run_emotion` under ``out``:
    ``llm_tiny.csv``, ``llm_tiny_metrics.csv``, ``llm_tiny_pairs.jsonl``,
    ``llm_tiny_config.json``, and the figure ``llm_tiny.png`` drawn from the CSV."""
    import dataclasses
    import json

    from ..plots.llm import plot_emotion

    out = Path(out)
    paths = write_tables({"llm_tiny": table, "llm_tiny_metrics": metrics}, out)
    pj = out / "llm_tiny_pairs.jsonl"
    with open(pj, "w") as f:
        for r in pairs.itertuples():
            ch, rj = (r.a1, r.a2) if r.first_preferred else (r.a2, r.a1)
            row = dict(
                prompt=r.prompt,
                chosen=" " + ch,
                rejected=" " + rj,
                mixture=r.mixture,
                seed=int(r.seed),
            )
            f.write(json.dumps(row) + "\n")
    cj = out / "llm_tiny_config.json"
    cj.write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
    paths += [pj, cj, plot_emotion(paths[0], out / "llm_tiny.png", alpha0=cfg.alpha0)]
    return paths


@register(
    "llm-tiny",
    description="emotion experiment in miniature: mixed reward vs alpha "
    "for DPO/WDPO/KLDPO on a tiny GPT-2 (paper Fig. 2)",
    extra="llm",
)
def make(out: Path, *, quick: bool, jobs: int) -> list[Path]:
    """Run the miniature emotion experiment (quick: 2 seeds) and write its outputs."""
    from ..studies.emotion import EmotionConfig, run_emotion

    cfg = EmotionConfig.quick() if quick else EmotionConfig()
    seeds = (0, 1) if quick else (0, 1, 2)
    table, metrics, pairs = run_emotion(cfg, seeds=seeds, jobs=jobs)
    return write_tiny_outputs(out, table, metrics, pairs, cfg)


def load_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines preference file (each needs string prompt, chosen, rejected);
    errors name the file and line (:func:`rdpo_theory.io.read_preference_jsonl`)."""
    from ..io import read_preference_jsonl

    return read_preference_jsonl(path, flag="--dataset")


def check_model_path(name: str) -> None:
    """A local ``--model`` folder must hold a Hugging Face model (``config.json``); anything
    that is not a local path is left to ``from_pretrained`` (a hub name)."""
    p = Path(name)
    if p.exists() and not p.is_dir():
        raise InputError(f"--model {name!r} is a file; give a model folder or a hub name")
    if p.is_dir() and not (p / "config.json").is_file():
        raise InputError(
            f"--model {name!r} is a folder without config.json: not a Hugging Face model "
            "(save one with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR))"
        )


def load_causal_lm(auto_class, name: str):
    """``auto_class.from_pretrained(name)``, with a loading failure (missing weights, an
    unknown architecture, no network for a hub name) as one :class:`InputError`."""
    try:
        return auto_class.from_pretrained(name)
    except (OSError, ValueError, KeyError) as exc:
        msg = " ".join(str(exc).split())[:300]
        raise InputError(f"--model {name!r}: cannot load a causal LM: {msg}") from None


def build_configs(args) -> dict:
    """One validated TrainConfig per ``--methods`` entry, built before any work so that a bad
    method or parameter (``--tau 0``, ``--rho0 -1``, ``--max_length 1``) stops the command
    before anything is trained or written. The training flags are the TrainConfig fields
    (:func:`rdpo_theory.options.from_arguments`)."""
    from ..options import from_arguments
    from ..torch.train import TrainConfig, latest_checkpoint

    if len(set(args.methods)) != len(args.methods):
        raise InputError(f"--methods lists a method twice: {args.methods}")
    names = set(train_defaults())
    configs = {}
    for method in args.methods:
        own = names if method in ("kldpo", "wdpo") else names - _ROBUST_ONLY
        if method != "wdpo":
            own = own - _WDPO_ONLY
        try:
            configs[method] = from_arguments(
                TrainConfig,
                args,
                names=own,
                method=method,
                loss_kwargs=_loss_kwargs(args, method),
                output_dir=args.out / method,
                peft_config=_lora_config(args),
            )
        except InputError as exc:
            raise InputError(f"--methods {method}: {exc}") from None
        if not args.resume and latest_checkpoint(args.out / method) is not None:
            raise InputError(
                f"--out {str(args.out / method)!r} already holds checkpoints of a run; pass "
                "--resume to continue it, or choose a new --out"
            )
    return configs


#: TrainConfig fields for KLDPO and WDPO only (the other methods keep the defaults).
_ROBUST_ONLY = frozenset({"robust_normalizer", "robust_decay"})
#: TrainConfig fields for WDPO only.
_WDPO_ONLY = frozenset({"wdpo_hvp", "wdpo_fd_eps", "wdpo_fd_precision"})


def _loss_kwargs(args, method: str) -> dict:
    if method == "kldpo":
        return {"tau": args.tau, "variant": args.kl_variant}
    if method == "wdpo":
        return {"rho0": args.rho0, "variant": args.wdpo_variant}
    if method in ("cdpo", "rdpo"):
        return {"eps": args.eps}
    own = {"chi2dpo": "rho", "cvardpo": "level", "drdpo": "beta_prime", "group_dpo": "group_step"}
    return {own[method]: getattr(args, own[method])} if method in own else {}


def _lora_config(args):
    """A ``peft.LoraConfig`` from ``--lora-r/--lora-alpha/--lora-dropout`` (None for r = 0)."""
    from . import checks as C

    C.integer(args.lora_r, "--lora-r", minimum=0)
    if args.lora_r == 0:
        return None
    try:
        from peft import LoraConfig
    except ImportError:  # pragma: no cover - peft ships with the lora extra
        raise InputError(
            "--lora-r needs the 'peft' package: pip install 'rdpo-theory[lora]'"
        ) from None
    alpha = 2.0 * args.lora_r if args.lora_alpha is None else args.lora_alpha
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=alpha,
        lora_dropout=args.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def cover_groups(rows) -> float:
    """The smallest group share ``alpha_min`` of preference rows (weighted by ``weight`` when
    present); the rows need a ``group``."""
    from .. import _validate as V

    w, g = V.row_weights_groups(rows)
    if g is None:
        raise InputError("--cover-groups needs a 'group' on every dataset row")
    w = [1.0] * len(g) if w is None else list(w)
    share: dict[str, float] = {}
    for wi, gi in zip(w, g):
        share[gi] = share.get(gi, 0.0) + wi
    return min(share.values()) / sum(share.values())


def heldout_metrics(args, tok, policy, ref, held, acc, max_length) -> dict:
    """Held-out reward accuracy and mean margin ``beta ((pc - rc) - (pr - rr))`` of a trained
    ``policy`` against ``ref`` (or the rows' precomputed reference log-probs)."""
    import numpy as np
    import torch

    from ..torch.lm import encode_pairs, pair_logps
    from ..torch.losses import dpo_margins
    from ..torch.reference import BATCH_REF_KEYS, ROW_REF_KEYS, reference_logps

    m_all = []
    with torch.no_grad():
        pol = policy.eval()
        if ref is not None:
            ref = ref.to(acc.device)
        for lo in range(0, len(held), args.batch_size):
            part = held[lo : lo + args.batch_size]
            b = encode_pairs(
                tok,
                [r["prompt"] for r in part],
                [r["chosen"] for r in part],
                [r["rejected"] for r in part],
                max_length=max_length,
            )
            if args.precompute_ref:
                for j, k in enumerate(BATCH_REF_KEYS):
                    b[k] = torch.tensor([r[ROW_REF_KEYS[j]] for r in part])
            b = {k: v.to(acc.device) for k, v in b.items()}
            pc, pr, _ = pair_logps(pol, b, fused_head=args.fused_head)
            rc, rr = reference_logps(ref, pol, b, accelerator=acc, fused_head=args.fused_head)
            rc, rr = rc.to(pc.dtype), rr.to(pc.dtype)
            m_all.append(dpo_margins(pc, pr, rc, rr, beta=args.beta).float().cpu())
    m = torch.cat(m_all).numpy()
    return {
        "heldout_pairs": len(held),
        "heldout_accuracy": float(np.mean(m > 0)),
        "heldout_margin": float(np.mean(m)),
    }


def _run_model(args) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..rng import make_rng
    from ..torch.lm import effective_max_length
    from ..torch.reference import (
        with_reference_logps,
    )
    from ..torch.train import check_rows, make_accelerator, train_preference
    from . import checks as C

    if args.dataset is None:
        raise InputError("--model needs --dataset FILE (JSON lines: prompt, chosen, rejected)")
    if not 0 <= args.eval_fraction < 1:
        raise InputError(f"--eval-fraction must lie in [0, 1), got {args.eval_fraction}")
    C.output_dir(args.out)
    C.integer(args.seed, "--seed", minimum=0)
    configs = build_configs(args)
    rows = check_rows(load_jsonl(args.dataset))  # row numbers in file order, before the split
    check_model_path(args.model)
    perm = make_rng(args.seed).permutation(len(rows))
    n_eval = int(round(args.eval_fraction * len(rows)))
    held = [rows[i] for i in perm[:n_eval]]
    train_rows = [rows[i] for i in perm[n_eval:]]
    if args.cover_groups:  # the radii come from the training rows: rebuild the configs
        from ..audit import radius_for_subpopulation

        a = cover_groups(train_rows)
        args.rho = radius_for_subpopulation(a, "chi2")
        args.level = radius_for_subpopulation(a, "cvar")
        print(
            f"--cover-groups: smallest group share {a:.4g}: chi2dpo rho = {args.rho:.4g}, "
            f"cvardpo level = {args.level:.4g} (KLDPO's tau and WDPO's rho0 are not radii and "
            "are left as given)"
        )
        configs = build_configs(args)
    try:
        tok = AutoTokenizer.from_pretrained(args.model)
    except (OSError, ValueError) as exc:
        msg = " ".join(str(exc).split())[:300]
        raise InputError(f"--model {args.model!r}: cannot load a tokenizer: {msg}") from None
    if args.precompute_ref:  # once for all methods (same base model), train and held-out rows
        acc = make_accelerator(next(iter(configs.values())))
        base = load_causal_lm(AutoModelForCausalLM, args.model).to(acc.device)
        rows = with_reference_logps(
            base,
            tok,
            rows,
            cache_dir=args.ref_cache_dir or args.dataset.resolve().parent,
            batch_size=args.batch_size,
            max_length=effective_max_length(base, args.max_length),
            accelerator=acc,
            progress=True,
            fused_head=args.fused_head,
        )
        held = [rows[i] for i in perm[:n_eval]]
        train_rows = [rows[i] for i in perm[n_eval:]]
        del base
    summary = {}
    for method, cfg in configs.items():
        acc = make_accelerator(cfg)
        model = load_causal_lm(AutoModelForCausalLM, args.model)
        ref = None  # precomputed values, or the LoRA base model with adapters disabled
        if cfg.peft_config is None and not args.precompute_ref:
            ref = load_causal_lm(AutoModelForCausalLM, args.model)
        max_length = effective_max_length(model, args.max_length)
        res = train_preference(model, tok, train_rows, cfg, ref_model=ref, accelerator=acc)
        ev = {"train_last": res.metrics[-1] if res.metrics else {}}
        if held:
            ev.update(heldout_metrics(args, tok, res.model, ref, held, acc, max_length))
        summary[method] = ev
        if acc.is_main_process:
            (args.out / method / "eval.json").write_text(dumps_json(ev, indent=2))
        del model, ref, res
    if args.out.exists():
        (args.out / "summary.json").write_text(dumps_json(summary, indent=2))
    for method, ev in summary.items():
        acc_s = ev.get("heldout_accuracy")
        print(
            f"{method:8s} held-out reward accuracy: {acc_s if acc_s is None else round(acc_s, 3)}"
        )
    return 0
