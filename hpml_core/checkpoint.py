"""Checkpoints, so that a run stopped at its time limit resumes at the same step, and one whose
newest checkpoint was damaged resumes from the one before.

Layout under the checkpoint folder: ``step-<n>/`` holds the state after ``n`` completed steps,
and it is a checkpoint once its ``manifest.json`` exists: the run's fingerprint, and every file's
size and SHA-256, taken from the disk after every rank has written its state. The newest
``keep`` checkpoints are kept (``--keep-checkpoints``, 2 by default); an older one is removed only
once a newer one is complete and its manifest written. A step folder without a manifest (a save
cut short) is no checkpoint, and is removed by the next save.

A ``--resume`` tries the checkpoints newest first: the manifest must be readable, the files
those it lists with the size and checksum it lists, and the stepper must read its part. The
first that passes is continued; the ones before it are named, with why, in the status file and
the rank files, and the steps they held are trained again (counted there). When none passes it
exits 2, listing each and why. Every rank reads every file, so all make the same choice before
any process group exists (for GPT-2 Large's 12 GB of checkpoint at about 1.3 GB/s a core,
seconds, once per resumed attempt).

Saving is collective and agreed: a rank whose write fails (a full disk, as
``hpml_core.contract.atomic`` words it) does not leave the others waiting at a barrier; every rank
learns of the first failure and raises it, the incomplete step folder is removed, and the
checkpoints already there are untouched.

What a step folder holds is the stepper's (``hpml_core.stepper``: its own files for a PyTorch
run, DeepSpeed's for ZeRO), which writes, reads and loads its own state; this module owns the
folder layout, the manifest, the fingerprint and the moment a checkpoint becomes one.

The data order is a function of (seed, step), so the step number is all the loader needs to
continue where it stopped. A checkpoint records the run's fingerprint: every setting that
changes the trajectory (the data, the model, the layout, the batch, the sequence length, the
seed, the precision, the optimizer and its hyperparameters, clipping). A run whose fingerprint
differs is refused before training starts, in one line naming the flag, instead of silently
continuing another run's training.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch.distributed as dist

from hpml_core.contract.atomic import atomic_write_json
from hpml_core.contract.config import TrainConfig, flag
from hpml_core.contract.data_meta import DataMeta
from hpml_core.contract.errors import UsageError, WriteRefused

if TYPE_CHECKING:  # the stepper loads a ``Resume``, so it imports this module
    from hpml_core.stepper import Stepper

MANIFEST = "manifest.json"
STEP_FOLDER = re.compile(r"^step-(\d+)$")
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


def _tag(step: int) -> str:
    return f"step-{step:08d}"


@dataclass(frozen=True)
class Skipped:
    """A checkpoint a resume could not use, and why."""

    tag: str
    step: int
    reason: str


@dataclass(frozen=True)
class Resume:
    """The checkpoint a run continues from; ``state``: what the stepper's reader loaded ahead
    (``hpml_core.stepper.state_reader``), None where its backend reads its files itself;
    ``skipped``: the newer checkpoints that were damaged, newest first."""

    folder: Path
    step: int
    tag: str
    state: dict | None
    skipped: tuple[Skipped, ...] = ()

    @property
    def steps_retrained(self) -> int:
        """Steps a damaged newer checkpoint held that this run trains again."""
        return max((s.step - self.step for s in self.skipped), default=0)

    def note(self) -> str | None:
        """The fallback in one line, for the log and the status file; None when there was none."""
        if not self.skipped:
            return None
        damaged = "; ".join(f"{s.tag} is damaged ({s.reason})" for s in self.skipped)
        again = self.steps_retrained
        return f"resumed from {self.tag}: {damaged}; {again} step{'s' if again != 1 else ''} trained again"


def save(folder: Path, step: int, stepper: Stepper, rank: int, made_by: dict, keep: int) -> None:
    """Collective: every rank calls it. The step becomes a checkpoint (its manifest written) only
    once every rank's state is on disk and checksummed; then all but the newest ``keep`` go.
    Raises the first rank's failure on every rank, leaving the earlier checkpoints as they were."""
    tag = _tag(step)
    step_dir = folder / tag
    # An earlier attempt's checkpoint of this step (one a resume found damaged) stops being one first.
    forgotten = _failure_of(lambda: (step_dir / MANIFEST).unlink(missing_ok=True)) if rank == 0 else None
    _raise_agreed(forgotten, folder, tag, rank)
    _raise_agreed(_failure_of(lambda: stepper.save_state(folder, tag)), folder, tag, rank)
    names = sorted(p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*") if p.is_file())
    world = dist.get_world_size() if dist.is_initialized() else 1
    digests = {name: _digest(step_dir / name) for name in names[rank::world]}  # the reading shared out
    files = {}
    for part in _gathered(digests):
        files.update(part)
    failure = None
    if rank == 0:
        manifest = {"step": step, "tag": tag, "fingerprint": made_by, "files": dict(sorted(files.items()))}
        failure = _failure_of(lambda: atomic_write_json(step_dir / MANIFEST, manifest))
    _raise_agreed(failure, folder, tag, rank)
    if rank == 0:  # a checkpoint now: the ones it replaces can go
        _prune(folder, step, keep)


def _digest(path: Path) -> dict:
    with open(path, "rb") as f:
        return {"bytes": path.stat().st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def _failure_of(action: Callable[[], object]) -> Exception | None:
    try:
        action()
    except Exception as exc:  # agreed with the other ranks, then raised
        return exc
    return None


def _gathered(value):
    """Every rank's ``value``, in rank order (just this one's in a single process)."""
    if not dist.is_initialized():
        return [value]
    found = [None] * dist.get_world_size()
    dist.all_gather_object(found, value)
    return found


def _raise_agreed(failure: Exception | None, folder: Path, tag: str, rank: int) -> None:
    """Collective: if any rank failed, every rank raises the first failure (its own if it had one),
    after rank 0 removed the step folder that will not become a checkpoint."""
    portable = failure if failure is None or isinstance(failure, WriteRefused) else \
        RuntimeError(f"{type(failure).__name__}: {failure}")
    failures = [(r, f) for r, f in enumerate(_gathered(portable)) if f is not None]
    if not failures:
        return
    if rank == 0:
        shutil.rmtree(folder / tag, ignore_errors=True)
    if failure is not None:
        raise failure
    first_rank, first = failures[0]
    if isinstance(first, WriteRefused):
        raise first
    raise RuntimeError(f"rank {first_rank} could not save checkpoint {tag}: {first}")


def _prune(folder: Path, saved: int, keep: int) -> None:
    """Remove every step folder but the newest ``keep`` checkpoints up to ``saved``: older ones,
    ones without a manifest (saves cut short) and newer ones (damaged: a resume passed them by)."""
    steps = _step_folders(folder)
    kept = [step for step, path in steps if step <= saved and (path / MANIFEST).exists()][:keep]
    for step, path in steps:
        if step not in kept:
            shutil.rmtree(path, ignore_errors=True)


def _step_folders(folder: Path) -> list[tuple[int, Path]]:
    """The step folders, newest first."""
    found = [(int(m[1]), p) for p in folder.glob("step-*") if (m := STEP_FOLDER.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


class Damaged(Exception):
    """Why a checkpoint's files are not what its manifest says."""


def find(folder: Path, expected: dict, read_state: StateReader) -> Resume | None:
    """The newest usable checkpoint, None when there is none yet. A damaged one is passed by for
    the one before it (and named in the ``Resume``); a foreign one is refused (``UsageError``),
    as is a folder where every checkpoint is damaged, listing each."""
    if not folder.is_dir():
        return None
    skipped: list[Skipped] = []
    for step, path in _step_folders(folder):
        if not (path / MANIFEST).exists():
            continue  # a save cut short: never a checkpoint
        try:
            manifest = _read_manifest(path, step)
        except Damaged as exc:
            skipped.append(Skipped(path.name, step, str(exc)))
            continue
        _require_same(manifest["fingerprint"], expected, step)
        try:
            _verify(path, manifest["files"])
            state = read_state(folder, path.name)
        except Exception as exc:  # noqa: BLE001 - any reason a checkpoint cannot be read passes it by
            skipped.append(Skipped(path.name, step, str(exc) if isinstance(exc, Damaged)
                                   else f"{type(exc).__name__}: {exc}"))
            continue
        return Resume(folder, step, path.name, state, tuple(skipped))
    if skipped:
        tried = "; ".join(f"{s.tag}: {s.reason}" for s in skipped)
        raise UsageError("--resume", f"no usable checkpoint in {folder}, tried {len(skipped)}: {tried}")
    return None


def _read_manifest(path: Path, step: int) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        if manifest["step"] != step or not isinstance(manifest["files"], dict) or not manifest["files"]:
            raise ValueError("not this step's manifest")
        for name, entry in manifest["files"].items():
            if not (isinstance(entry["bytes"], int) and isinstance(entry["sha256"], str)):
                raise ValueError(f"{name!r}: no size and checksum")
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ValueError(f"names a file outside its folder: {name!r}")
        if not isinstance(manifest["fingerprint"], dict):
            raise ValueError("no fingerprint")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Damaged(f"{MANIFEST} unreadable: {type(exc).__name__}: {exc}") from None
    return manifest


def _verify(path: Path, files: dict) -> None:
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise Damaged(f"{name} is missing")
        if file.stat().st_size != entry["bytes"]:
            raise Damaged(f"{name} has {file.stat().st_size:,} bytes, the manifest says {entry['bytes']:,}")
        if _digest(file)["sha256"] != entry["sha256"]:
            raise Damaged(f"{name} does not match its checksum")


def _require_same(made_by: dict, expected: dict, step: int) -> None:
    for key, value in expected.items():
        if key not in made_by:
            raise UsageError(_flag(key), f"the checkpoint at step {step} does not record it (made by an "
                             "older hpml), so it cannot be checked; train from step 0 without --resume")
        if made_by[key] != value:
            raise UsageError(_flag(key), mismatch(key, step, made_by[key], value))


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
