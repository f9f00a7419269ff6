"""The study commands: ``hpml plan`` (expand and validate an experiment, show its runs),
``hpml render`` (job scripts for a Slurm site), ``hpml submit`` (run what has not completed) and
``hpml status`` (where each run stands) and ``hpml cancel`` (cancel its Slurm jobs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hpml_core.spec.errors import EXIT_USAGE, UsageError
from jobs import cancel, experiment, render, site, slurm, status, submit

EXPERIMENTS = Path(__file__).parent / "experiments"


def resolve(name_or_path: str) -> Path:
    """An experiment by file path, or by name from jobs/experiments/."""
    path = Path(name_or_path)
    return path if path.suffix in (".yaml", ".yml") else EXPERIMENTS / f"{name_or_path}.yaml"


def plan_table(exp: experiment.Experiment) -> Table:
    table = Table(title=f"{exp.name}: {len(exp.runs)} runs on {exp.dataset}" + (f" ({exp.description})" if exp.description else ""))
    for column in ("run", "mode", "nodes x GPUs", "DP", "TP", "batch/GPU", "accum", "global batch", "steps"):
        table.add_column(column, justify="left" if column in ("run", "mode") else "right")
    for run in exp.runs:
        table.add_row(run.name, run.train.get("mode", "single"), f"{run.nodes} x {run.gpus}", str(run.dp_size),
                      str(run.tp_size), str(run.train.get("batch_size", 8)), str(run.train.get("grad_accum", 1)),
                      str(run.global_batch), str(run.steps) if run.steps else "1 epoch")
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpml", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "plan": sub.add_parser("plan", help="expand and validate an experiment, print its runs"),
        "render": sub.add_parser("render", help="write results/<experiment>/<run>/job.sbatch for a Slurm site"),
        "submit": sub.add_parser("submit", help="run every run that has not completed, keeping the ledger"),
        "status": sub.add_parser("status", help="the state and progress of an experiment's runs"),
        "cancel": sub.add_parser("cancel", help="cancel an experiment's pending and running Slurm jobs"),
    }
    for command in commands.values():
        command.add_argument("experiment", help="an experiment file, or the name of one in jobs/experiments/")
    commands["render"].add_argument("--site", required=True, help="a site profile file, or a name in jobs/sites/")
    commands["render"].add_argument("--results", type=Path, default=Path("results"), help="where the scripts go")
    for name in ("submit", "status", "cancel"):
        commands[name].add_argument("--site", default="local", help="a site profile (default local: this machine)")
    choice = commands["submit"].add_mutually_exclusive_group()
    choice.add_argument("--only-failed", action="store_true", help="only runs that failed, ran out of memory or stopped")
    choice.add_argument("--force", action="store_true", help="every run, completed or not")
    commands["submit"].add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    commands["cancel"].add_argument("--run", action="append", dest="runs", metavar="NAME",
                                    help="only this run (repeat for several); default: every run")
    commands["status"].add_argument("--watch", type=float, metavar="SECONDS",
                                    help="refresh every SECONDS until no run is active")
    return parser


def run_command(args: argparse.Namespace) -> int:
    exp = experiment.load(resolve(args.experiment))
    if args.command == "plan":
        Console(width=140).print(plan_table(exp))
        return 0
    profile = site.load(args.site)
    if args.command == "render":
        if profile.scheduler != "slurm":
            raise UsageError("--site", f"{args.site} runs without Slurm: it has no job scripts (use hpml submit)")
        paths = render.render(exp, profile, args.results)
        print(f"wrote {len(paths)} job scripts under {args.results / exp.name}/")
        return 0
    if args.command == "submit":
        return submit.submit(exp, profile, args.only_failed, args.force, args.dry_run)
    if args.command == "cancel":
        return cancel.cancel(exp, profile, args.runs)
    return status.show(exp, profile.experiment_folder(exp.name), args.watch)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except UsageError as exc:
        print(f"hpml {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except slurm.SlurmError as exc:
        print(f"hpml {args.command}: Slurm: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
