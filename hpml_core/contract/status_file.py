"""The run's own status file, ``<out>/status.json``, written by rank 0: what ``hpml status``
shows while a job runs ("running, step k of n") and after it ends (the final status, as in the
rank files). Written at the start, with each progress line (every tenth of the run, and at
least every 30 s) and at the end, atomically and from the host only: it never waits for the GPU.

The engine's words for where a run stands: ``starting`` and ``running`` while it trains, then
one ``Outcome``, the same word its rank files carry. The file is the run's, not an attempt's:
each attempt overwrites it, and says which attempt it is (``attempt``, as in
``hpml_core.contract.attempts``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from hpml_core.contract.atomic import atomic_write_json

STATUS_FILE = "status.json"
# How a process ended: completed; failed; oom (out of memory); stopped (by a signal, after a
# checkpoint: resume with --resume).
Outcome = Literal["completed", "failed", "oom", "stopped"]
ACTIVE_STATES = ("starting", "running")


FIELDS = ("state", "step", "total_steps", "started_at", "updated_at")


def read_status(run_dir: Path) -> dict | None:
    """The run's status file, or None before the engine has written one (or when what is there
    is not one: a reader shows "no progress", never a traceback)."""
    try:
        found = json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict) or any(field not in found for field in FIELDS):
        return None
    return found


class Progress:
    def __init__(self, out: Path, total_steps: int, attempt: int, enabled: bool):
        self.out, self.total_steps, self.attempt, self.enabled = out, total_steps, attempt, enabled
        self.started = time.time()

    def update(self, state: str, step: int, error: str | None = None) -> None:
        if self.enabled:
            atomic_write_json(self.out / STATUS_FILE, {
                "state": state, "attempt": self.attempt, "step": step, "total_steps": self.total_steps,
                "error": error,
                "started_at": self.started, "updated_at": time.time(),
            })
