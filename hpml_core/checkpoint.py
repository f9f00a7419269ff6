"""Checkpoints, so that a run stopped at its time limit resumes at the same step.

Layout under the checkpoint folder: ``step-<n>/`` holds the state after ``n`` completed steps,
and ``latest.json`` names the newest complete one together with the run's fingerprint; it is
replaced only after every rank's state is on disk, and older states are then removed.

What a step folder holds is the stepper's (``hpml_core.stepper``: its own files for a PyTorch
run, DeepSpeed's for ZeRO-3), which writes, reads and loads its own state; this module owns the
folder layout, the fingerprint and the moment a checkpoint becomes the latest.

The data order is a function of (seed, step), so the step number is all the loader needs to
continue where it stopped. A checkpoint records the run's fingerprint: every setting that
changes the trajectory (the data, the model, the layout, the batch, the sequence length, the
seed, the precision, the optimizer and its hyperparameters, clipping). A run whose fingerprint
differs is refused before training starts, in one line naming the flag, instead of silently
continuing another run's training.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch.distributed as dist

from hpml_core.contract.atomic import atomic_write_json
from hpml_core.contract.config import TrainConfig, flag
from hpml_core.contract.data_meta import DataMeta
from hpml_core.contract.errors import UsageError

if TYPE_CHECKING:  # the stepper loads a ``Resume``, so it imports this module
    from hpml_core.stepper import Stepper

LATEST = "latest.json"
# What a stepper reads of its state, from the checkpoint folder and a step's tag, before training.
StateReader = Callable[[Path, str], dict | None]
# The config fields that change the trajectory, in the order a mismatch is reported; the data's
# identity and the data-parallel size (which the world size sets) are added by ``fingerprint``.
MUST_MATCH = ("model", "mode", "tp_size", "batch_size", "grad_accum", "seq_len", "seed", "precision", "optimizer",
              "lr", "weight_decay", "grad_clip")


def fingerprint(config: TrainConfig, dp_size: int, data: DataMeta) -> dict:
    """What a checkpoint must have been made with for this run to continue it (JSON-ready)."""
    settings = {k: getattr(config, k) for k in MUST_MATCH}
    return {"data": data.identity, **settings, "dp_size": dp_size}


def require_whole(paths: list[Path]) -> None:
    """Raise, naming the first file, if any of ``paths`` is missing or cut short: ``torch.save``
    writes a zip archive whose directory is at its end, so reading the directory reads the
    whole file's extent. Every rank checks every rank's file of a checkpoint, not only its own,
    so that all refuse a damaged checkpoint alike (and rank 0, which alone prints, says which)."""
    for path in paths:
        try:
            zipfile.ZipFile(path).close()
        except (OSError, zipfile.BadZipFile) as exc:
            raise RuntimeError(f"{path.name}: {exc}") from None


def _tag(step: int) -> str:
    return f"step-{step:08d}"


@dataclass(frozen=True)
class Resume:
    """The checkpoint a run continues from; ``state``: what the stepper's reader loaded ahead
    (``hpml_core.stepper.state_reader``), None where its backend reads its files itself."""

    folder: Path
    step: int
    tag: str
    state: dict | None


def save(folder: Path, step: int, stepper: Stepper, rank: int, made_by: dict) -> None:
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


def find(folder: Path, expected: dict, read_state: StateReader) -> Resume | None:
    """The newest checkpoint, None when there is none yet; refuses a corrupt or foreign one.
    ``read_state`` reads this rank's part of it, so that a corrupt file is refused here too."""
    latest = folder / LATEST
    if not latest.exists():
        return None
    try:
        meta = json.loads(latest.read_text())
        step, tag, made_by = int(meta["step"]), meta["tag"], meta["fingerprint"]
        state = read_state(folder, tag)
    except Exception as exc:
        raise UsageError("--resume", f"checkpoint in {folder} is unreadable ({type(exc).__name__}: {exc})") from None
    for key, value in expected.items():
        if key not in made_by:
            raise UsageError(_flag(key), f"the checkpoint at step {step} does not record it (made by an "
                             "older hpml), so it cannot be checked; train from step 0 without --resume")
        if made_by[key] != value:
            raise UsageError(_flag(key), mismatch(key, step, made_by[key], value))
    return Resume(folder, step, tag, state)


def _flag(key: str) -> str:
    return "world size" if key == "dp_size" else flag(key)


def mismatch(key: str, step: int, made_with, this_run) -> str:
    """Why a checkpoint cannot be continued by this run, in words a user can act on."""
    if key == "data":
        return (f"the checkpoint at step {step} was made from other data ({describe_data(made_with)}; "
                f"this run's: {describe_data(this_run)})")
    if key == "dp_size":
        return (f"the checkpoint at step {step} was made with {made_with} data-parallel replicas, "
                f"this run has {this_run}")
    return f"the checkpoint at step {step} was made with {made_with}, this run has {this_run}"


def describe_data(identity: dict) -> str:
    """A prepared data folder's identity in a few words: its size, vocabulary and origin."""
    source = identity.get("source") or {}
    origin = source.get("hub") or ", ".join(Path(f).name for f in source.get("files") or []) or "unknown source"
    tokenizer = (identity.get("tokenizer") or {}).get("source", "unknown")
    return (f"{identity.get('num_tokens', 0):,} tokens, vocabulary {identity.get('vocab_size')}, {tokenizer} "
            f"tokenizer, from {origin}")
