"""``hpml cancel``: cancel an experiment's pending and running Slurm jobs (scancel), and record
what Slurm then says. Slurm sends SIGTERM first, so a running engine saves a checkpoint and
stops; the run ends CANCELLED, and ``hpml submit`` (plain or ``--only-failed``) starts it again,
resuming from that checkpoint."""

from __future__ import annotations

import argparse

from hpml_core.contract.errors import UsageError
from hpml_core.contract.run_states import CANCELLED, PENDING, RUNNING
from jobs import backend, cli, ledger
from jobs.experiment import Experiment
from jobs.observe import refresh
from jobs.site import Site


def cancel(experiment: Experiment, site: Site, only: list[str] | None) -> int:
    names = [run.name for run in experiment.runs]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise UsageError("--run", f"{unknown[0]!r} is not a run of {experiment.name} (runs: {', '.join(names)})")
    folder = site.experiment_folder(experiment.name)
    ledger.check_site(folder, site.name, record=False)
    runner = backend.for_site(site)
    states, note = refresh(experiment.world_sizes, folder, query=runner.query)
    if note:  # decided on a partial answer: a job only the silent part knew is cancelled as last recorded
        print(f"note: {note}")
    chosen = {name: states[name].entry["job_id"] for name in (only or names)
              if states[name].state in (PENDING, RUNNING) and states[name].entry.get("job_id")}
    runner.cancel(sorted(chosen.values()))
    # Recorded before Slurm is asked again: a task scancel took from a pending array is forgotten
    # at once (neither squeue nor sacct lists it), and a forgotten job keeps the ending recorded.
    # A job Slurm still knows gets Slurm's word on the refresh, as always.
    ledger.update_many(folder, {name: {"state": CANCELLED, "why": f"hpml cancel: scancel {job_id}"}
                                for name, job_id in chosen.items()})
    refresh(experiment.world_sizes, folder, query=runner.query)
    for name, job_id in chosen.items():
        print(f"{name}: cancelled job {job_id}")
    print(f"{experiment.name}: {len(chosen)} job(s) cancelled" + ("" if chosen else " (none was pending or running)"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = cli.command_parser("cancel", __doc__)
    cli.add_experiment(parser)
    cli.add_site(parser)
    parser.add_argument("--run", action="append", dest="runs", metavar="NAME",
                        help="only this run (repeat for several); default: every run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        profile, exp = cli.load_study(args, checked=False)
        return cancel(exp, profile, args.runs)

    return cli.run("cancel", body)
