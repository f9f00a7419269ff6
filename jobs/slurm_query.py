"""Asking Slurm where jobs stand, read-only and with a timeout: what ``hpml status``, ``hpml
submit``, ``hpml cancel`` and ``hpml report`` all need, apart from submitting (``jobs.slurm``).

Job states come from ``sacct`` (every job, finished ones included) and, where accounting is
disabled or its database is unreachable, from ``squeue``, which knows only recent jobs. Both run
with a timeout, so a status query answers even on a cluster without accounting, where waiting
on submitit's watcher would wait forever. A job's restart after a requeue keeps its job id.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from submitit.slurm.slurm import SlurmInfoWatcher

QUERY_TIMEOUT_S = 30


class SlurmError(Exception):
    """Slurm refused or did not answer; the message says which command and why."""


@dataclass(frozen=True)
class JobInfo:
    state: str  # Slurm's state name: "CANCELLED by 0" is read as CANCELLED
    elapsed: str  # [days-]hours:minutes:seconds, as Slurm prints it
    nodes: str  # the node list, or the reason a pending job waits
    source: str  # sacct or squeue: which command said so


def _run(command: list[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except FileNotFoundError:
        raise SlurmError(f"{command[0]}: not found on this machine") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{command[0]} did not answer within {QUERY_TIMEOUT_S} s") from None
    if done.returncode != 0:
        raise SlurmError(f"{command[0]}: {(done.stderr or done.stdout).strip() or f'exit status {done.returncode}'}")
    return done.stdout


def _from_sacct(job_ids: list[str]) -> dict[str, JobInfo]:
    # -X: allocations only, not steps; with -j, sacct searches from the epoch, not just today.
    output = _run(["sacct", "-X", "--parsable2", "--format=JobID,State,Elapsed,NodeList", "-j", ",".join(job_ids)])
    found = SlurmInfoWatcher().read_info(output)  # submitit's parser of sacct's table
    return {job_id: JobInfo(info["State"].split()[0], info["Elapsed"], info["NodeList"].replace("None assigned", ""),
                            "sacct")
            for job_id, info in found.items() if job_id in job_ids}


def _from_squeue(job_ids: list[str]) -> dict[str, JobInfo]:
    # Every job the controller still knows (--states=all keeps recently ended ones); asking for
    # specific ids would fail outright once one of them is forgotten.
    output = _run(["squeue", "--noheader", "--states=all", "--format=%i|%T|%M|%R"])
    found = {}
    for line in output.splitlines():
        job_id, state, elapsed, nodes = line.strip().split("|", 3)
        if job_id in job_ids:
            found[job_id] = JobInfo(state, elapsed, nodes, "squeue")
    return found


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
            raise SlurmError(f"{sacct_error}; and {squeue_error}" if sacct_error else str(squeue_error)) from None
    return found
