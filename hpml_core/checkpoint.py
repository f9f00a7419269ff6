"""Checkpoints, so that a run stopped at its time limit resumes at the same step.

Layout under the checkpoint folder: ``step-<n>/`` holds the state after ``n`` completed steps,
and ``latest.json`` names the newest complete one together with the run's fingerprint; it is
replaced only after every rank's state is on disk, and older states are then removed.

- PyTorch runs: ``state-tp<r>.pt`` per tensor-parallel rank (model shard, optimizer and loss
  scaler), written by the first data-parallel replica (the others are identical);
- ZeRO-3 runs: DeepSpeed's own checkpoint of the partitioned state, every rank writing its
  partition (``engine.save_checkpoint``), under the same step folder name as its tag.

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
import torch.nn as nn

from hpml_core.spec.atomic import atomic_write, atomic_write_json
from hpml_core.spec.config import TrainConfig
from hpml_core.spec.errors import UsageError
from hpml_core.mesh import Mesh

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


def save(folder: Path, step: int, model: nn.Module, optimizer, scaler, engine, mesh: Mesh, rank: int,
         made_by: dict) -> None:
    """Collective: every rank calls it."""
    tag = _tag(step)
    if engine is not None:
        engine.save_checkpoint(str(folder), tag=tag)
    elif mesh.dp_rank == 0:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}
        atomic_write(folder / tag / f"state-tp{mesh.tp_rank}.pt", lambda f: torch.save(state, f))
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


def restore(resume: Resume, model: nn.Module, optimizer, scaler, engine) -> int:
    if engine is not None:
        path, _ = engine.load_checkpoint(str(resume.folder), tag=resume.tag)
        if path is None:
            raise UsageError("--resume", f"DeepSpeed found no checkpoint {resume.tag} in {resume.folder}")
    else:
        model.load_state_dict(resume.state["model"])
        optimizer.load_state_dict(resume.state["optimizer"])
        scaler.load_state_dict(resume.state["scaler"])
    return resume.step
