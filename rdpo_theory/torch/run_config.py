"""The recorded configuration of a training run, and the check that keeps runs from mixing.

Every output directory of :func:`rdpo_theory.torch.train.train_preference` holds
``config.json``: the :class:`~rdpo_theory.torch.train.TrainConfig` fields plus a ``run`` block
with the data hash (SHA-256 of the rows), the policy's and the reference's identity (class,
``name_or_path``, SHA-256 of the model config and of the weights the run started from), the
tokenizer's identity (SHA-256 of its vocabulary: every token with its id, and the special
tokens), the number of processes, the global batch and the package, torch and transformers
versions. ``resume=True`` compares the recorded
configuration with the new one field by field and refuses a directory whose configuration
differs, naming every differing field; only the fields in :data:`RESUMABLE_FIELDS` may change
between an interrupted run and its continuation. See ``docs/reliability.md``.

The policy's weight hash is that of the model *given* to the trainer, before any checkpoint is
loaded: a resumed run must be given the model the run started from (its trained weights then
come from the checkpoint), and is compared with the start hash recorded in ``config.json``,
never with the checkpoint's trained weights. That matters beyond bookkeeping: without a
``ref_model`` the reference is a copy of that model, and with adapters (PEFT) the checkpoint
holds only the adapters, so the base weights must be the run's own.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .. import __version__
from ..errors import InputError
from .normalizers import DEPRECATED_NORMALIZERS

CONFIG_FILE = "config.json"

#: TrainConfig fields that may differ when a run is resumed: they change what is logged,
#: saved or shown, or how far the run goes, never the numbers of a step.
#: (``max_steps`` changes the learning rate of ``schedule="linear"``, so it is compared then.)
#: ``fused_head`` changes how the log-probs are computed and the memory a step needs, not what
#: they are (float rounding only): a run stopped by out-of-memory may resume with it.
RESUMABLE_FIELDS = frozenset(
    {
        "max_steps",
        "log_every",
        "save_every",
        "output_dir",
        "resume",
        "save_final_model",
        "progress",
        "fused_head",
    }
)


def data_hash(rows) -> str:
    """SHA-256 of the preference rows (their JSON with sorted keys, in order)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model


def model_identity(model) -> dict:
    """Class, ``name_or_path``, the SHA-256 of the model's config (architecture, vocabulary,
    dropout, ...) and of its weights (:func:`weights_hash`)."""
    model = _unwrap(model)
    conf = getattr(model, "config", None)
    if conf is not None and hasattr(conf, "to_dict"):
        d = {k: v for k, v in conf.to_dict().items() if k not in ("_name_or_path",)}
        d.pop("transformers_version", None)
        text = json.dumps(d, sort_keys=True, default=str)
        name = str(getattr(conf, "_name_or_path", "") or getattr(conf, "name_or_path", ""))
    else:
        text, name = repr(model), ""
    return {
        "class": type(model).__name__,
        "name_or_path": name,
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "weights_sha256": weights_hash(model),
    }


def weights_hash(model) -> str | None:
    """SHA-256 of a model's ``state_dict``: every entry's name, dtype, shape and bytes, in
    order (None for an object without ``state_dict``). Tensors are copied to the CPU one at a
    time (about a second per GB of weights); meta tensors contribute their name, dtype and
    shape only."""
    model = _unwrap(model)
    if not hasattr(model, "state_dict"):
        return None
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.is_meta:  # no values to hash (a model not yet materialised)
            continue
        flat = t.detach().contiguous().reshape(-1).cpu()
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


def tokenizer_identity(tokenizer) -> dict | None:
    """Class and the SHA-256 of the tokenizer's vocabulary: every ``(token, id)`` pair of
    ``get_vocab()`` (added tokens included) and the special tokens, so a tokenizer with the same
    words but other ids has another hash. None for ``tokenizer=None``."""
    if tokenizer is None:
        return None
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    special = getattr(tokenizer, "special_tokens_map", {}) or {}
    text = json.dumps(
        {"vocab": sorted((str(k), int(v)) for k, v in vocab.items()), "special": special},
        sort_keys=True,
        default=str,
    )
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(vocab),
        "vocab_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


def run_record(
    cfg, rows, model, ref_model, *, num_processes: int, tokenizer=None, normalizer=None
) -> dict:
    """The configuration written to ``config.json``: ``cfg.to_dict()`` plus a ``run`` block.
    Call it with the models as given to the trainer (the weights the run starts from).
    ``normalizer``: the normaliser the run uses (``cfg.robust_normalizer`` with ``"auto"``
    resolved), recorded as ``run.robust_normalizer``."""
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:  # pragma: no cover
        tf_version = None
    rec = cfg.to_dict()
    rec["run"] = {
        "data_sha256": data_hash(rows),
        "n_rows": len(rows),
        "model": model_identity(model),
        "reference_model": model_identity(ref_model),
        "tokenizer": tokenizer_identity(tokenizer),
        "num_processes": int(num_processes),
        "global_batch": cfg.batch_size * cfg.grad_accum * int(num_processes),
        "robust_normalizer": normalizer if normalizer is not None else cfg.robust_normalizer,
        "package_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "transformers_version": tf_version,
    }
    return rec


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k in ("run", "model", "reference_model", "tokenizer"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def differing_fields(recorded: dict, current: dict) -> list[str]:
    """``"field: recorded X, now Y"`` for every compared field that differs."""
    a, b = _flatten(recorded), _flatten(current)
    for d in (a, b):  # a run recorded under the deprecated spelling resumes as "batch"
        if d.get("robust_normalizer") in DEPRECATED_NORMALIZERS:
            d["robust_normalizer"] = "batch"
    skip = set(RESUMABLE_FIELDS)
    if a.get("schedule") == "linear" or b.get("schedule") == "linear":
        skip.discard("max_steps")
    out = []
    for k in sorted(set(a) | set(b)):
        if k in skip:
            continue
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if json.dumps(va, sort_keys=True, default=str) != json.dumps(
            vb, sort_keys=True, default=str
        ):
            out.append(f"{k}: recorded {va!r}, now {vb!r}")
    return out


def read_record(out_dir) -> dict | None:
    """The recorded configuration of ``out_dir`` (None when there is none)."""
    p = Path(out_dir) / CONFIG_FILE
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"output_dir {str(out_dir)!r}: cannot read {CONFIG_FILE}: {exc}") from None
    if not isinstance(rec, dict):
        raise InputError(f"output_dir {str(out_dir)!r}: {CONFIG_FILE} is not a JSON object")
    return rec


def check_output_dir(out_dir, record: dict, *, resume: bool, has_checkpoint: bool) -> None:
    """Refuse to mix runs in ``out_dir``.

    * ``resume=True``: the recorded configuration (if any) must equal ``record`` on every
      field except :data:`RESUMABLE_FIELDS`; otherwise :class:`InputError` names each
      differing field. A directory with checkpoints but no recorded configuration (written
      by an older version) is refused too.
    * ``resume=False``: a directory that already holds checkpoints is refused (a later
      ``resume=True`` would otherwise continue from the other run's checkpoint).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output_dir {str(out_dir)!r} exists and is not a directory")
    old = read_record(out_dir)
    if not resume:
        if has_checkpoint:
            raise InputError(
                f"output_dir {str(out_dir)!r} already holds checkpoints of a run; pass "
                "resume=True (--resume) to continue it, or choose a new directory"
            )
        return
    if old is None:
        if has_checkpoint:
            raise InputError(
                f"output_dir {str(out_dir)!r} holds checkpoints but no {CONFIG_FILE}: cannot "
                "check that they belong to this run; choose a new directory"
            )
        return
    diff = differing_fields(old, json.loads(json.dumps(record, default=str)))
    if diff:
        raise InputError(
            f"resume=True refuses output_dir {str(out_dir)!r}: its recorded configuration "
            f"differs in {len(diff)} field(s): " + "; ".join(diff)
        )


__all__ = [
    "CONFIG_FILE",
    "RESUMABLE_FIELDS",
    "check_output_dir",
    "data_hash",
    "differing_fields",
    "model_identity",
    "read_record",
    "run_record",
    "tokenizer_identity",
    "weights_hash",
]
