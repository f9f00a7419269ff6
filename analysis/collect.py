"""Read what an experiment left on disk, run by run, and say how each run stands.

Sources, per run folder: the rank files (each validated against the schema of
``hpml_core.spec.rank_file``), the engine's ``status.json`` (progress of a run still going) and the
ledger entry ``hpml submit`` keeps (Slurm's last recorded state: pending, timeout, cancelled).
Nothing is dropped: a run with no rank files, a missing rank or an unreadable file becomes a
``RunResult`` with a status and a reason, and every unreadable or schema-invalid file is
listed by path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from hpml_core.spec.rank_file import RankFile
from hpml_core.spec.status_file import ACTIVE_STATES, read_status
from jobs import ledger

RANK_FILE = re.compile(r"^rank-(\d+)\.json$")
REPEAT_SUFFIX = re.compile(r"-r\d+$")
# Slurm endings the ledger may record for a run that wrote no (or not all) rank files.
SLURM_ENDINGS = {"TIMEOUT": "timeout", "CANCELLED": "cancelled", "FAILED": "failed", "OUT_OF_MEMORY": "oom",
                 "NODE_FAIL": "failed", "BOOT_FAIL": "failed", "DEADLINE": "timeout", "PREEMPTED": "cancelled",
                 "SUBMIT_FAILED": "failed", "INTERRUPTED": "failed"}
SLURM_WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING", "SUBMITTING"}


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str


@dataclass
class RunResult:
    name: str
    configuration: str  # the name without its repeat suffix: repeats of one configuration share it
    status: str  # completed, running, pending, stopped, failed, oom, timeout, cancelled, incomplete, missing
    reason: str | None
    ranks: dict[int, RankFile] = field(default_factory=dict)  # the valid rank files, by rank

    @property
    def completed(self) -> bool:
        return self.status == "completed"


def configuration_of(run_name: str, repeated: bool) -> str:
    return REPEAT_SUFFIX.sub("", run_name) if repeated else run_name


def _read_ranks(run_dir: Path, problems: list[Problem]) -> dict[int, RankFile]:
    ranks = {}
    for path in sorted(run_dir.glob("rank-*.json")):
        match = RANK_FILE.match(path.name)
        if not match:
            continue
        try:
            ranks[int(match.group(1))] = RankFile.model_validate_json(path.read_bytes())
        except OSError as exc:
            problems.append(Problem(str(path), f"unreadable: {exc.strerror}"))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "file"
            kind = "not JSON" if first["type"] == "json_invalid" else f"{where}: {first['msg']}"
            problems.append(Problem(str(path), f"does not match the rank-file schema ({kind})"))
    return ranks


def _status(ranks: dict[int, RankFile], world: int, entry: dict, own: dict | None) -> tuple[str, str | None]:
    """The run's status and, unless completed, why. The current attempt first (running, or
    waiting in Slurm's queue), then what the rank files of the last attempt say."""
    slurm_state = entry.get("state")
    statuses = {f.status for f in ranks.values()}
    missing = sorted(set(range(world)) - set(ranks))
    if own and own.get("state") in ACTIVE_STATES and slurm_state not in SLURM_ENDINGS:
        return "running", f"step {own['step']}/{own['total_steps']}"
    if slurm_state in SLURM_WAITING:
        last = f"; last attempt: {own['state']} at step {own['step']}/{own['total_steps']}" if own else ""
        return "pending", f"Slurm: {slurm_state}{last}"
    for bad in ("oom", "failed"):
        if bad in statuses:
            first = next(f for f in ranks.values() if f.status == bad)
            return bad, f"rank {first.rank}: {first.error}"
    if ranks and not missing and statuses == {"completed"}:
        return "completed", None
    if slurm_state in SLURM_ENDINGS:
        step = f" at step {own['step']}/{own['total_steps']}" if own else ""
        return SLURM_ENDINGS[slurm_state], f"Slurm: {slurm_state}{step}"
    if "stopped" in statuses:
        first = next(f for f in ranks.values() if f.status == "stopped")
        return "stopped", first.error
    if not ranks:
        return "missing", "no rank files" + ("" if entry else " (never submitted)")
    return "incomplete", f"rank files missing: {', '.join(map(str, missing))}"


def collect(folder: Path, runs: dict[str, int], repeated: bool) -> tuple[list[RunResult], list[Problem]]:
    """Every run of the experiment in ``folder``; ``runs`` maps its run names to their world sizes."""
    problems: list[Problem] = []
    try:
        entries = ledger.read(folder)
    except (OSError, ValueError, KeyError) as exc:
        problems.append(Problem(str(folder / ledger.LEDGER), f"unreadable ledger ({exc})"))
        entries = {}
    results = []
    for name, world in runs.items():
        run_dir = folder / name
        ranks = _read_ranks(run_dir, problems)
        status, reason = _status(ranks, world, entries.get(name, {}), read_status(run_dir))
        results.append(RunResult(name, configuration_of(name, repeated), status, reason, ranks))
    return results, problems
