"""Checkpoints and the metrics log of the trainer.

A checkpoint is ``accelerator.save_state`` (weights, optimizer, scheduler, every RNG) in
``output_dir/checkpoints/step-{step}`` plus ``trainer_state.json`` (the step count and the
running statistics: skip and truncation counters, group weights, the running normaliser), all
restored by ``resume=True`` (:func:`resume_state`). The metrics log is ``metrics.jsonl``, one
JSON object per logged step (NaN and inf written as null).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import InputError
from ..io import read_jsonl_objects
from .adapters import load_adapter_checkpoint

STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"


def save_checkpoint(acc, out_dir: Path, step: int, *, running: dict | None = None) -> Path:
    """``accelerator.save_state`` (weights, optimizer, scheduler, every RNG) to
    ``out_dir/checkpoints/step-{step}``, plus ``trainer_state.json`` holding the step count and
    the ``running`` statistics (skip and truncation counters; other running state such as group
    weights or robust normalisers belongs here too), all restored by ``resume=True``."""
    path = Path(out_dir) / "checkpoints" / f"step-{step}"
    acc.save_state(str(path))
    if acc.is_main_process:
        state = {"step": step, "running": dict(running or {})}
        (path / STATE_FILE).write_text(json.dumps(state))
    acc.wait_for_everyone()
    return path


def latest_checkpoint(output_dir) -> Path | None:
    """The checkpoint folder with the highest step under ``output_dir/checkpoints``."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    steps = [(int(p.name.split("-")[1]), p) for p in root.glob("step-*") if p.is_dir()]
    steps = [(s, p) for s, p in steps if (p / STATE_FILE).exists()]
    return max(steps)[1] if steps else None


def resume_state(acc, model, ckpt: Path, out_dir: Path, *, peft: bool) -> tuple[int, dict, list]:
    """Load checkpoint ``ckpt`` into the prepared ``model``/optimizer/scheduler (adapters only
    for a PEFT model) and return ``(step, running statistics, metrics rows up to step)``."""
    if peft:
        load_adapter_checkpoint(acc, model, ckpt)
    else:
        acc.load_state(str(ckpt))
    saved = json.loads((ckpt / STATE_FILE).read_text())
    start = saved["step"]
    metrics = [m for m in read_metrics(out_dir) if m["step"] <= start]
    return start, dict(saved.get("running", {})), metrics


def group_state(alpha, labels) -> dict:
    """The group weights of ``group_dpo`` as running statistics (empty without groups)."""
    if alpha is None:
        return {}
    return {"group_labels": list(labels), "group_weights": alpha.tolist()}


def restore_group_weights(state: dict, labels, ckpt) -> torch.Tensor:
    """The group weights saved in a checkpoint's running statistics, for the same groups."""
    if state.get("group_labels") != list(labels) or "group_weights" not in state:
        raise InputError(
            f"checkpoint {ckpt} holds group weights for groups {state.get('group_labels')}, "
            f"but the dataset has groups {list(labels)}: resume with the same dataset"
        )
    return torch.tensor(state["group_weights"], dtype=torch.float64)


def json_line(row: dict) -> str:
    """One metrics line; NaN and inf become null (JSON has no such numbers)."""
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
    }
    return json.dumps(clean) + "\n"


def write_metrics(out_dir: Path, rows: list[dict]) -> None:
    """Write ``rows`` as the whole metrics log of ``out_dir``."""
    with open(Path(out_dir) / METRICS_FILE, "w") as f:
        for r in rows:
            f.write(json_line(r))


def append_metrics(out_dir: Path, row: dict) -> None:
    """Append one row to the metrics log of ``out_dir``."""
    with open(Path(out_dir) / METRICS_FILE, "a") as f:
        f.write(json_line(row))


def read_metrics(out_dir) -> list[dict]:
    """The metrics log ``out_dir/metrics.jsonl`` as a list of dicts."""
    p = Path(out_dir) / METRICS_FILE
    if not p.exists() or p.stat().st_size == 0:
        return []
    return [obj for _, obj in read_jsonl_objects(p, what="(one metrics row)")]


__all__ = [
    "METRICS_FILE",
    "STATE_FILE",
    "append_metrics",
    "group_state",
    "json_line",
    "latest_checkpoint",
    "read_metrics",
    "restore_group_weights",
    "resume_state",
    "save_checkpoint",
    "write_metrics",
]
