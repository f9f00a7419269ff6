"""The ledger of an experiment: for each run, its job id, state and attempts, in
``results/<experiment>/ledger.json``. Every change is a read-modify-write under an exclusive
lock on ``ledger.lock``, and the file is replaced atomically, so two ``hpml submit`` calls at
once neither lose an entry nor leave half a file."""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from hpml_core.spec.atomic import atomic_write_json

LEDGER = "ledger.json"


def read(folder: Path) -> dict[str, dict]:
    path = folder / LEDGER
    return json.loads(path.read_text())["runs"] if path.exists() else {}


@contextmanager
def locked(folder: Path):
    """Yields the runs dict; what it holds when the block ends is written back."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "ledger.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = read(folder)
        yield runs
        atomic_write_json(folder / LEDGER, {"runs": runs})


def claim(folder: Path, run: str, busy, **fields) -> int | None:
    """Mark ``run`` as started by us and return its attempt number, or None when ``busy(entry)``
    says another submitter has it: checked and marked under one lock, so two concurrent
    ``hpml submit`` calls never start the same run."""
    with locked(folder) as runs:
        entry = runs.setdefault(run, {"attempts": 0})
        if busy(entry):
            return None
        entry.update(fields, attempts=entry["attempts"] + 1, updated_at=datetime.now(timezone.utc).isoformat())
        return entry["attempts"]


def update(folder: Path, run: str, **fields) -> None:
    """Set fields of the run's entry (its state, job id, log), under the lock."""
    with locked(folder) as runs:
        entry = runs.setdefault(run, {"attempts": 0})
        entry.update(fields, updated_at=datetime.now(timezone.utc).isoformat())
