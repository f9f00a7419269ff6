"""A run's state: one vocabulary, and one function that decides it, for the ledger, ``hpml
submit``, ``hpml status``, ``hpml cancel`` and ``hpml report`` alike.

Pure (no I/O) and torch-free: ``jobs.observe`` gathers the evidence (the ledger, Slurm, the
rank files of the current submission's last attempt, whether the local ``hpml submit`` lives)
and asks ``decide``. Three sources say where a run stands, weighed in this order:

1. the scheduler, about the current attempt: a job Slurm still queues or runs is PENDING or
   RUNNING whatever older files say (likewise a local run whose ``hpml submit`` is alive);
2. the rank files of the last attempt (``hpml_core.contract.attempts``), which say how the engine
   ended: COMPLETED only when every rank says so; OUT_OF_MEMORY, FAILED or STOPPED when any
   rank says so, or FAILED when a rank left none (it was killed before it could write one);
3. how the scheduler ended the job when that says more than the files (killed at its time
   limit, cancelled, preempted, a node failure), else what the ledger last recorded.

A run that STOPPED (a stop signal, a checkpoint) and whose job then ended without being requeued
takes the scheduler's word for why (``scancel``: CANCELLED); when its job merely exited non-zero
(the requeue did not happen) it stays STOPPED, and resumes when submitted again.
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
# Endings only the scheduler can tell: the engine, killed, may have written anything or nothing.
ENDED_BY_SCHEDULER = frozenset({TIMEOUT, CANCELLED, NODE_FAIL, PREEMPTED, OUT_OF_MEMORY})

# Slurm's job states (squeue and sacct spell them alike), in this vocabulary.
SLURM_STATES: Mapping[str, str] = {
    "PENDING": PENDING, "CONFIGURING": PENDING, "REQUEUED": PENDING, "REQUEUE_FED": PENDING,
    "REQUEUE_HOLD": PENDING, "RESIZING": PENDING, "SUSPENDED": PENDING,
    "RUNNING": RUNNING, "COMPLETING": RUNNING, "SIGNALING": RUNNING, "STAGE_OUT": RUNNING,
    "COMPLETED": COMPLETED, "FAILED": FAILED, "OUT_OF_MEMORY": OUT_OF_MEMORY,
    "TIMEOUT": TIMEOUT, "DEADLINE": TIMEOUT, "CANCELLED": CANCELLED, "PREEMPTED": PREEMPTED,
    "NODE_FAIL": NODE_FAIL, "BOOT_FAIL": NODE_FAIL,
}
# The engine speaks these words itself (``hpml_core.contract.status_file``): while it trains, its
# status.json says STARTING (setting up, before its first step) or RUNNING; at the end, every rank
# file and status.json say one of OUTCOMES. STARTING is the engine's word alone, not a run state
# (not in STATES): a run whose engine is starting is RUNNING, as its scheduler says.
STARTING = "STARTING"
ENGINE_ACTIVE = (STARTING, RUNNING)
OUTCOMES = (COMPLETED, FAILED, OUT_OF_MEMORY, STOPPED)
# What ``jobs.observe`` passes for a rank file that is there but cannot be read or validated.
UNREADABLE = "unreadable"


def from_slurm(slurm_state: str) -> str:
    """Slurm's word for a job ("CANCELLED by 0" included) in this vocabulary; an unknown one is FAILED."""
    return SLURM_STATES.get(slurm_state.split()[0] if slurm_state else "", FAILED)


def _ranks(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks))


def from_rank_files(outcomes: Mapping[int, str], world_size: int,
                    errors: Mapping[int, str | None] | None = None) -> tuple[str, str] | tuple[None, None]:
    """The last attempt's ending from its rank files (rank -> the engine's outcome, one of
    OUTCOMES, or UNREADABLE; ``errors``: rank -> the file's error text), with why; (None, None)
    when it left none.

    Out of memory wins (the other ranks fail or are killed because of it); then a failure, where
    a rank without a file (killed: by ``kill -9``, by its launcher, by the kernel) is named
    first, as it is the likeliest cause of the others' collective errors; then a stop."""
    if not outcomes:
        return None, None
    errors = errors or {}

    def said(rank: int, words: str) -> str:
        return f"rank {rank}: {errors.get(rank) or words}"

    states = {rank: outcome if outcome in OUTCOMES else FAILED for rank, outcome in outcomes.items()}
    out_of_memory = sorted(rank for rank, state in states.items() if state == OUT_OF_MEMORY)
    if out_of_memory:
        return OUT_OF_MEMORY, said(out_of_memory[0], "out of memory")
    missing = sorted(set(range(world_size)) - set(outcomes))
    unreadable = sorted(rank for rank, outcome in outcomes.items() if outcome == UNREADABLE)
    failed = sorted(rank for rank, state in states.items() if state == FAILED and rank not in unreadable)
    parts = []
    if missing:
        parts.append(f"no rank file from rank(s) {_ranks(missing)}: killed before writing it")
    if unreadable:
        parts.append(f"the rank file of rank(s) {_ranks(unreadable)} is unreadable")
    if failed:
        parts.append(said(failed[0], "failed"))
    if parts:
        return FAILED, "; ".join(parts)
    stopped = sorted(rank for rank, state in states.items() if state == STOPPED)
    if stopped:
        return STOPPED, said(stopped[0], "stopped")
    return COMPLETED, ""


def decide(recorded: str | None, scheduler: str | None, files: tuple[str, str] | tuple[None, None],
           submitter_alive: bool = False, local: bool = False, *, said_by: str = "Slurm",
           answered: bool = True, recorded_why: str = "") -> tuple[str, str]:
    """The run's state and why (empty when there is nothing to say).

    ``recorded``: the ledger's last state of the current submission (None: never submitted),
    and ``recorded_why`` its reason; ``scheduler``: how the run's job stands now, in this
    vocabulary: Slurm's state (None: not a Slurm run, or Slurm no longer knows the job), or, for
    a local run, how its processes exited, told by the ``hpml submit`` that ran them the moment
    they did (COMPLETED for exit status 0, else FAILED); ``said_by``: the scheduler's words, as
    they go into the reason ("Slurm (sacct): CANCELLED by 0", "exit status 1"); ``answered``:
    False when Slurm did not answer at all, so that a job it may still run is not called lost;
    ``files``: ``from_rank_files`` of the current submission's last attempt (earlier
    submissions' attempts are no evidence about this one); ``submitter_alive``: whether the
    ``hpml submit`` submitting the run, or running it here, still lives; ``local``: a run of a
    site without a scheduler (its ``hpml submit`` is its job).

    The rules, in order (tests/test_run_states.py walks each, by number):

    1. the scheduler queues or runs the job: PENDING or RUNNING;
    2. the ``hpml submit`` that holds the run lives: SUBMITTING, or RUNNING here;
    3. the rank files say COMPLETED or OUT_OF_MEMORY: that (an engine's OOM exits non-zero);
    4. the scheduler ended the job in a way of its own (ENDED_BY_SCHEDULER): that, with what
       the files say;
    5. Slurm forgot the job, and the ledger had recorded such an ending: that, as recorded;
    6. the rank files say FAILED or STOPPED: that;
    7. the job failed and no rank wrote a file: FAILED, in the scheduler's words;
    8. the job completed and no rank wrote a file: FAILED;
    9. recorded SUBMITTING, and its ``hpml submit`` is gone: SUBMIT_FAILED;
    10. recorded RUNNING here, and its ``hpml submit`` is gone: INTERRUPTED;
    11. recorded PENDING or RUNNING, and Slurm no longer knows the job: FAILED; or, when Slurm
        did not answer, as recorded;
    12. recorded COMPLETED, and the rank files are gone: FAILED;
    13. never submitted: NOT_SUBMITTED;
    14. otherwise: as last recorded.
    """
    from_files, files_why = files
    if scheduler in (PENDING, RUNNING):  # 1: the scheduler holds the current attempt
        return scheduler, said_by
    if submitter_alive and (recorded == SUBMITTING or (recorded == RUNNING and local)):  # 2
        return recorded, "hpml submit is submitting it" if recorded == SUBMITTING else "hpml submit runs it here"
    if from_files in (COMPLETED, OUT_OF_MEMORY):  # 3: the engine finished, or knows why it could not
        return from_files, files_why
    if scheduler in ENDED_BY_SCHEDULER:  # 4: killed by its scheduler, whatever the ranks managed to write
        return scheduler, said_by + (f"; {files_why}" if files_why else "")
    if scheduler is None and recorded in ENDED_BY_SCHEDULER:  # 5: the same, from before Slurm forgot the job
        return recorded, recorded_why or "as last recorded"
    if from_files is not None:  # 6: FAILED or STOPPED, as the engine says (a job exiting non-zero adds nothing)
        return from_files, files_why
    if scheduler == FAILED:  # 7: the job failed before any rank could write
        return FAILED, said_by
    if scheduler == COMPLETED:  # 8
        return FAILED, f"{said_by}, but the last attempt wrote no rank file"
    if recorded == SUBMITTING:  # 9: its hpml submit died, or hangs, before recording a job
        return SUBMIT_FAILED, "its hpml submit is gone"
    if recorded == RUNNING and local:  # 10
        return INTERRUPTED, "its hpml submit is gone"
    if recorded in ACTIVE:  # 11: PENDING or RUNNING in Slurm, then nothing
        if not answered:
            return recorded, "as last recorded: Slurm did not answer"
        return FAILED, "Slurm no longer knows the job, and it wrote no rank file"
    if recorded == COMPLETED:  # 12
        return FAILED, "recorded COMPLETED, but the last attempt's rank files are gone"
    if recorded is None:  # 13
        return NOT_SUBMITTED, ""
    return recorded, recorded_why or "as last recorded"  # 14
