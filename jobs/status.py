"""``hpml status``: one table of an experiment's runs: the scheduler's state (Slurm's, through
sacct or squeue, else the last one the ledger recorded), the run's own status from its
``status.json`` (running, step k of n; completed; failed; oom; stopped), elapsed time, size and
nodes. ``--watch`` refreshes it until no run is pending or running."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from hpml_core.spec.status_file import read_status
from jobs import ledger, slurm
from jobs.experiment import Experiment
from jobs.run_state import busy, refresh

COLUMNS = ("run", "job", "state", "progress", "elapsed", "size", "nodes", "attempts")


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _progress(own: dict | None, state: str) -> str:
    """The engine's own words; when Slurm ended the job under it, Slurm's (cancelled at step k/n)."""
    if own is None:
        return "starting" if state == "RUNNING" else "pending" if state in slurm.ACTIVE else "-"
    if own["state"] == "running" and state not in slurm.ACTIVE:
        return f"{state.lower()} at step {own['step']}/{own['total_steps']}"
    return f"{own['state']}, step {own['step']}/{own['total_steps']}"


def rows(experiment: Experiment, folder: Path, entries: dict) -> list[dict]:
    table = []
    for run in experiment.runs:
        entry = entries.get(run.name, {})
        state = entry.get("state", "NOT SUBMITTED")
        own = read_status(folder / run.name)
        if entry.get("backend") == "slurm":
            job, elapsed, nodes = entry.get("job_id") or "-", entry.get("elapsed", "-"), entry.get("nodes") or "-"
        else:
            job, nodes = ("local", "this machine") if entry else ("-", "-")
            elapsed = _elapsed(own["updated_at"] - own["started_at"]) if own else "-"
        table.append({"run": run.name, "job": job, "state": state, "progress": _progress(own, state),
                      "elapsed": elapsed, "size": f"{run.nodes} x {run.gpus}", "nodes": nodes,
                      "attempts": str(entry.get("attempts", 0)), "active": busy(entry)})
    return table


def render_table(experiment: Experiment, folder: Path) -> tuple[Table, bool]:
    """The table, and whether any run is still pending or running."""
    try:
        entries, caption = refresh(experiment, folder), None
    except slurm.SlurmError as exc:
        entries, caption = ledger.read(folder), f"Slurm did not answer ({exc}): states as last recorded"
    table = Table(title=f"{experiment.name} ({folder})", caption=caption)
    for column in COLUMNS:
        table.add_column(column)
    found = rows(experiment, folder, entries)
    for row in found:
        table.add_row(*(row[column] for column in COLUMNS))
    return table, any(row["active"] for row in found)


def show(experiment: Experiment, folder: Path, watch: float | None) -> int:
    console = Console(width=160)
    table, active = render_table(experiment, folder)
    if not watch:
        console.print(table)
        return 0
    with Live(table, console=console, auto_refresh=False) as live:
        while active:
            time.sleep(watch)
            table, active = render_table(experiment, folder)
            live.update(table, refresh=True)
    return 0
