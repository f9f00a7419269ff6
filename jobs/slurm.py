"""Slurm, as the jobs layer talks to it: submit a rendered script, ask for job states, cancel.

Submission goes through submitit's ``SlurmExecutor`` (it writes the script, runs ``sbatch``,
parses the job id and keeps the submitted text as ``<run>/submitit/<job id>_submission.sh``),
with one change: the script is ours, rendered from ``templates/job.sbatch.j2``, instead of the
one submitit would build around a pickled function. So submitit's ``result()`` has nothing to
read for these jobs, and nothing here calls it; the run's own rank files are its result.

Job states come from ``sacct`` (every job, finished ones included) and, where accounting is
disabled or its database is unreachable, from ``squeue``, which knows only recent jobs. Both run
with a timeout, so a status query answers even on a cluster without accounting, where waiting
on submitit's watcher would wait forever. A job's restart after a requeue keeps its job id.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from submitit import SlurmExecutor
from submitit.core.utils import FailedJobError, FailedSubmissionError
from submitit.slurm.slurm import SlurmInfoWatcher

from hpml_core.spec.errors import UsageError

QUERY_TIMEOUT_S = 30
# Slurm states in which a job still holds or waits for resources: never submit its run again.
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
          "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}


class SlurmError(Exception):
    """Slurm refused or did not answer; the message says which command and why."""


@dataclass(frozen=True)
class JobInfo:
    state: str  # Slurm's state name: "CANCELLED by 0" is read as CANCELLED
    elapsed: str  # [days-]hours:minutes:seconds, as Slurm prints it
    nodes: str  # the node list, or the reason a pending job waits
    source: str  # sacct or squeue: which command said so


class TemplateExecutor(SlurmExecutor):
    """submitit's SlurmExecutor, submitting a script rendered by ``hpml`` instead of its own."""

    def __init__(self, folder: Path, script: str, tasks: int):
        super().__init__(folder)
        self._script, self._tasks = script, tasks

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        return self._script

    def _num_tasks(self) -> int:
        return self._tasks

    def submit_script(self) -> str:
        """Submit the script; returns the job id."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return self._submit_command(self._submitit_command_str).job_id


def require_slurm(site_name: str) -> None:
    if not (shutil.which("sbatch") and shutil.which("srun")):
        raise UsageError("--site", f"{site_name} is a Slurm site, but sbatch/srun are not on this machine's PATH "
                         "(submit from the cluster's login node, or use --site local)")


def submit(script: str, folder: Path, tasks: int) -> str:
    try:
        return TemplateExecutor(folder, script, tasks).submit_script()
    except (FailedJobError, FailedSubmissionError) as exc:
        raise SlurmError(f"sbatch refused the job: {str(exc).strip().splitlines()[-1]}") from None


def test_only(script: str, where: str) -> None:
    """Let Slurm check the script without submitting it (``sbatch --test-only``): an unknown
    partition or account, or more GPUs than a node has, is a usage error before anything runs."""
    try:
        _run(["sbatch", "--test-only"], stdin=script)
    except SlurmError as exc:
        message = str(exc).removeprefix("sbatch: ").replace("sbatch: error: ", "").replace("\n", " ")
        raise UsageError(where, f"Slurm refuses it: {message}") from None


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


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        _run(["scancel", *job_ids])
