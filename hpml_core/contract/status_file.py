"""The run's own status file, ``<out>/status.json``, written by rank 0: what ``hpml status``
shows while a job runs ("running, step k of n") and after it ends (the final status, as in the
rank files). Written at the start, with each progress line (every tenth of the run, and at
least every 30 s) and at the end, atomically and from the host only: it never waits for the GPU.

The engine's words for where a run stands are the run states' own
(``hpml_core.contract.run_states``): ``STARTING`` and ``RUNNING`` while it trains, then one
``Outcome``, the same word its rank files carry, so the jobs layer takes them as they are. The
file is the run's, not an attempt's: each attempt overwrites it, and says which attempt it is
(``attempt``, as in ``hpml_core.contract.attempts``).

An engine from before rank-file schema 2 wrote lower-case words, and "oom" for OUT_OF_MEMORY:
``_renamed`` reads them, in rank files and status files alike, as the words they meant."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, TypeAdapter, ValidationError

from hpml_core.contract.atomic import atomic_write_json
from hpml_core.contract.run_states import (COMPLETED, ENGINE_ACTIVE, FAILED, OUT_OF_MEMORY, OUTCOMES, RUNNING,
                                           STARTING, STOPPED)

STATUS_FILE = "status.json"

_OLD_WORDS = {"starting": STARTING, "running": RUNNING, "completed": COMPLETED, "failed": FAILED,
              "oom": OUT_OF_MEMORY, "stopped": STOPPED}


def _renamed(word: object) -> object:
    """An older engine's word as the word it meant; any other value as it is, for the type to judge."""
    return _OLD_WORDS.get(word, word) if isinstance(word, str) else word


# How a process ended: COMPLETED; FAILED; OUT_OF_MEMORY; STOPPED (by a signal, after a
# checkpoint: resume with --resume).
Outcome = Annotated[Literal[OUTCOMES], BeforeValidator(_renamed)]
# Where the engine stands, as its status.json says.
EngineState = Annotated[Literal[ENGINE_ACTIVE + OUTCOMES], BeforeValidator(_renamed)]
_ENGINE_STATE = TypeAdapter(EngineState)

FIELDS = ("state", "step", "total_steps", "started_at", "updated_at")


def read_status(run_dir: Path) -> dict | None:
    """The run's status file, its state in today's words, or None before the engine has written
    one (or when what is there is not one: a reader shows "no progress", never a traceback)."""
    try:
        found = json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict) or any(field not in found for field in FIELDS):
        return None
    try:
        return {**found, "state": _ENGINE_STATE.validate_python(found["state"])}
    except ValidationError:
        return None


class Progress:
    def __init__(self, out: Path, total_steps: int, attempt: int, enabled: bool, note: str | None = None):
        self.out, self.total_steps, self.attempt, self.enabled = out, total_steps, attempt, enabled
        self.note = note  # what the attempt's start said that a user should know (a checkpoint passed by)
        self.started = time.time()

    def update(self, state: str, step: int, error: str | None = None) -> None:
        if self.enabled:
            atomic_write_json(self.out / STATUS_FILE, {
                "state": state, "attempt": self.attempt, "step": step, "total_steps": self.total_steps,
                "error": error, "note": self.note,
                "started_at": self.started, "updated_at": time.time(),
            })
