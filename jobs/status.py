"""``hpml status``: one table of an experiment's runs: each run's state, as ``jobs.observe``
decides it for every command (Slurm's word through sacct or squeue, the rank files of the last
attempt, the ledger), the engine's own progress from ``status.json`` (running, step k of n),
elapsed time, size, nodes and attempts; below it, why each run that ended otherwise than
COMPLETED ended so, and how the previous run ended of a job Slurm requeued; when Slurm did not
answer, that the states are as last recorded, and when only part of it did (its accounting, or
its controller), which part, in one line. ``--watch`` refreshes it until no run is active."""

from __future__ import annotations

import argparse
import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hpml_core.contract.run_states import COMPLETED
from jobs import backend, cli
from jobs.experiment import Experiment
from jobs.observe import RunState, current
from jobs.site import Site

COLUMNS = ("run", "job", "state", "progress", "elapsed", "size", "nodes", "attempts")


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def row(run_size: str, found: RunState) -> dict:
    entry, own = found.entry, found.own
    if entry.get("backend") == "slurm":
        job, elapsed, nodes = entry.get("job_id") or "-", entry.get("elapsed", "-"), entry.get("nodes") or "-"
    else:
        job, nodes = ("local", "this machine") if entry else ("-", "-")
        elapsed = _elapsed(own["updated_at"] - own["started_at"]) if own else "-"
    return {"run": found.name, "job": job, "state": found.state, "progress": found.progress, "elapsed": elapsed,
            "size": run_size, "nodes": nodes, "attempts": str(len(found.attempts))}


def render_table(experiment: Experiment, site: Site) -> tuple[Table, list[str], bool]:
    """The table; the lines below it (how the states were decided, when not with all of Slurm's
    word, then why each run that needs it stands as it does); and whether any run is still
    active (submitting, pending or running)."""
    folder = site.experiment_folder(experiment.name)
    states, note = current(experiment.world_sizes, folder, query=backend.for_site(site).query)
    # Why each run ended otherwise than COMPLETED, and why Slurm runs or queues one again (a requeue).
    whys = [f"{name}: {found.state}: {found.why}" for name, found in states.items()
            if found.why and found.state != COMPLETED and (not found.active or found.requeued_after)]
    table = Table(title=Text(f"{experiment.name} ({folder})"))
    for column in COLUMNS:
        table.add_column(column)
    for run in experiment.runs:
        cells = row(f"{run.nodes} x {run.gpus}", states[run.name])
        table.add_row(*(Text(cells[column]) for column in COLUMNS))
    return table, [*([note] if note else []), *whys], any(found.active for found in states.values())


def _view(table: Table, lines: list[str]) -> Group:
    # Text, not markup: an error's words may hold brackets ("[/pytorch/.../pair.cc:553]").
    return Group(table, *(Text(line) for line in lines))


def show(experiment: Experiment, site: Site, watch: float | None) -> int:
    console = Console(width=160)
    table, lines, active = render_table(experiment, site)
    if not watch:
        console.print(table)
        for line in lines:  # each one line, however long, for whoever reads it through grep
            console.print(Text(line), soft_wrap=True)
        return 0
    with Live(_view(table, lines), console=console, auto_refresh=False) as live:
        while active:
            time.sleep(watch)
            table, lines, active = render_table(experiment, site)
            live.update(_view(table, lines), refresh=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = cli.command_parser("status", __doc__)
    cli.add_experiment(parser)
    cli.add_site(parser)
    parser.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until no run is active")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        profile, exp = cli.load_study(args, checked=False)
        return show(exp, profile, args.watch)

    return cli.run("status", body)
