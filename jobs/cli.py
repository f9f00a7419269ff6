"""The study commands: ``hpml plan`` (expand and validate an experiment, show its runs),
``hpml render`` (job scripts for a Slurm site), ``hpml submit`` (run what has not completed),
``hpml status`` (where each run stands) and ``hpml cancel`` (cancel its Slurm jobs).

Nothing here imports torch: these run on a login node, and take the contract
(``hpml_core.spec``) from the engine's package, nothing else."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hpml_core.spec import run_states
from hpml_core.spec.errors import EXIT_USAGE, UsageError
from hpml_core.spec.models import GPT2_VOCAB
from jobs import experiment, render, site


def plan_table(exp: experiment.Experiment) -> Table:
    table = Table(title=f"{exp.name}: {len(exp.runs)} runs on {exp.dataset}" + (f" ({exp.description})" if exp.description else ""))
    for column in ("run", "mode", "nodes x GPUs", "DP", "TP", "batch/GPU", "accum", "global batch", "steps"):
        table.add_column(column, justify="left" if column in ("run", "mode") else "right")
    for run in exp.runs:
        table.add_row(run.name, run.mode, f"{run.nodes} x {run.gpus}", str(run.dp_size),
                      str(run.tp_size), str(run.setting("batch_size")), str(run.setting("grad_accum")),
                      str(run.global_batch), str(run.steps) if run.steps else "1 epoch")
    return table


def data_line(exp: experiment.Experiment) -> str:
    """What the runs were checked against: the prepared data, or an assumption, said so."""
    if exp.data is not None:
        return (f"data: {exp.data_folder}: {exp.data.num_tokens} tokens, vocabulary {exp.data.vocab_size} "
                "(checked: vocabulary, size)")
    return (f"data: not prepared at {exp.data_folder}: vocabulary assumed GPT-2's {GPT2_VOCAB}, "
            "data size not checked")


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
    for name in ("plan", "submit", "status", "cancel"):
        commands[name].add_argument("--site", default="local", help="a site profile (default local: this machine)")
    commands["plan"].description = "Expand and validate an experiment against the site's prepared data, if any."
    choice = commands["submit"].add_mutually_exclusive_group()
    choice.add_argument("--only-failed", action="store_true",
                        help=f"only runs that ended badly ({', '.join(sorted(run_states.ENDED_BADLY))})")
    choice.add_argument("--force", action="store_true",
                        help="every run not pending or running, completed or not, from step 0 (the old run "
                             "folder is kept in <run>/previous-<n>/)")
    commands["submit"].add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    commands["cancel"].add_argument("--run", action="append", dest="runs", metavar="NAME",
                                    help="only this run (repeat for several); default: every run")
    commands["status"].add_argument("--watch", type=float, metavar="SECONDS",
                                    help="refresh every SECONDS until no run is active")
    return parser


def run_command(args: argparse.Namespace) -> int:
    profile = site.load(args.site)
    # Commands that start runs (or show what would) check them against the prepared data.
    checked = args.command in ("plan", "render", "submit")
    exp = experiment.load(experiment.experiment_path(args.experiment), profile.data_folder() if checked else None)
    if args.command == "plan":
        Console(width=140).print(plan_table(exp))
        print(data_line(exp))
        return 0
    if args.command == "render":
        if profile.scheduler != "slurm":
            raise UsageError("--site", f"{args.site} runs without Slurm: it has no job scripts (use hpml submit)")
        paths = render.render(exp, profile, args.results)
        print(f"wrote {len(paths)} job scripts under {args.results / exp.name}/")
        return 0
    # Only the commands that talk to Slurm load its side (submitit), so plan and render stay quick.
    from jobs import cancel, slurm_query, status, submit

    try:
        if args.command == "submit":
            return submit.submit(exp, profile, args.only_failed, args.force, args.dry_run)
        if args.command == "cancel":
            return cancel.cancel(exp, profile, args.runs)
        return status.show(exp, profile.experiment_folder(exp.name), args.watch)
    except slurm_query.SlurmError as exc:
        print(f"hpml {args.command}: Slurm: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except UsageError as exc:
        print(f"hpml {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
