"""``hpml submit``: run every run of an experiment that has not completed, and keep the ledger.

Idempotent: a run whose rank files all say completed is skipped, so submitting again after
failures runs only what did not finish; ``--only-failed`` narrows to runs that ended badly,
``--force`` runs everything again, ``--dry-run`` only says what would run.

This module runs a study on this machine (``--site local``): one run after another, each with
the engine command a job script would use, its processes started by torchrun, its output in
``<run>/local-<attempt>.out``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from hpml_core import rank_file
from hpml_core.errors import EXIT_OOM, EXIT_STOPPED
from jobs import ledger
from jobs.experiment import Experiment, ExperimentError, Run
from jobs.render import train_args
from jobs.site import Site, expand_path

BAD_ENDINGS = {"FAILED", "OUT_OF_MEMORY", "STOPPED", "CANCELLED", "TIMEOUT"}


def run_outcome(run_dir: Path, world_size: int) -> str:
    """COMPLETED only when every rank wrote a rank file saying so."""
    statuses = set()
    for rank in range(world_size):
        path = rank_file.rank_file_path(run_dir, rank)
        try:
            statuses.add(rank_file.read(path).status)
        except (OSError, ValueError):
            statuses.add("missing")
    if statuses == {"completed"}:
        return "COMPLETED"
    return "OUT_OF_MEMORY" if "oom" in statuses else "STOPPED" if "stopped" in statuses else "FAILED"


def local_command(run: Run, args: list[str]) -> list[str]:
    if run.gpus == 1:
        return [sys.executable, "-m", "hpml_core.train", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={run.gpus}",
            "-m", "hpml_core.train", *args]


def running_elsewhere(entry: dict) -> bool:
    """A run another `hpml submit` on this machine is running right now."""
    if entry.get("state") != "RUNNING" or not entry.get("pid"):
        return False
    try:
        os.kill(entry["pid"], 0)
    except ProcessLookupError:
        return False  # that submit died: the run is not running any more
    return True


def select(experiment: Experiment, folder: Path, only_failed: bool, force: bool) -> list[Run]:
    entries = ledger.read(folder)
    chosen = []
    for run in experiment.runs:
        state = entries.get(run.name, {}).get("state")
        if running_elsewhere(entries.get(run.name, {})):
            continue  # never twice at once, not even with --force
        if force:
            chosen.append(run)
        elif only_failed:
            if state in BAD_ENDINGS:
                chosen.append(run)
        elif run_outcome(folder / run.name, run.world_size) != "COMPLETED":
            chosen.append(run)
    return chosen


def submit_local(experiment: Experiment, site: Site, only_failed: bool, force: bool, dry_run: bool) -> int:
    results = Path(expand_path(site.results_root))
    folder = results / experiment.name
    data_dir = f"{expand_path(site.data_root)}/{experiment.dataset}"
    multi_node = [run.name for run in experiment.runs if run.nodes > 1]
    if multi_node:
        raise ExperimentError(f"run {multi_node[0]!r}", "nodes", "--site local runs on this one machine (nodes: 1)")
    runs = select(experiment, folder, only_failed, force)
    skipped = len(experiment.runs) - len(runs)
    print(f"{experiment.name}: {len(runs)} to run, {skipped} skipped"
          f"{' (completed)' if not only_failed else ' (not failed)'}{' [dry run]' if dry_run else ''}")
    if dry_run:
        for run in runs:
            print(f"  would run {run.name}: {' '.join(local_command(run, train_args(run, data_dir, str(folder / run.name))))}")
        return 0
    failures = 0
    for index, run in enumerate(runs, 1):
        run_dir = folder / run.name
        command = local_command(run, train_args(run, data_dir, str(run_dir)))
        attempt = ledger.claim(folder, run.name, running_elsewhere, backend="local", job_id=None, pid=os.getpid(),
                               state="RUNNING", started_at=datetime.now(timezone.utc).isoformat())
        if attempt is None:
            print(f"[{index}/{len(runs)}] {run.name}: started meanwhile by another hpml submit, skipped")
            continue
        log = run_dir / f"local-{attempt}.out"
        run_dir.mkdir(parents=True, exist_ok=True)
        ledger.record(folder, run.name, log=str(log))
        print(f"[{index}/{len(runs)}] {run.name}: {run.nodes} x {run.gpus} processes ...", end="", flush=True)
        started = time.perf_counter()
        with open(log, "w") as out:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
        state = run_outcome(run_dir, run.world_size) if code in (0, EXIT_OOM, EXIT_STOPPED) else "FAILED"
        ledger.record(folder, run.name, state=state, exit_code=code)
        print(f" {state} in {time.perf_counter() - started:.0f} s" + ("" if state == "COMPLETED" else f" (log: {log})"))
        failures += state != "COMPLETED"
    print(f"results: {folder}/<run>/rank-<k>.json; ledger: {folder / ledger.LEDGER}")
    return 1 if failures else 0
