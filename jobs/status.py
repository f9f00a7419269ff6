"""``hpml status``: one table of an experiment's runs: the scheduler's state from the ledger, and
the run's own status from its ``status.json`` (running, step k of n; completed; failed; oom;
stopped), elapsed time and size. ``--watch`` refreshes it until no run is active."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from hpml_core.progress import STATUS_FILE
from jobs import ledger
from jobs.experiment import Experiment
from jobs.submit import running_elsewhere

ACTIVE = {"PENDING", "RUNNING"}


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def rows(experiment: Experiment, folder: Path) -> list[dict]:
    entries = ledger.read(folder)
    table = []
    for run in experiment.runs:
        entry = entries.get(run.name, {})
        state = entry.get("state", "NOT SUBMITTED")
        if state == "RUNNING" and entry.get("backend") == "local" and not running_elsewhere(entry):
            state = "INTERRUPTED"  # its hpml submit is gone
        own_path = folder / run.name / STATUS_FILE
        own = json.loads(own_path.read_text()) if own_path.exists() else None
        progress, elapsed = "-", "-"
        if own:
            progress = f"{own['state']}, step {own['step']}/{own['total_steps']}"
            elapsed = _elapsed(own["updated_at"] - own["started_at"])
        table.append({"run": run.name, "state": state, "progress": progress, "elapsed": elapsed,
                      "size": f"{run.nodes} x {run.gpus}", "attempts": str(entry.get("attempts", 0))})
    return table


def render_table(experiment: Experiment, folder: Path) -> tuple[Table, bool]:
    """The table, and whether any run is still active."""
    table = Table(title=f"{experiment.name} ({folder})")
    for column in ("run", "state", "progress", "elapsed", "size", "attempts"):
        table.add_column(column)
    found = rows(experiment, folder)
    for row in found:
        table.add_row(*row.values())
    return table, any(row["state"] in ACTIVE for row in found)


def show(experiment: Experiment, folder: Path, watch: float | None) -> int:
    console = Console(width=140)
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
