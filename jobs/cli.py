"""``hpml plan``: expand and validate an experiment file, and show what it would run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hpml_core.errors import EXIT_USAGE, UsageError
from jobs import experiment

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpml plan", description=__doc__)
    parser.add_argument("experiment", help="an experiment file, or the name of one in jobs/experiments/")
    args = parser.parse_args(argv)
    try:
        exp = experiment.load(resolve(args.experiment))
    except UsageError as exc:
        print(f"hpml plan: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    Console(width=140).print(plan_table(exp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
