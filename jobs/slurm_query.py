"""Asking Slurm where jobs stand, read-only and with a timeout: what ``hpml status``, ``hpml
submit``, ``hpml cancel`` and ``hpml report`` all need, apart from submitting (``jobs.slurm``).

Job states come from ``sacct`` (accounting: every job, finished ones included, through
slurmdbd) and ``squeue`` (the controller: the jobs it still holds, and those that ended in the
last few minutes). Both are asked, each with a timeout, so a query answers even on a cluster
without accounting, where waiting on submitit's watcher would wait forever. For a job both
know, the controller's word wins where they differ, as accounting lags seconds behind it: a job
requeued after a node failure is PENDING in squeue at once, while sacct says NODE_FAIL until its
new run is recorded. A job's restart after a requeue keeps its job id; sacct also says how its
previous run ended (``requeued_after``).

When one of them does not answer, the other's word stands, and the answer says so in one line
(``Answer.note``): accounting unreachable (slurmdbd down: the jobs squeue no longer lists are
``unanswered``, not forgotten), or the controller unreachable (slurmctld down or restarting:
the jobs accounting does not list yet are ``unanswered``). A cluster whose accounting is disabled
has only squeue, and a job it no longer lists is forgotten. Neither answering is a SlurmError.

Only this user's jobs are listed: on a shared cluster the others are many, and none of ours.
A job array's task is its own job here, ``<array job id>_<task>`` as both commands print it:
sacct does not know a task still pending in its array, squeue does.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from hpml_core.contract.run_states import ACTIVE, from_slurm

QUERY_TIMEOUT_S = 30
# sacct without -j lists only today's jobs: find_jobs searches from here unless given a start.
EARLIEST = datetime(2000, 1, 1).astimezone()
# Slurm prints submit times to the second, on the controller's clock: find_jobs(since=...) also
# keeps jobs submitted this much earlier, so that neither rounding nor a clock a little behind
# the login node's hides the job an sbatch queued.
SINCE_SLACK_S = 60
# The controller's states of a job whose run has ended and which Slurm is still cleaning up after.
ENDING = frozenset({"COMPLETING", "STAGE_OUT"})


class SlurmError(Exception):
    """Slurm refused or did not answer; the message says which command and why."""


class SlurmTimeout(SlurmError):
    """A Slurm command did not answer in time: it may still have done what it was asked."""


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: str  # Slurm's state name: "CANCELLED by 0" is read as CANCELLED
    elapsed: str  # [days-]hours:minutes:seconds, as Slurm prints it
    nodes: str  # the node list, or the reason a pending job waits
    source: str  # sacct or squeue: which command said so
    # How the job's previous run ended when Slurm requeued it ("NODE_FAIL on n1"; "" if it was not).
    requeued_after: str = ""

    @property
    def elapsed_s(self) -> float | None:
        """``elapsed`` in seconds ([D-][HH:]MM:SS); None where Slurm printed something else."""
        days, _, clock = self.elapsed.strip().rpartition("-")
        parts = clock.split(":")
        if not 1 <= len(parts) <= 3 or not all(part.isdigit() for part in parts) or (days and not days.isdigit()):
            return None
        seconds = 0
        for part in parts:
            seconds = seconds * 60 + int(part)
        return seconds + 86400 * int(days or 0)


def run(command: list[str], stdin: str | None = None, timeout_s: float = QUERY_TIMEOUT_S) -> str:
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise SlurmError(f"{command[0]}: not found on this machine") from None
    except subprocess.TimeoutExpired:
        raise SlurmTimeout(f"{command[0]} did not answer within {timeout_s:g} s") from None
    if done.returncode != 0:
        raise SlurmError(f"{command[0]}: {(done.stderr or done.stdout).strip() or f'exit status {done.returncode}'}")
    return done.stdout


def _submitted_since(submitted: str, since: datetime | None) -> bool:
    """Whether Slurm's submit time (local time, to the second) is at or after ``since`` less the
    slack; a time Slurm does not know ("Unknown") counts as recent, since missing a job is what
    would submit a second one."""
    if since is None:
        return True
    try:
        when = datetime.fromisoformat(submitted).astimezone()
    except ValueError:
        return True
    return when >= since - timedelta(seconds=SINCE_SLACK_S)


def _sacct(selection: list[str], since: datetime | None = None, runs: bool = False) -> dict[str, JobInfo]:
    """``runs``: every run of a requeued job (sacct -D), its latest one as the job's state and the
    one before it as ``requeued_after``; else the latest run alone."""
    # Imported here, not above: every command may catch a SlurmError, few ask Slurm anything.
    from submitit.slurm.slurm import SlurmInfoWatcher

    # -X: allocations only, not steps. -D: a row per run of a requeued job, in the order they ran.
    output = run(["sacct", "-X", *(["-D"] if runs else []), "--parsable2",
                  "--format=JobID,State,Elapsed,NodeList,Submit", *selection])
    found = SlurmInfoWatcher().read_info(output)  # submitit's parser of sacct's table: the last row of a job wins
    job_runs: dict[str, list[str]] = {}  # each job's runs, oldest first, as _ended says them
    for line in output.splitlines()[1:]:
        job_id, state, _, nodes = (line.split("|") + [""] * 4)[:4]
        if job_id and "." not in job_id and "[" not in job_id:
            job_runs.setdefault(job_id, []).append(_ended(state, nodes))
    return {job_id: JobInfo(job_id, info["State"].split()[0], info["Elapsed"],
                            info["NodeList"].replace("None assigned", ""), "sacct",
                            job_runs[job_id][-2] if len(job_runs.get(job_id, ())) > 1 else "")
            for job_id, info in found.items() if _submitted_since(info.get("Submit", ""), since)}


def _ended(state: str, nodes: str) -> str:
    """How one run of a job ended, in words: "NODE_FAIL on n1"."""
    nodes = nodes.replace("None assigned", "").strip()
    return f"{state.split()[0] if state else 'UNKNOWN'}" + (f" on {nodes}" if nodes else "")


def _squeue(selection: list[str], since: datetime | None = None) -> dict[str, JobInfo]:
    # This user's jobs the controller still knows (--states=all keeps recently ended ones), one
    # line per array task (--array: a pending array's tasks are otherwise one line, "12_[3-9%2]").
    output = run(["squeue", "--me", "--noheader", "--states=all", "--array", "--format=%i|%T|%M|%V|%R",
                  *selection])
    found = {}
    for line in output.splitlines():
        job_id, state, elapsed, submitted, nodes = line.strip().split("|", 4)
        if _submitted_since(submitted, since):
            found[job_id] = JobInfo(job_id, state, elapsed, nodes, "squeue")
    return found


def _from_sacct(job_ids: list[str]) -> dict[str, JobInfo]:
    # With -j, sacct searches from the epoch, not just today.
    found = _sacct(["-j", ",".join(job_ids)], runs=True)
    return {job_id: info for job_id, info in found.items() if job_id in job_ids}


def _from_squeue(job_ids: list[str]) -> dict[str, JobInfo]:
    # All of this user's jobs, then those asked for: asking for specific ids would fail outright
    # once one of them is forgotten.
    return {job_id: info for job_id, info in _squeue([]).items() if job_id in job_ids}


def _combined(sacct_error: SlurmError | None, squeue_error: SlurmError) -> SlurmError:
    return SlurmError(f"{_one_line(sacct_error)}; and {_one_line(squeue_error)}" if sacct_error
                      else _one_line(squeue_error))


def _one_line(error: SlurmError) -> str:
    """A Slurm command's error in one line: its last (sacct prints three for one refused connection)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def accounting_disabled(error: SlurmError) -> bool:
    """Whether sacct failed because the cluster keeps no accounting (AccountingStorageType=none):
    its configuration, not a fault, and squeue is then the only word on jobs."""
    return "accounting storage is disabled" in str(error)


class Answer(dict):
    """What ``query`` found: job id -> JobInfo for each job Slurm knows; ``unanswered``: the jobs
    whose fate no one could tell (the command that would know did not answer: they are not
    forgotten); ``note``: which command did not answer, in one line (None when both did)."""

    def __init__(self, found: dict[str, JobInfo], unanswered: frozenset[str] = frozenset(),
                 note: str | None = None):
        super().__init__(found)
        self.unanswered, self.note = unanswered, note


def _live(accounted: JobInfo | None, queued: JobInfo | None) -> JobInfo | None:
    """One job's word from both. Accounting (sacct) lags the controller (squeue) by seconds, so
    where they differ the controller's wins: a job it queues or runs again while accounting still
    shows how its run ended was requeued after that ending; a job it has ended while accounting
    still shows it queued or running has ended. Only a job whose run ended in accounting while
    the controller is still cleaning up after it (COMPLETING) keeps accounting's ending."""
    if queued is None or accounted is None:
        return accounted or queued
    if queued.state == accounted.state:
        return accounted
    ended = from_slurm(accounted.state) not in ACTIVE
    if ended and (queued.state in ENDING or from_slurm(queued.state) not in ACTIVE):
        return accounted
    return replace(queued, requeued_after=_ended(accounted.state, accounted.nodes) if ended
                   else accounted.requeued_after)


def query(job_ids: list[str]) -> Answer:
    """Each job's state as Slurm knows it (sacct and squeue, see the module's doc); ids it has
    forgotten are left out. Raises SlurmError when neither sacct nor squeue answers."""
    if not job_ids:
        return Answer({})
    accounted, sacct_error = {}, None
    try:
        accounted = _from_sacct(job_ids)
    except SlurmError as exc:
        sacct_error = exc
    try:
        queued = _from_squeue(job_ids)
    except SlurmError as squeue_error:
        if sacct_error:
            raise _combined(sacct_error, squeue_error) from None
        missing = frozenset(job_ids) - set(accounted)
        return Answer(accounted, missing, f"Slurm's controller is unreachable ({_one_line(squeue_error)}): states "
                                          "from accounting (sacct)" + ("; jobs it does not list yet as last recorded"
                                                                       if missing else ""))
    found = {job_id: info for job_id in job_ids if (info := _live(accounted.get(job_id), queued.get(job_id)))}
    if sacct_error is None or accounting_disabled(sacct_error):
        return Answer(found)
    missing = frozenset(job_ids) - set(found)
    return Answer(found, missing, f"Slurm's accounting is unreachable ({_one_line(sacct_error)}): states from the "
                                  "controller (squeue)" + ("; jobs it no longer lists as last recorded"
                                                           if missing else ""))


def _job_number(info: JobInfo) -> tuple[int, str]:
    digits = info.job_id.split("_")[0]
    return (int(digits) if digits.isdigit() else -1, info.job_id)


def find_jobs(name: str, since: datetime | None = None) -> list[JobInfo]:
    """This user's jobs named ``name`` (submitted at or after ``since``, less SINCE_SLACK_S, when
    given), newest first: Slurm numbers jobs in the order they were submitted. How a run whose
    ``sbatch`` failed or timed out learns whether a job was queued for it after all.

    sacct and squeue are both asked, since a job just queued may not have reached accounting
    yet; sacct's word wins for a job both know, as in ``query``. Raises SlurmError when squeue
    does not answer (a job only it knows could be missed), or neither does."""
    since = since.astimezone() if since else None  # a naive time is this machine's local time
    start = (since - timedelta(seconds=SINCE_SLACK_S)) if since else EARLIEST
    found, sacct_error = {}, None
    try:
        found = _sacct([f"--name={name}", f"--user={os.getuid()}",
                        f"--starttime={start.astimezone().strftime('%Y-%m-%dT%H:%M:%S')}"], since)
    except SlurmError as exc:
        sacct_error = exc
    try:
        queued = _squeue([f"--name={name}"], since)
    except SlurmError as squeue_error:
        raise _combined(sacct_error, squeue_error) from None
    return sorted({**queued, **found}.values(), key=_job_number, reverse=True)
