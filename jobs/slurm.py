"""Slurm, as the jobs layer acts on it: check and submit a rendered script, cancel jobs.

Submission goes through submitit's ``SlurmExecutor`` (it writes the script, runs ``sbatch``,
parses the job id and keeps the submitted text as ``<run>/submitit/<job id>_submission.sh``),
with one change: the script is ours, rendered from ``templates/job.sbatch.j2``, instead of the
one submitit would build around a pickled function. So submitit's ``result()`` has nothing to
read for these jobs, and nothing here calls it; the run's own rank files are its result.

Asking Slurm for job states is ``jobs.slurm_query``'s (read-only, so the report may use it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from submitit import SlurmExecutor
from submitit.core.utils import FailedJobError, FailedSubmissionError

from hpml_core.spec.errors import UsageError
from jobs.slurm_query import SlurmError, _run


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


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        _run(["scancel", *job_ids])
