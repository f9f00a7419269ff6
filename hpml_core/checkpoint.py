"""Checkpoints, so that a run stopped at its time limit resumes at the same step.

Layout under the checkpoint folder: ``step-<n>/`` holds the state after ``n`` completed steps,
and ``latest.json`` names the newest complete one together with the run's fingerprint; it is
replaced only after every rank's state is on disk, and older states are then removed.

- PyTorch runs: ``state-tp<r>.pt`` per tensor-parallel rank (model shard, optimizer and loss
  scaler), written by the first data-parallel replica (the others are identical);
- ZeRO-3 runs: DeepSpeed's own checkpoint of the partitioned state, every rank writing its
  partition (``engine.save_checkpoint``), under the same step folder name as its tag.

Each stepper (``hpml_core.stepper``) writes and restores its own state; this module owns the
folder layout, the fingerprint and the moment a checkpoint becomes the latest.

The data order is a function of (seed, step), so the step number is all the loader needs to
continue where it stopped. A checkpoint is refused, before training starts, when it was made
by a run that would read other batches or hold another model layout.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from hpml_core.spec.atomic import atomic_write_json
from hpml_core.spec.config import TrainConfig
from hpml_core.spec.errors import UsageError

LATEST = "latest.json"
MUST_MATCH = ("mode", "model", "seq_len", "batch_size", "grad_accum", "tp_size", "seed", "precision", "optimizer")


def fingerprint(config: TrainConfig, dp_size: int) -> dict:
    return {**{k: getattr(config, k) for k in MUST_MATCH}, "dp_size": dp_size}


def _tag(step: int) -> str:
    return f"step-{step:08d}"


@dataclass(frozen=True)
class Resume:
    """The checkpoint a run continues from; ``state`` is loaded already for PyTorch runs."""

    folder: Path
    step: int
    tag: str
    state: dict | None


def save(folder: Path, step: int, stepper, rank: int, made_by: dict) -> None:
    """Collective: every rank calls it. ``latest.json`` moves only once every rank's state is written."""
    tag = _tag(step)
    stepper.save_state(folder, tag)
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        atomic_write_json(folder / LATEST, {"step": step, "tag": tag, "fingerprint": made_by})
        for old in folder.glob("step-*"):
            if old.name != tag:
                shutil.rmtree(old, ignore_errors=True)


def find(folder: Path, expected: dict, tp_rank: int, zero3: bool) -> Resume | None:
    """The newest checkpoint, None when there is none yet; refuses a corrupt or foreign one."""
    latest = folder / LATEST
    if not latest.exists():
        return None
    try:
        meta = json.loads(latest.read_text())
        step, tag, made_by = int(meta["step"]), meta["tag"], meta["fingerprint"]
        state = None
        if not zero3:  # DeepSpeed reads its own files, once the engine exists
            state = torch.load(folder / tag / f"state-tp{tp_rank}.pt", map_location="cpu", weights_only=True, mmap=True)
            state["model"], state["optimizer"], state["scaler"]  # noqa: B018 - all three must be there
    except Exception as exc:
        raise UsageError("--resume", f"checkpoint in {folder} is unreadable ({type(exc).__name__}: {exc})") from None
    for key, value in expected.items():
        if made_by.get(key) != value:
            flag = "--" + key.replace("_", "-") if key != "dp_size" else "world size"
            raise UsageError(flag, f"the checkpoint at step {step} was made with {made_by.get(key)!r}, this run has {value!r}")
    return Resume(folder, step, tag, state)
