"""Slurm, as the jobs layer acts on it: check and submit a rendered script, cancel jobs.

Submission goes through submitit's ``SlurmExecutor`` (it writes the script, runs ``sbatch``,
parses the job id and keeps the submitted text as ``<run>/submitit/<job id>_submission.sh``),
with one change: the script is ours, rendered from ``templates/job.sbatch.j2``, instead of the
one submitit would build around a pickled function. So submitit's ``result()`` has nothing to
read for these jobs, and nothing here calls it; the run's own rank files are its result.

``sbatch`` runs under coreutils' ``timeout``: a controller that does not answer must not hang
``hpml submit``. An ``sbatch`` stopped that way may have queued the job all the same, so the
error says so, and ``hpml submit`` looks for the run's job by name (``slurm_query.find_jobs``)
before submitting the run again.

Asking Slurm for job states is ``jobs.slurm_query``'s (read-only, so the report may use it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from submitit import SlurmExecutor
from submitit.core.utils import FailedJobError, FailedSubmissionError

from hpml_core.contract.errors import UsageError
from jobs.slurm_query import SlurmError, SlurmTimeout, run

SUBMIT_TIMEOUT_S = 60
# timeout's exit status when it stopped the command (124), or killed it when SIGTERM was not enough (137).
TIMED_OUT = (124, 128 + 9)
# After SIGTERM, how long sbatch has to exit before SIGKILL.
KILL_AFTER_S = 5


class TemplateExecutor(SlurmExecutor):
    """submitit's SlurmExecutor, submitting a script rendered by ``hpml`` instead of its own,
    with sbatch under a timeout."""

    def __init__(self, folder: Path, script: str, tasks: int, timeout_s: int = SUBMIT_TIMEOUT_S):
        super().__init__(folder)
        self._script, self._tasks, self._timeout_s = script, tasks, timeout_s

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        return self._script

    def _num_tasks(self) -> int:
        return self._tasks

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        """submitit's sbatch command, run by ``timeout``, which signals sbatch's whole process
        group: nothing sbatch started keeps submitit reading its output."""
        return ["timeout", f"--kill-after={KILL_AFTER_S}", str(self._timeout_s),
                *super()._make_submission_command(submission_file_path)]

    def submit_script(self) -> str:
        """Submit the script; returns the job id."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return self._submit_command(self._submitit_command_str).job_id


def require_slurm(site_name: str) -> None:
    if not (shutil.which("sbatch") and shutil.which("srun")):
        raise UsageError("--site", f"{site_name} is a Slurm site, but sbatch/srun are not on this machine's PATH "
                         "(submit from the cluster's login node, or use --site local)")


def submit(script: str, folder: Path, tasks: int, *, timeout_s: int = SUBMIT_TIMEOUT_S) -> str:
    """Submit the script with sbatch (its submitit folder: ``folder``; ``tasks`` processes in
    all); returns the job id. Raises SlurmTimeout when sbatch did not answer within
    ``timeout_s`` seconds, and SlurmError when it refused the job."""
    try:
        return TemplateExecutor(folder, script, tasks, timeout_s).submit_script()
    except FailedJobError as exc:
        if _exit_status(exc) in TIMED_OUT:
            raise SlurmTimeout(f"sbatch did not answer within {timeout_s} s; the job may still have been "
                               "queued") from None
        raise SlurmError(f"sbatch refused the job: {_last_line(exc)}") from None
    except FailedSubmissionError as exc:
        raise SlurmError(f"sbatch refused the job: {_last_line(exc)}") from None
    except FileNotFoundError:
        raise SlurmError("timeout (GNU coreutils), which runs sbatch, is not on this machine's PATH") from None


def _exit_status(exc: FailedJobError) -> int | None:
    """The exit status of the command submitit ran (it raises from the CalledProcessError)."""
    cause = exc.__cause__
    return cause.returncode if isinstance(cause, subprocess.CalledProcessError) else None


def _last_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else "no message"


def test_only(script: str, where: str, *, timeout_s: int = SUBMIT_TIMEOUT_S) -> None:
    """Let Slurm check the script without submitting it (``sbatch --test-only``): an unknown
    partition or account, or more GPUs than a node has, is a usage error before anything runs.
    No answer within ``timeout_s``, or a controller sbatch cannot reach, is not a refusal:
    SlurmTimeout or SlurmError, as from ``submit`` (exit status 1, not 2)."""
    try:
        run(["sbatch", "--test-only"], stdin=script, timeout_s=timeout_s)
    except SlurmTimeout:
        raise
    except SlurmError as exc:
        message = str(exc).removeprefix("sbatch: ").replace("sbatch: error: ", "").replace("\n", " ")
        if "Unable to contact slurm controller" in message:  # no answer, not a refusal of the script
            raise SlurmError(f"the controller is unreachable (sbatch --test-only: {message})") from None
        raise UsageError(where, f"Slurm refuses it: {message}") from None


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        run(["scancel", *job_ids])
