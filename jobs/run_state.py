"""Where each run of an experiment stands, from three sources that must agree: the ledger (what
``hpml submit`` did: backend, job id, attempts), the scheduler (Slurm's state of that job) and
the run's own files (rank files, written by the engine when it ends).

``refresh`` brings the ledger's states up to date with Slurm before anything decides what to
submit, cancel or show. When Slurm no longer knows a job (no accounting, and it ended a while
ago), the rank files say how the run ended.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from hpml_core.spec import rank_file
from jobs import ledger, slurm
from jobs.experiment import Experiment

# Endings that --only-failed submits again. OUT_OF_MEMORY, STOPPED and INTERRUPTED are the
# local backend's words: an engine that ran out of memory or was stopped by a signal, and a
# local run whose `hpml submit` died. The others are Slurm's.
BAD_ENDINGS = {"FAILED", "OUT_OF_MEMORY", "STOPPED", "INTERRUPTED", "SUBMIT_FAILED", "CANCELLED", "TIMEOUT",
               "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
# An `hpml submit` that claimed a run and is calling sbatch; older than this, it died doing so.
SUBMITTING_STALE_S = 600


def run_outcome(run_dir: Path, world_size: int) -> str:
    """COMPLETED only when every rank wrote a rank file saying so."""
    statuses = set()
    for rank in range(world_size):
        try:
            statuses.add(rank_file.read(rank_file.rank_file_path(run_dir, rank)).status)
        except (OSError, ValueError):
            statuses.add("missing")
    if statuses == {"completed"}:
        return "COMPLETED"
    return "OUT_OF_MEMORY" if "oom" in statuses else "STOPPED" if "stopped" in statuses else "FAILED"


def _process_alive(entry: dict) -> bool:
    if entry.get("host") not in (None, socket.gethostname()):
        return True  # another machine's process: it cannot be checked from here
    try:
        os.kill(entry["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def busy(entry: dict) -> bool:
    """Whether the run is running or waiting to run under some submission, so that nothing may
    start it again (not even --force): a Slurm job that is pending or running, a local run whose
    `hpml submit` is alive, or an `hpml submit` calling sbatch for it right now."""
    state = entry.get("state")
    if entry.get("backend") == "slurm" and state in slurm.ACTIVE:
        return True
    if state == "SUBMITTING":
        age = time.time() - datetime.fromisoformat(entry["updated_at"]).timestamp()
        return age < SUBMITTING_STALE_S and _process_alive(entry)
    return state == "RUNNING" and entry.get("backend") == "local" and _process_alive(entry)


def refresh(experiment: Experiment, folder: Path) -> dict[str, dict]:
    """Ask Slurm for the state of every job in the ledger, record it, and return the ledger.
    Raises slurm.SlurmError when neither sacct nor squeue answers."""
    entries = ledger.read(folder)
    job_ids = {e["job_id"] for e in entries.values() if e.get("backend") == "slurm" and e.get("job_id")}
    stale_local = [name for name, e in entries.items()
                   if e.get("backend") == "local" and e.get("state") == "RUNNING" and not busy(e)]
    if not job_ids and not stale_local:
        return entries
    infos = slurm.query(sorted(job_ids))
    world_sizes = {run.name: run.world_size for run in experiment.runs}
    with ledger.locked(folder) as runs:
        for name, entry in runs.items():
            job_id = entry.get("job_id")
            if entry.get("backend") == "local" and entry.get("state") == "RUNNING" and not busy(entry):
                entry["state"] = "INTERRUPTED"  # its hpml submit is gone
            elif job_id in infos:
                info = infos[job_id]
                entry.update(state=info.state, elapsed=info.elapsed, nodes=info.nodes, state_from=info.source)
            elif job_id in job_ids and entry.get("state") in slurm.ACTIVE and name in world_sizes:
                entry.update(state=run_outcome(folder / name, world_sizes[name]), state_from="rank files")
            else:
                continue
            entry["updated_at"] = datetime.now(timezone.utc).isoformat()
        return runs
