"""How runs reach a site's scheduler, behind one interface: ``for_site`` is the one place that
maps a site profile to its backend (``jobs.slurm_backend`` or ``jobs.local_backend``), so that
``hpml submit``, ``cancel``, ``status`` and ``doctor`` do what is the same on every site once and
leave the rest to the backend, never testing ``site.scheduler`` themselves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from jobs.experiment import Experiment
from jobs.local_backend import LocalBackend
from jobs.site import Site
from jobs.slurm_backend import SlurmBackend
from jobs.slurm_query import JobInfo
from jobs.submission import Submission


class Backend(Protocol):
    def refuse(self, experiment: Experiment, max_concurrent: int | None) -> None:
        """Refuse (``UsageError``) a study this backend cannot run, before anything is read or written."""

    def submit(self, submission: Submission) -> int:
        """Start the submission's runs (with ``dry_run``, only say how), then its ``--report``;
        the exit status."""

    def cancel(self, job_ids: list[str]) -> None:
        """Cancel these jobs; refuse (``UsageError``) on a site whose runs have none."""

    def query(self, job_ids: list[str]) -> dict[str, JobInfo]:
        """The scheduler's word on these jobs (the ledger's Slurm jobs), for ``jobs.observe``: a job
        left out is one the scheduler no longer knows; ``SlurmError`` when it does not answer, so
        that the runs are taken as last recorded instead of lost."""


BACKENDS: dict[str, Callable[[Site], Backend]] = {"slurm": SlurmBackend, "local": LocalBackend}


def for_site(site: Site) -> Backend:
    return BACKENDS[site.scheduler](site)
