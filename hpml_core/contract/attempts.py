"""Where each attempt of a run writes, so that nothing an earlier attempt wrote is overwritten.

A run (one folder, ``<run>/``) is trained by one or more attempts: the first launch, then each
requeue after a time limit or preemption, each resubmission after a failure. Attempt ``n``
(1, 2, ...) writes its rank files into ``<run>/attempts/<n>/rank-<k>.json``; the engine's rank 0
picks ``n`` as one more than the highest attempt folder there and creates it before training.
The run-level files stay where they were: ``<run>/status.json`` (the current attempt's
progress, with its number), ``<run>/run.json`` and ``<run>/checkpoints/``.

With each checkpoint, rank 0 also writes ``<run>/attempts/<n>/losses.json`` (the attempt's
losses so far, as its rank file will hold them: ``rank_file.Loss``), just before the checkpoint:
an attempt killed too hard to write its rank files (a lost node, the kernel's out-of-memory
killer) still leaves its loss curve up to the checkpoint the next attempt resumes from.

A run's record is assembled from all its attempts (the report's loss curve from step 0, the
step times of each attempt, each attempt's Slurm job and nodes); its outcome is the last
attempt's.
"""

from __future__ import annotations

import re
from pathlib import Path

ATTEMPTS = "attempts"
RANK_FILE = re.compile(r"^rank-(\d+)\.json$")
LOSSES_FILE = "losses.json"


def attempt_folder(run_dir: Path, attempt: int) -> Path:
    return run_dir / ATTEMPTS / str(attempt)


def attempt_numbers(run_dir: Path) -> list[int]:
    """The attempts that have a folder, oldest first (other names in the folder are ignored)."""
    try:
        names = [p.name for p in (run_dir / ATTEMPTS).iterdir() if p.is_dir()]
    except OSError:
        return []
    return sorted(int(name) for name in names if name.isdigit() and int(name) > 0)


def latest_attempt(run_dir: Path) -> int | None:
    numbers = attempt_numbers(run_dir)
    return numbers[-1] if numbers else None


def next_attempt(run_dir: Path) -> int:
    return (latest_attempt(run_dir) or 0) + 1


def losses_path(run_dir: Path, attempt: int) -> Path:
    return attempt_folder(run_dir, attempt) / LOSSES_FILE


def rank_file_path(run_dir: Path, attempt: int, rank: int) -> Path:
    return attempt_folder(run_dir, attempt) / f"rank-{rank}.json"


def rank_files(run_dir: Path, attempt: int) -> dict[int, Path]:
    """The rank files an attempt left, by rank."""
    folder = attempt_folder(run_dir, attempt)
    found = {}
    for path in sorted(folder.glob("rank-*.json")):
        match = RANK_FILE.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def latest_rank_files(run_dir: Path) -> dict[int, Path]:
    """The rank files of the run's latest attempt, by rank; empty before any attempt."""
    latest = latest_attempt(run_dir)
    return rank_files(run_dir, latest) if latest is not None else {}
