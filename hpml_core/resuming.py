"""Where a launch of a run takes up its work: the checkpoint it continues from, whether anything
is left to do at all, and the attempt folder it writes into.

A job script always runs the same command with ``--resume``, however often Slurm requeues it,
so every launch must end well whatever state the run is in:

- nothing yet: train from step 0;
- a checkpoint: continue from it, however few steps remain, even if all of them are warm-up
  (the attempt then has no throughput of its own, and its rank files say so);
- the latest attempt completed every step: do nothing, touch nothing, and exit 0.

These decisions are made before any process group exists, from files every rank reads alike,
so all ranks make the same one. Each launch that trains gets its own attempt folder
(``hpml_core.contract.attempts``), so nothing an earlier attempt wrote is overwritten.
"""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from hpml_core import checkpoint
from hpml_core.mesh import Position
from hpml_core.stepper import state_reader
from hpml_core.contract import attempts
from hpml_core.contract.atomic import refusal
from hpml_core.contract import rank_file as rf
from hpml_core.contract.config import TrainConfig
from hpml_core.contract.data_meta import DataMeta
from hpml_core.contract.errors import UsageError
from hpml_core.contract.run_states import COMPLETED


class AlreadyCompleted(Exception):
    """The run's latest attempt trained every step: a ``--resume`` has nothing left to do."""


def checkpoint_dir(config: TrainConfig, out: Path) -> Path:
    return config.checkpoint_dir or out / "checkpoints"


def resume_point(config: TrainConfig, total_steps: int, position: Position,
                 data: DataMeta) -> checkpoint.Resume | None:
    """The checkpoint a ``--resume`` continues from (None: none yet, start at step 0). Raises
    ``UsageError`` for a checkpoint this run cannot continue (checked first: a completed run
    asked to resume with other settings is told so, not told it is done), and
    ``AlreadyCompleted`` when the latest attempt trained every step."""
    if config.out is None:
        raise UsageError("--resume", "needs --out, the run folder to resume in")
    found = checkpoint.find(checkpoint_dir(config, config.out), checkpoint.fingerprint(config, position.dp_size, data),
                            state_reader(config.mode, position))
    done = completed_attempt(config.out, total_steps)
    if done is not None:
        raise AlreadyCompleted(f"run {config.run_id or config.out.name} already completed in attempt {done}; "
                               "nothing to do")
    if found and found.step > total_steps:
        raise UsageError("--steps", f"{total_steps} is fewer than the {found.step} steps the checkpoint has "
                                    "already trained")
    return found


def completed_attempt(run_dir: Path, total_steps: int) -> int | None:
    """The latest attempt's number if the rank files of all its ranks say it completed all
    ``total_steps``; None otherwise (no attempt, a rank file missing or unreadable, a failure,
    a stop, or fewer steps than this run asks for)."""
    latest = attempts.latest_attempt(run_dir)
    paths = attempts.rank_files(run_dir, latest) if latest is not None else {}
    try:
        records = [rf.read(path) for path in paths.values()]
    except (OSError, ValueError):  # a rank file cut short or from another schema: not a completion
        return None
    if not records or sorted(paths) != list(range(records[0].world_size)):
        return None
    if all(r.status == COMPLETED and r.steps_completed == total_steps for r in records):
        return latest
    return None


def open_attempt(run_dir: Path, rank: int) -> int:
    """Collective. Rank 0 creates the run's next attempt folder and every rank learns its number.
    The folder is always a new one: if another launch made that number first, the next is taken."""
    number = _create_next_attempt(run_dir) if rank == 0 else 0
    if dist.is_initialized():
        box = [number]
        dist.broadcast_object_list(box, src=0)
        number = box[0]
    return number


def _create_next_attempt(run_dir: Path) -> int:
    number = attempts.next_attempt(run_dir)
    while True:
        folder = attempts.attempt_folder(run_dir, number)
        try:
            folder.mkdir(parents=True, exist_ok=False)
            return number
        except FileExistsError:
            number += 1
        except OSError as exc:  # a full disk or a folder not ours, in words
            raise refusal(exc, folder) or exc from None
