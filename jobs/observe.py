"""Where each run of an experiment stands now: the evidence is gathered here, the decision is
``hpml_core.contract.run_states.decide``'s, and ``hpml submit``, ``status``, ``cancel`` and
``report`` all take it from here.

The evidence: the ledger (what ``hpml submit`` did: backend, job id, the state last decided, the
first attempt of the current submission, the ``hpml submit`` holding the run); the scheduler's
word on the ledger's Slurm jobs (the site's backend's ``query``, ``jobs.backend``: on a Slurm
site ``jobs.slurm_query``, with its timeout); the rank files of the current submission's last
attempt (``hpml_core.contract.attempts``: an earlier submission's attempts say nothing about this
one); and whether a local run's ``hpml submit`` still lives. ``refresh`` records each decision in the
ledger, as it is the next decision's "recorded" state: a job Slurm has since forgotten keeps the
ending Slurm last gave it. With ``record=False`` (``hpml report``, which writes only its report
folder) the decisions are the same and the ledger is left as it is.

When Slurm does not answer, ``current`` decides without it and says so: the runs Slurm was
queueing or running stay as last recorded, while the rank files still count. When it answers in
part (accounting unreachable, or the controller restarting: ``slurm_query.Answer``), the jobs it
could not tell about are decided the same way, and ``current``'s note says which part did not
answer.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from hpml_core.contract import attempts, rank_file, run_states
from hpml_core.contract.run_states import (ACTIVE, COMPLETED, ENGINE_ACTIVE, NOT_SUBMITTED, PENDING, RUNNING,
                                           SUBMITTING)
from hpml_core.contract.status_file import read_status
from jobs import ledger, slurm_query

Reader = Callable[[Path], rank_file.RankFile]  # a rank file's record; OSError or ValueError if it has none
# A backend's query (jobs.backend.Backend.query): its scheduler's word on these jobs; SlurmError if it cannot answer.
Query = Callable[[list[str]], Mapping[str, slurm_query.JobInfo]]
# An `hpml submit` that claimed a run and is calling sbatch; older than this, it hangs or died doing so.
SUBMITTING_STALE_S = 600


def progress(own: dict | None, state: str) -> str:
    """The engine's own word from ``status.json``, next to the state, in lower case so that it
    reads as prose beside the state column: "running, step 120/625", "stopped, step 162/600",
    "out of memory, step 2/4"; "ended at step k/n" when the job ended under a running engine
    (killed, cancelled, its node lost); "last attempt: ..." while the next one waits."""
    if own is None:
        return "starting" if state == RUNNING else "waiting" if state in ACTIVE else "-"
    at = f"step {own['step']}/{own['total_steps']}"
    said = own["state"].lower().replace("_", " ")
    ended_under_it = own["state"] in ENGINE_ACTIVE and state != RUNNING  # it could not say so itself
    if state in (PENDING, SUBMITTING):
        return f"last attempt: {'ended at ' + at if ended_under_it else f'{said}, {at}'}"
    if ended_under_it and state not in ACTIVE:
        return f"ended at {at}"
    return f"{said}, {at}"


@dataclass(frozen=True)
class RunState:
    name: str
    state: str
    why: str
    entry: dict  # the run's ledger entry after this decision ({}: never submitted)
    attempts: tuple[int, ...]  # the run folder's attempts, oldest first
    own: dict | None  # the engine's status.json
    requeued_after: str = ""  # how the previous run of its Slurm job ended, if Slurm requeued it ("NODE_FAIL on n1")

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def progress(self) -> str:
        return progress(self.own, self.state)

    @property
    def reason(self) -> str:
        """Why, with the engine's progress where it says more: the step an active run is at, or
        the step at which its job ended under an engine that could not say so itself."""
        ended_under_it = self.own is not None and self.own["state"] in ENGINE_ACTIVE
        if not (self.active or (ended_under_it and self.state not in (COMPLETED, NOT_SUBMITTED))):
            return self.why
        return "; ".join(part for part in (self.why, self.progress) if part and part != "-")


def _timestamp(iso: str) -> float:
    """Seconds since the epoch of a ledger time; 0 (long ago: stale) for one that is not a time."""
    try:
        return datetime.fromisoformat(str(iso)).timestamp()
    except ValueError:
        return 0.0


def last_attempt(run_dir: Path, entry: dict) -> int | None:
    """The current submission's latest attempt; None before it wrote one."""
    latest = attempts.latest_attempt(run_dir)
    return latest if latest is not None and latest >= entry.get("first_attempt", 1) else None


def files_say(run_dir: Path, attempt: int | None, world_size: int,
              read: Reader = rank_file.read) -> tuple[str, str] | tuple[None, None]:
    """``run_states.from_rank_files`` of one attempt, read from its folder (by ``read``: the
    report passes the files it has read already)."""
    if attempt is None:
        return None, None
    outcomes, errors = {}, {}
    for rank, path in attempts.rank_files(run_dir, attempt).items():
        try:
            record = read(path)
        except (OSError, ValueError):  # cut short, not JSON, or not the schema
            outcomes[rank] = run_states.UNREADABLE
            continue
        outcomes[rank], errors[rank] = record.status, record.error
    return run_states.from_rank_files(outcomes, world_size, errors)


def submitter_alive(entry: dict) -> bool:
    """Whether the ``hpml submit`` holding the run (submitting it, or running it here) still
    lives; one submitting for longer than SUBMITTING_STALE_S is taken for hung."""
    state = entry.get("state")
    if state == SUBMITTING:
        claimed = entry.get("claimed_at") or entry.get("updated_at")
        if not claimed or time.time() - _timestamp(claimed) > SUBMITTING_STALE_S:
            return False
    elif not (state == RUNNING and entry.get("backend") == "local"):
        return False
    if entry.get("host") not in (None, socket.gethostname()):
        return True  # another machine's process: it cannot be checked from here
    try:
        os.kill(entry["pid"], 0)
    except (KeyError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _requeued(after: str) -> str:
    """Why Slurm runs the job again, from how its previous run ended ("NODE_FAIL on n1")."""
    state, _, nodes = after.partition(" on ")
    if state == "REQUEUED":  # scontrol requeue: by the job script after a stop signal, or by hand
        return "requeued" + (f" from {nodes}" if nodes else "")
    return f"requeued after {after}"


def judge(entry: dict, run_dir: Path, world_size: int, *, info: slurm_query.JobInfo | None = None,
          answered: bool = True, ended: tuple[str, str] | None = None,
          read: Reader = rank_file.read) -> tuple[str, str]:
    """One run's state and why. ``info``: what Slurm says of its job; ``answered``: whether
    Slurm was asked about it and answered; ``ended``: for the local ``hpml submit`` whose
    processes just exited, how they did (COMPLETED or FAILED, and the exit status in words)."""
    scheduler, said_by = ended if ended else (None, "Slurm")
    if info is not None:
        scheduler, said_by = run_states.from_slurm(info.state), f"Slurm ({info.source}): {info.state}"
        if info.requeued_after:
            said_by += f", {_requeued(info.requeued_after)}"
    return run_states.decide(entry.get("state"), scheduler,
                             files_say(run_dir, last_attempt(run_dir, entry), world_size, read),
                             submitter_alive(entry) and ended is None, entry.get("backend") == "local",
                             said_by=said_by, answered=answered, recorded_why=entry.get("why") or "")


def _decide_all(worlds: Mapping[str, int], folder: Path, entries: dict[str, dict],
                infos: Mapping[str, slurm_query.JobInfo], asked: set[str], read: Reader) -> dict[str, RunState]:
    """Decide every run, updating ``entries`` (the ledger's) in place."""
    found = {}
    for name, world in worlds.items():
        entry = entries.get(name, {})
        job_id = entry.get("job_id") if entry.get("backend") == "slurm" else None
        info = infos.get(job_id) if job_id else None
        state, why = judge(entry, folder / name, world, info=info, answered=job_id in asked, read=read)
        if name in entries:
            changes = {"state": state, "why": why}
            if info is not None:
                changes.update(elapsed=info.elapsed, nodes=info.nodes, state_from=info.source)
            if any(entry.get(key) != value for key, value in changes.items()):
                entry.update(changes, updated_at=ledger.now())
        found[name] = RunState(name, state, why, dict(entry), tuple(attempts.attempt_numbers(folder / name)),
                               read_status(folder / name), info.requeued_after if info else "")
    return found


def _decide(worlds: Mapping[str, int], folder: Path, query: Query | None, read: Reader,
            record: bool) -> tuple[dict[str, RunState], str | None]:
    """``query``: whom to ask about the ledger's Slurm jobs; None: no one (it did not answer).
    Returns the states, and the answer's note when Slurm answered in part."""
    recorded = ledger.read(folder)
    job_ids = sorted({e["job_id"] for e in recorded.values() if e.get("backend") == "slurm" and e.get("job_id")})
    infos = query(job_ids) if query and job_ids else {}
    # A job Slurm could not tell about (slurm_query.Answer's unanswered) is not a job it forgot.
    asked = set(job_ids) - set(getattr(infos, "unanswered", ())) if query else set()
    note = getattr(infos, "note", None)
    # Nothing submitted yet: nothing to record. A results folder this user may only read (a
    # teammate's), or a caller that must not write it: decide all the same, without recording.
    if not record or not recorded or not os.access(folder, os.W_OK):
        return _decide_all(worlds, folder, recorded, infos, asked, read), note
    with ledger.locked(folder) as entries:  # decided on the entries as they are now, then recorded
        return _decide_all(worlds, folder, entries, infos, asked, read), note


def refresh(worlds: Mapping[str, int], folder: Path, read: Reader = rank_file.read, *,
            record: bool = True, query: Query | None = None) -> tuple[dict[str, RunState], str | None]:
    """Every run's state (``worlds``: run name -> world size), decided with the scheduler's word
    on its job, and recorded in the ledger unless ``record`` is False. ``query``: the site's
    backend's (``backend.for_site(site).query``); without one, Slurm's (``slurm_query.query``).
    Raises SlurmError when the scheduler does not answer: what submit and cancel need before
    they act. When it answers in part, a job it could not tell about stays as last recorded, and
    the note returned beside the states says which part did not answer, for them to print."""
    return _decide(worlds, folder, query or slurm_query.query, read, record)


def current(worlds: Mapping[str, int], folder: Path, read: Reader = rank_file.read, *,
            record: bool = True, query: Query | None = None) -> tuple[dict[str, RunState], str | None]:
    """As ``refresh``, but when the scheduler does not answer, decided without it (its jobs as
    last recorded), with a note that says so, or which part of it did not answer (accounting,
    the controller): what status and report show."""
    try:
        return _decide(worlds, folder, query or slurm_query.query, read, record)
    except slurm_query.SlurmError as exc:
        return _decide(worlds, folder, None, read, record)[0], f"Slurm did not answer ({exc}): states as last recorded"
