"""The study commands: ``hpml plan`` (expand and validate an experiment, show its runs, their
predicted memory per GPU against the site's GPU, and their predicted step time, tokens/s and
GPU-hours at the site's stated speed),
``hpml render`` (job scripts for a Slurm site), ``hpml submit`` (run what has not completed),
``hpml status`` (where each run stands) and ``hpml cancel`` (cancel its Slurm jobs).

Nothing here imports torch: these run on a login node, and take the contract
(``hpml_core.contract``) from the engine's package, nothing else."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hpml_core.contract import fit, run_states
from hpml_core.contract.errors import EXIT_USAGE, UsageError
from hpml_core.contract.gpus import GpuMemory
from hpml_core.contract.units import GIB
from hpml_core.contract.memory_model import Prediction, predict
from hpml_core.contract.models import GPT2_VOCAB
from hpml_core.contract.step_time import Performance, StepPrediction, predict_step
from jobs import experiment, render, site


@dataclass(frozen=True)
class RunMemory:
    """One run's predicted memory per GPU, judged against the site's GPU."""

    prediction: Prediction
    fits: bool | None  # None: the site names no GPU to judge against
    largest_batch: int | None  # None: no GPU to judge against, or not even a batch of 1 fits


def judge_memory(exp: experiment.Experiment, gpu: GpuMemory) -> dict[str, RunMemory]:
    """Every run's prediction, fit and largest batch per GPU, by run name. Runs that share their
    settings (repeats) share a prediction, and runs that share all but their batch (a batch
    grid too) share the search for the largest batch, so each is computed once."""
    found: dict[str, RunMemory] = {}
    predictions: dict[tuple, Prediction] = {}
    largest: dict[tuple, int | None] = {}
    for run in exp.runs:
        resolved = exp.resolved(run)
        config, dims, layout = resolved.config, resolved.dims, resolved.layout
        if (config, dims, layout) not in predictions:
            predictions[config, dims, layout] = predict(config, dims, layout)
        prediction = predictions[config, dims, layout]
        if gpu.total_bytes is None:
            found[run.name] = RunMemory(prediction, None, None)
            continue
        but_batch = (config.model_copy(update={"batch_size": 1}), dims, layout)
        if but_batch not in largest:
            largest[but_batch] = fit.largest_batch(config, dims, layout, gpu)
        found[run.name] = RunMemory(prediction, fit.fits(prediction, gpu), largest[but_batch])
    return found


@dataclass(frozen=True)
class RunSpeed:
    """One run's predicted step on the site's GPU, and the device-hours of its training steps."""

    step: StepPrediction
    gpu_hours: float | None  # None: no prediction, or the data's size (so the steps) unknown


def judge_speed(exp: experiment.Experiment, profile: site.Site) -> dict[str, RunSpeed]:
    performance, gpu, found = profile.performance(), profile.gpu(), {}
    for run in exp.runs:
        resolved = exp.resolved(run)
        step = predict_step(resolved.config, resolved.dims, resolved.layout, run.gpus, gpu, performance)
        found[run.name] = RunSpeed(step, step.gpu_hours(resolved.total_steps, run.world_size))
    return found


def _figure(value: float | None, form: str) -> str:
    return "n/a" if value is None else format(value, form)


def hours_unit(profile: site.Site) -> str:
    """GPU-hours on a site with GPUs; process-hours where the ranks are CPU processes."""
    return "GPU-hours" if profile.gpu() is not None or profile.gpu_type else "process-hours"


def study_hours_line(exp: experiment.Experiment, speeds: dict[str, RunSpeed], performance: Performance,
                     unit: str) -> str:
    hours = [speeds[run.name].gpu_hours for run in exp.runs]
    missing = sum(h is None for h in hours)
    total = f"{sum(h for h in hours if h is not None):,.3g} {unit} predicted for the {len(hours) - missing} runs"
    if missing:
        total += f" ({missing} runs without a prediction: see --explain)"
    return (f"study: {total}: training steps only (setup, compilation and queueing not counted); speed assumed: "
            f"{performance.describe()}; step = compute + communication, not overlapped (hpml_core.contract.step_time)")


def arrays_line(exp: experiment.Experiment, profile: site.Site) -> str:
    """How ``hpml submit`` would send the study: one job array per resource shape."""
    groups = render.group_by_shape(exp.runs)
    shapes = ", ".join(f"{render.shape_label(group[0])} ({len(group)} runs)" for group in groups)
    limit = (f"at most {profile.max_concurrent} tasks of each at once (max_concurrent)" if profile.max_concurrent
             else "no limit on the tasks running at once (--max-concurrent M, or max_concurrent)")
    return f"submit: {len(groups)} job array(s), one sbatch each: {shapes}; {limit}"


def gib(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.1f}"


def plan_table(exp: experiment.Experiment, gpu: GpuMemory, memory: dict[str, RunMemory],
               speeds: dict[str, RunSpeed], unit: str) -> Table:
    table = Table(title=f"{exp.name}: {len(exp.runs)} runs on {exp.dataset}" + (f" ({exp.description})" if exp.description else ""))
    fits_column = f"fits {gpu.label}" if gpu.label else "fits GPU"
    table.caption = f"predicted: GiB/GPU, max batch, step, tokens/s and {unit}"
    for column in ("run", "mode", "nodes x GPUs", "DP", "TP", "batch/GPU", "accum", "global batch", "steps",
                   "GiB/GPU", fits_column, "max batch", "step (s)", "tokens/s", unit):
        table.add_column(column, justify="left" if column in ("run", "mode") else "right", no_wrap=column == "run")
    for run in exp.runs:
        judged = memory[run.name]
        fits = "n/a" if judged.fits is None else "yes" if judged.fits else "NO"
        largest = ("n/a" if judged.fits is None else "none" if judged.largest_batch is None
                   else str(judged.largest_batch))
        table.add_row(run.name, run.mode, f"{run.nodes} x {run.gpus}", str(run.dp_size),
                      str(run.tp_size), f"{run.setting('batch_size')}{' (max)' if run.batch_chosen else ''}",
                      str(run.setting("grad_accum")),
                      str(run.global_batch), str(run.steps) if run.steps else "1 epoch",
                      gib(judged.prediction.total_bytes), fits, largest,
                      _figure(speeds[run.name].step.step_s, ".3g"), _figure(speeds[run.name].step.tokens_per_s, ",.0f"),
                      _figure(speeds[run.name].gpu_hours, ".3g"))
    return table


def gpu_line(gpu: GpuMemory) -> str:
    """What the fit was judged against, or why it was not."""
    if gpu.total_bytes is None:
        return f"GPU: n/a: {gpu.missing_reason}: GiB/GPU is predicted for a CUDA GPU; the fit is not judged"
    return (f"GPU: {gpu.label}, {gpu.total_gib:.1f} GiB ({gpu.source}); a run fits when its predicted memory per "
            "GPU is at most that; max batch: the largest batch per GPU that fits, other settings kept")


def explain_lines(exp: experiment.Experiment, memory: dict[str, RunMemory], speeds: dict[str, RunSpeed]) -> list[str]:
    """Each prediction's lines (name, GiB, formula) and its step time's arithmetic, once for the
    runs that share them (repeats)."""
    groups: dict[tuple[Prediction, StepPrediction], list[str]] = {}
    for run in exp.runs:
        groups.setdefault((memory[run.name].prediction, speeds[run.name].step), []).append(run.name)
    lines = []
    for (prediction, step), names in groups.items():
        lines.append(f"{', '.join(names)}: {gib(prediction.total_bytes)} GiB per GPU (predicted)")
        width = max(len(line.name) for line in prediction.lines)
        lines += [f"  {line.name:<{width}} {gib(line.bytes):>6} GiB  {line.formula}" for line in prediction.lines]
        lines.append(f"  step: {step.how}")
    return lines


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
    sub.add_parser("sites", help="list the site profiles a name finds: the user's, then the shipped ones")
    doctor = sub.add_parser("doctor", help="check that a site works: Slurm, account, partition, container, the "
                                           "job environment's Python, data, results folder (--smoke: one tiny run)")
    doctor.add_argument("--site", default="local", help="a site profile (default local: this machine)")
    doctor.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="change one field of the site profile for this command (repeatable)")
    doctor.add_argument("--smoke", action="store_true", help="submit one tiny 1-GPU run and wait for its rank file")
    doctor.add_argument("--dataset", help="the prepared dataset to check (and train the smoke run on)")
    for command in commands.values():
        command.add_argument("experiment", help="an experiment file, or the name of one in jobs/experiments/")
        command.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                             help="change one field of the site profile for this command (repeatable; dotted keys "
                                  "such as container.image; the value is YAML)")
    commands["render"].add_argument("--site", required=True, help="a site profile file, or a name in jobs/sites/")
    commands["render"].add_argument("--results", type=Path, default=Path("results"), help="where the scripts go")
    for name in ("plan", "submit", "status", "cancel"):
        commands[name].add_argument("--site", default="local", help="a site profile (default local: this machine)")
    commands["plan"].description = ("Expand and validate an experiment against the site's prepared data, if any, "
                                    "and judge each run's predicted memory per GPU against the site's GPU.")
    commands["plan"].add_argument("--explain", action="store_true",
                                  help="under the table, each run's predicted memory line by line, with its formula")
    choice = commands["submit"].add_mutually_exclusive_group()
    choice.add_argument("--only-failed", action="store_true",
                        help=f"only runs that ended badly ({', '.join(sorted(run_states.ENDED_BADLY))})")
    choice.add_argument("--force", action="store_true",
                        help="every run not pending or running, completed or not, from step 0 (the old run "
                             "folder is kept in <run>/previous-<n>/)")
    commands["submit"].add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    commands["submit"].add_argument("--report", action="store_true",
                                    help="build the report when the study's runs have ended: on Slurm a small job "
                                         "that depends on theirs (afterany), here once they are done")
    commands["submit"].add_argument("--no-fit-check", dest="fit_check", action="store_false",
                                    help="submit runs predicted not to fit on the site's GPU all the same")
    commands["submit"].add_argument("--max-concurrent", type=positive_int, metavar="M",
                                    help="at most M tasks of each job array run at once (Slurm's --array=0-N%%M; "
                                         "default: the site's max_concurrent, else no limit)")
    commands["cancel"].add_argument("--run", action="append", dest="runs", metavar="NAME",
                                    help="only this run (repeat for several); default: every run")
    commands["status"].add_argument("--watch", type=float, metavar="SECONDS",
                                    help="refresh every SECONDS until no run is active")
    return parser


def positive_int(text: str) -> int:
    """argparse's reading of a count: a whole number from 1 (otherwise its one-line error, exit 2)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 (got {text!r})")
    return int(text)


def list_sites() -> int:
    table = Table(title=f"site profiles (yours in {site.user_sites()}, set by $HPML_SITES)")
    for column in ("name", "from", "file"):
        table.add_column(column)
    for name, path, where in site.available():
        table.add_row(name, where, str(path))
    Console(width=160).print(table)
    return 0


def run_command(args: argparse.Namespace) -> int:
    if args.command == "sites":
        return list_sites()
    profile = site.load(args.site, args.overrides)
    if args.command == "doctor":
        from jobs import doctor

        return doctor.doctor(profile, args.smoke, args.dataset)
    # Commands that start runs (or show what would) check them against the prepared data.
    checked = args.command in ("plan", "render", "submit")
    exp = experiment.load(experiment.experiment_path(args.experiment), profile.data_folder() if checked else None,
                          profile.gpu_memory())
    if args.command == "plan":
        gpu = profile.gpu_memory()
        memory, speeds = judge_memory(exp, gpu), judge_speed(exp, profile)
        unit = hours_unit(profile)
        Console(width=180).print(plan_table(exp, gpu, memory, speeds, unit))
        if args.explain:
            print("\n".join(explain_lines(exp, memory, speeds)))
        print(gpu_line(gpu))
        print(study_hours_line(exp, speeds, profile.performance(), unit))
        if profile.scheduler == "slurm":
            print(arrays_line(exp, profile))
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
            return submit.submit(exp, profile, args.only_failed, args.force, args.dry_run, args.fit_check,
                                 (args.site, args.overrides) if args.report else None, args.max_concurrent)
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
