"""Asking Slurm where jobs stand, read-only and with a timeout: what ``hpml status``, ``hpml
submit``, ``hpml cancel`` and ``hpml report`` all need, apart from submitting (``jobs.slurm``).

Job states come from ``sacct`` (every job, finished ones included) and, where accounting is
disabled or its database is unreachable, from ``squeue``, which knows only recent jobs. Both run
with a timeout, so a status query answers even on a cluster without accounting, where waiting
on submitit's watcher would wait forever. A job's restart after a requeue keeps its job id.
Only this user's jobs are listed: on a shared cluster the others are many, and none of ours.
A job array's task is its own job here, ``<array job id>_<task>`` as both commands print it:
sacct does not know a task still pending in its array, squeue does.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta

QUERY_TIMEOUT_S = 30
# sacct without -j lists only today's jobs: find_jobs searches from here unless given a start.
EARLIEST = datetime(2000, 1, 1).astimezone()
# Slurm prints submit times to the second, on the controller's clock: find_jobs(since=...) also
# keeps jobs submitted this much earlier, so that neither rounding nor a clock a little behind
# the login node's hides the job an sbatch queued.
SINCE_SLACK_S = 60


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


def _sacct(selection: list[str], since: datetime | None = None) -> dict[str, JobInfo]:
    # Imported here, not above: every command may catch a SlurmError, few ask Slurm anything.
    from submitit.slurm.slurm import SlurmInfoWatcher

    # -X: allocations only, not steps (and a requeued job's latest run only).
    output = run(["sacct", "-X", "--parsable2", "--format=JobID,State,Elapsed,NodeList,Submit", *selection])
    found = SlurmInfoWatcher().read_info(output)  # submitit's parser of sacct's table
    return {job_id: JobInfo(job_id, info["State"].split()[0], info["Elapsed"],
                            info["NodeList"].replace("None assigned", ""), "sacct")
            for job_id, info in found.items() if _submitted_since(info.get("Submit", ""), since)}


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
    found = _sacct(["-j", ",".join(job_ids)])
    return {job_id: info for job_id, info in found.items() if job_id in job_ids}


def _from_squeue(job_ids: list[str]) -> dict[str, JobInfo]:
    # All of this user's jobs, then those asked for: asking for specific ids would fail outright
    # once one of them is forgotten.
    return {job_id: info for job_id, info in _squeue([]).items() if job_id in job_ids}


def _combined(sacct_error: SlurmError | None, squeue_error: SlurmError) -> SlurmError:
    return SlurmError(f"{sacct_error}; and {squeue_error}" if sacct_error else str(squeue_error))


def query(job_ids: list[str]) -> dict[str, JobInfo]:
    """The state of each job Slurm knows; ids it has forgotten are left out. sacct first; squeue
    for what sacct cannot tell (accounting off, or a job too new to have reached the database)."""
    found, sacct_error = {}, None
    try:
        found = _from_sacct(job_ids) if job_ids else {}
    except SlurmError as exc:
        sacct_error = exc
    missing = [job_id for job_id in job_ids if job_id not in found]
    if missing:
        try:
            found.update(_from_squeue(missing))
        except SlurmError as squeue_error:
            raise _combined(sacct_error, squeue_error) from None
    return found


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
