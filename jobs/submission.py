"""What one ``hpml submit`` hands its backend (``Submission``), and what every backend does the
same with it: claiming runs in the ledger, and making a claimed run's folder ready.

A run is claimed under the ledger's lock before anything of it is started, and only if its
entry did not change since its state was decided: two ``hpml submit`` calls at once never start
the same run. A claimed run's folder is then made ready: with ``--force`` everything in it is
first moved into ``<run>/previous-<n>/`` (so nothing is resumed and nothing is lost), and its run
spec (``render.run_config``) is written, so that the engine's one command, ``python -m
hpml_core.train --config <run>/run.json``, is the same on every backend.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from hpml_core.contract import attempts
from hpml_core.contract.config import RUN_SPEC_FILE, write_run_spec
from jobs import ledger, observe, render
from jobs.experiment import Experiment, Run
from jobs.site import Site

PREVIOUS = re.compile(r"^previous-(\d+)$")


@dataclass(frozen=True)
class Submission:
    """The runs one ``hpml submit`` starts, chosen and checked, with how to start them."""

    experiment: Experiment
    site: Site
    folder: Path  # the experiment's results folder
    runs: list[Run]  # the runs to start, in the experiment's order
    states: dict[str, observe.RunState]  # every run's state, decided just before they were chosen
    force: bool  # each run from step 0, its old folder set aside
    dry_run: bool  # say what would happen, start nothing
    report: tuple[str, list[str]] | None  # --report: the --site argument and --set items to build it with
    max_concurrent: int | None  # at most that many tasks of each job array at once


@dataclass(frozen=True)
class Claimed:
    """A run this ``hpml submit`` holds in the ledger, its folder ready to start."""

    run: Run
    first_attempt: int  # the attempt folder this submission starts at
    kept: Path | None  # where --force set the old run aside; None: nothing was


def set_aside(run_dir: Path) -> Path | None:
    """Move everything in the run folder into ``<run>/previous-<n>/`` (n one more than the last
    one there), so that the run starts from step 0 and the old one is kept; None when the
    folder holds nothing to keep."""
    if not run_dir.is_dir():
        return None
    entries = list(run_dir.iterdir())
    kept = [path for path in entries if not PREVIOUS.match(path.name)]
    if not kept:
        return None
    numbers = [int(match.group(1)) for path in entries if (match := PREVIOUS.match(path.name))]
    target = run_dir / f"previous-{max(numbers, default=0) + 1}"
    target.mkdir()
    for path in kept:
        path.rename(target / path.name)
    return target


def changed_since(seen: dict):
    """Whether a run's entry changed since its state was decided (``seen``): another submit took it."""
    def key(entry: dict) -> tuple:
        return entry.get("state"), entry.get("job_id"), entry.get("submissions", 0), entry.get("claimed_at")

    return lambda entry: key(entry) != key(seen)


def job_history(entry: dict) -> list[str]:
    """Every Slurm job the run had, oldest first."""
    return list(entry.get("job_ids") or ([entry["job_id"]] if entry.get("job_id") else []))


def adopt(folder: Path, run: Run, seen: dict, **fields) -> bool:
    """Record ``fields`` in the run's entry as a change that starts nothing (not a new
    submission), unless another submit took the run since ``seen``; whether it was recorded."""
    return ledger.claim(folder, run.name, changed_since(seen), submission=False, pid=os.getpid(),
                        host=socket.gethostname(), **fields) is not None


def claim(submission: Submission, runs: list[Run], **fields) -> list[Claimed]:
    """Claim ``runs`` (one lock, one write), recording ``fields`` in their entries, and make each
    claimed run's folder ready to start: set aside with ``--force``, its run spec written, its
    first attempt recorded. The runs another submit took meanwhile are left out."""
    folder, states = submission.folder, submission.states
    taken = ledger.claim_many(folder, {run.name: changed_since(states[run.name].entry) for run in runs},
                              pid=os.getpid(), host=socket.gethostname(), **fields)
    ready = []
    for run in runs:
        if run.name not in taken:
            continue
        run_dir = folder / run.name
        first = 1 if submission.force else attempts.next_attempt(run_dir)
        kept = set_aside(run_dir) if submission.force else None
        write_run_spec(run_dir / RUN_SPEC_FILE, render.run_config(submission.experiment, run, submission.site))
        ready.append(Claimed(run, first, kept))
    ledger.update_many(folder, {claimed.run.name: {"first_attempt": claimed.first_attempt} for claimed in ready})
    return ready
