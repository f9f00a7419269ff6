"""Checkpoints, so that a run stopped at its time limit resumes at the same step.

Layout under the checkpoint folder: ``step-<n>/state.pt`` (model, optimizer and loss-scaler
state after ``n`` completed steps) and ``latest.json`` naming the newest complete one;
``latest.json`` is replaced only after the state file is on disk, and older states are then
removed. The data order is a function of (seed, step), so the step number is all the loader
needs to continue where it stopped. DDP replicas are identical, so rank 0 writes and every
rank reads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from hpml_core.atomic import atomic_write, atomic_write_json
from hpml_core.config import TrainConfig
from hpml_core.errors import UsageError

LATEST = "latest.json"
# A checkpoint is only valid for a run that reads the same batches with the same model.
MUST_MATCH = ("model", "seq_len", "batch_size", "tp_size", "seed", "precision", "optimizer")


def _fingerprint(config: TrainConfig, dp_size: int) -> dict:
    return {**{k: getattr(config, k) for k in MUST_MATCH}, "dp_size": dp_size}


def save(folder: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
         scaler: torch.amp.GradScaler, config: TrainConfig, dp_size: int) -> Path:
    state = {
        "step": step,
        "fingerprint": _fingerprint(config, dp_size),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
    }
    name = f"step-{step:08d}"
    atomic_write(folder / name / "state.pt", lambda f: torch.save(state, f))
    atomic_write_json(folder / LATEST, {"step": step, "path": f"{name}/state.pt"})
    for old in folder.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return folder / name


def load_latest(folder: Path, config: TrainConfig, dp_size: int) -> dict | None:
    """The newest checkpoint's state, None when there is none yet; refuses a corrupt or foreign one."""
    latest = folder / LATEST
    if not latest.exists():
        return None
    try:
        path = folder / json.loads(latest.read_text())["path"]
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        step, fingerprint = int(state["step"]), state["fingerprint"]
    except Exception as exc:
        raise UsageError("--resume", f"checkpoint in {folder} is unreadable ({type(exc).__name__}: {exc})") from None
    expected = _fingerprint(config, dp_size)
    for key, value in expected.items():
        if fingerprint.get(key) != value:
            flag = "--" + key.replace("_", "-") if key != "dp_size" else "world size"
            raise UsageError(flag, f"the checkpoint at step {step} was made with {fingerprint.get(key)!r}, this run has {value!r}")
    return state


def restore(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> int:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return int(state["step"])
