"""A run's state: one vocabulary, and one function that decides it, for the ledger, ``hpml
submit``, ``hpml status``, ``hpml cancel`` and ``hpml report`` alike.

Three sources say where a run stands, and ``decide`` weighs them in this order:

1. the scheduler, about the current attempt: a job Slurm still queues or runs is PENDING or
   RUNNING whatever older files say (likewise a local run whose ``hpml submit`` is alive);
2. the rank files of the run's last attempt (``hpml_core.spec.attempts``), which say how the
   engine ended: COMPLETED only when every rank says so; OUT_OF_MEMORY, FAILED or STOPPED
   when any rank says so;
3. how the scheduler ended the job when the engine could not say (killed at its time limit,
   cancelled, a node failure, ...), else what the ledger last recorded.

A run that STOPPED (a stop signal, a checkpoint) and whose job has ended without being requeued
(``scancel``, a preemption that does not requeue) takes the scheduler's word for why.
"""

from __future__ import annotations

from collections.abc import Mapping

NOT_SUBMITTED = "NOT_SUBMITTED"
SUBMITTING = "SUBMITTING"  # an hpml submit has claimed the run and is calling sbatch
PENDING = "PENDING"
RUNNING = "RUNNING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
OUT_OF_MEMORY = "OUT_OF_MEMORY"
STOPPED = "STOPPED"  # by a signal after a checkpoint; resumes when submitted again
TIMEOUT = "TIMEOUT"
CANCELLED = "CANCELLED"
NODE_FAIL = "NODE_FAIL"
PREEMPTED = "PREEMPTED"
SUBMIT_FAILED = "SUBMIT_FAILED"
INTERRUPTED = "INTERRUPTED"  # a local run whose hpml submit is gone

STATES = (NOT_SUBMITTED, SUBMITTING, PENDING, RUNNING, COMPLETED, FAILED, OUT_OF_MEMORY, STOPPED, TIMEOUT,
          CANCELLED, NODE_FAIL, PREEMPTED, SUBMIT_FAILED, INTERRUPTED)
# Nothing may start the run again while it is in one of these (not even --force).
ACTIVE = frozenset({SUBMITTING, PENDING, RUNNING})
# What `hpml submit --only-failed` submits again.
ENDED_BADLY = frozenset({FAILED, OUT_OF_MEMORY, STOPPED, TIMEOUT, CANCELLED, NODE_FAIL, PREEMPTED, SUBMIT_FAILED,
                         INTERRUPTED})

# Slurm's job states (squeue and sacct spell them alike), in this vocabulary.
SLURM_STATES: Mapping[str, str] = {
    "PENDING": PENDING, "CONFIGURING": PENDING, "REQUEUED": PENDING, "REQUEUE_FED": PENDING,
    "REQUEUE_HOLD": PENDING, "RESIZING": PENDING, "SUSPENDED": PENDING,
    "RUNNING": RUNNING, "COMPLETING": RUNNING, "SIGNALING": RUNNING, "STAGE_OUT": RUNNING,
    "COMPLETED": COMPLETED, "FAILED": FAILED, "OUT_OF_MEMORY": OUT_OF_MEMORY,
    "TIMEOUT": TIMEOUT, "DEADLINE": TIMEOUT, "CANCELLED": CANCELLED, "PREEMPTED": PREEMPTED,
    "NODE_FAIL": NODE_FAIL, "BOOT_FAIL": NODE_FAIL,
}
# The engine's outcomes (rank files, status.json), in this vocabulary.
ENGINE_OUTCOMES: Mapping[str, str] = {"completed": COMPLETED, "failed": FAILED, "oom": OUT_OF_MEMORY,
                                      "stopped": STOPPED}


def from_slurm(slurm_state: str) -> str:
    """Slurm's word for a job ("CANCELLED by 0" included) in this vocabulary; an unknown one is FAILED."""
    return SLURM_STATES.get(slurm_state.split()[0] if slurm_state else "", FAILED)


def from_rank_files(outcomes: Mapping[int, str], world_size: int) -> tuple[str, str] | tuple[None, None]:
    """The last attempt's ending from its rank files (rank -> the engine's outcome), with why;
    (None, None) when it left none."""
    if not outcomes:
        return None, None
    states = {rank: ENGINE_OUTCOMES.get(outcome, FAILED) for rank, outcome in outcomes.items()}
    for worst in (OUT_OF_MEMORY, FAILED, STOPPED):
        ranks = sorted(rank for rank, state in states.items() if state == worst)
        if ranks:
            return worst, f"rank {ranks[0]}: {worst.lower().replace('_', ' ')}"
    missing = sorted(set(range(world_size)) - set(states))
    if missing:
        return FAILED, f"no rank file from rank(s) {', '.join(map(str, missing))}: killed before writing it"
    return COMPLETED, ""


def decide(recorded: str | None, scheduler: str | None, files: tuple[str, str] | tuple[None, None],
           submitter_alive: bool = False, local: bool = False) -> tuple[str, str]:
    """The run's state and why (empty when there is nothing to say).

    ``recorded``: the ledger's last state (None: never submitted); ``scheduler``: Slurm's state
    of the run's job now, in this vocabulary (None: not a Slurm run, or Slurm no longer knows
    it); ``files``: ``from_rank_files`` of the last attempt; ``submitter_alive``: whether the
    ``hpml submit`` that runs it locally, or is submitting it, still lives; ``local``: a run of
    ``--site local`` (no scheduler: its hpml submit is its job).
    """
    if scheduler in (PENDING, RUNNING):
        return scheduler, "Slurm"
    if recorded in (RUNNING, SUBMITTING) and submitter_alive:
        return recorded, "hpml submit is at it"
    from_files, why = files
    if from_files in (COMPLETED, OUT_OF_MEMORY, FAILED):
        return from_files, why
    if scheduler is not None and scheduler != COMPLETED:
        return scheduler, "Slurm" + (f"; {why}" if why else "")
    if from_files is not None:  # STOPPED, or Slurm says COMPLETED while a rank stopped
        return from_files, why
    if scheduler == COMPLETED:
        return FAILED, "Slurm says COMPLETED, but the last attempt wrote no rank file"
    if recorded == SUBMITTING:
        return SUBMIT_FAILED, "its hpml submit is gone"
    if recorded == RUNNING and local:
        return INTERRUPTED, "its hpml submit is gone"
    if recorded in ACTIVE:
        return FAILED, "Slurm no longer knows the job, and it wrote no rank file"
    if recorded is None:
        return NOT_SUBMITTED, ""
    return recorded, "as last recorded"
