"""The ledger of an experiment, ``results/<experiment>/ledger.json``: for each run, what ``hpml
submit`` did and what was last decided about it. Every change is a read-modify-write under an
exclusive lock on ``ledger.lock``, and the file is replaced atomically, so two ``hpml submit``
calls at once neither lose an entry nor leave half a file.

A run's entry holds: ``backend`` (slurm or local); ``state`` and ``why`` (the last decision of
``jobs.observe``, in ``hpml_core.contract.run_states``' words); ``job_id`` (the current Slurm job)
and ``job_ids`` (every job the run had, oldest first); ``submissions`` (how many times it was
submitted: a Slurm requeue is the same submission, and one submission may make several
attempts, each a launch with its folder); ``first_attempt`` (the attempt folder the current
submission started at: only its attempts are evidence about it); ``pid``, ``host`` and
``claimed_at`` (the ``hpml submit`` that holds it, and since when); ``job_name`` and
``array_task`` (the job array that carries it, and its task there: a Slurm run's job id is
``<array job id>_<task>``); ``log``, ``script``,
``exit_code`` (a local run's), ``elapsed``, ``nodes`` and ``state_from`` (what Slurm said).

The ledger also names the site the experiment's runs were submitted to (``site``): results
never cross sites, so ``hpml submit`` and ``hpml cancel`` with another site's profile are
refused (``check_site``) rather than taking its completed runs for their own.

A ledger written before ``submissions`` had its name calls it ``attempts``: it is read as
``submissions``, and written back under the new name with the next change.
"""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from hpml_core.contract.atomic import atomic_write_json
from hpml_core.contract.errors import UsageError

LEDGER = "ledger.json"
OLD_SUBMISSIONS = "attempts"  # the name of an entry's count of submissions in ledgers of earlier versions


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _document(folder: Path) -> dict:
    """The whole ledger ({"runs": {}} before anything was submitted); a ledger that is not one is
    a usage error naming the file, for every command alike."""
    path = folder / LEDGER
    if not path.exists():
        return {"runs": {}}
    try:
        document = json.loads(path.read_text())
        runs = document["runs"]
        if not isinstance(runs, dict) or not all(isinstance(entry, dict) for entry in runs.values()):
            raise TypeError("its runs are not a table of entries")
        if not isinstance(document.get("site", ""), str):
            raise TypeError("its site is not a name")
        for entry in runs.values():
            if OLD_SUBMISSIONS in entry and "submissions" not in entry:
                entry["submissions"] = entry.pop(OLD_SUBMISSIONS)
            count = entry.get("submissions", 0)
            if not isinstance(count, int) or isinstance(count, bool):
                raise TypeError(f"a run's submissions is not a count ({count!r})")
        return document
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(str(path), f"unreadable ledger ({type(exc).__name__}: {exc}); move it aside to start "
                                    "a new one") from None


def read(folder: Path) -> dict[str, dict]:
    """The runs' entries ({} before anything was submitted)."""
    return _document(folder)["runs"]


def check_site(folder: Path, site: str, record: bool) -> None:
    """Refuse a site other than the one the experiment's runs were submitted to; ``record``: name
    this one in a ledger that names none yet (under the lock, so two first submissions agree)."""
    def refuse(other: str) -> None:
        raise UsageError("--site", f"{folder} holds runs submitted to site {other}, not {site}: results never cross "
                                   f"sites; use --site {other}, or give this site its own results_root "
                                   f"(--set results_root=...)")

    if not record:
        other = _document(folder).get("site")
        if other not in (None, site):
            refuse(other)
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "ledger.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        document = _document(folder)
        if document.get("site") not in (None, site):
            refuse(document["site"])
        if document.get("site") is None:
            atomic_write_json(folder / LEDGER, {"site": site, "runs": document["runs"]})


@contextmanager
def locked(folder: Path):
    """Yields the runs dict; what it holds when the block ends is written back, if it changed."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "ledger.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        document = _document(folder)
        runs = document["runs"]
        before = json.dumps(runs, sort_keys=True)
        yield runs
        if json.dumps(runs, sort_keys=True) != before:
            atomic_write_json(folder / LEDGER, {**({"site": document["site"]} if "site" in document else {}),
                                                "runs": runs})


def claim(folder: Path, run: str, busy, *, submission: bool = True, **fields) -> int | None:
    """Mark ``run`` as ours and return its number of submissions, or None when ``busy(entry)``
    says another submitter has it (or it changed since we looked): checked and marked under one
    lock, so two concurrent ``hpml submit`` calls never start the same run. ``submission``:
    False for a change that starts nothing (adopting a job Slurm already has)."""
    return claim_many(folder, {run: busy}, submission=submission, **fields).get(run)


def claim_many(folder: Path, busy: dict, *, submission: bool = True, **fields) -> dict[str, int]:
    """``claim`` for each run of ``busy`` (run -> its busy test), under one lock and one write:
    the runs claimed, with their numbers of submissions."""
    claimed = {}
    with locked(folder) as runs:
        for run, is_busy in busy.items():
            entry = runs.setdefault(run, {"submissions": 0})
            if is_busy(entry):
                continue
            entry.update(fields, updated_at=now())
            if submission:
                entry.update(submissions=entry.get("submissions", 0) + 1, claimed_at=entry["updated_at"])
            claimed[run] = entry["submissions"]
    return claimed


def update(folder: Path, run: str, **fields) -> None:
    """Set fields of the run's entry (its state, job id, log), under the lock."""
    update_many(folder, {run: fields})


def update_many(folder: Path, changes: dict[str, dict]) -> None:
    """Set fields of several runs' entries (run -> fields) under one lock and one write: an
    array's runs are recorded together."""
    with locked(folder) as runs:
        for run, fields in changes.items():
            runs.setdefault(run, {"submissions": 0}).update(fields, updated_at=now())
