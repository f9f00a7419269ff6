"""``hpml plan``: expand and validate an experiment against the site's prepared data, if any,
and show its runs: their predicted memory per GPU against the site's GPU, and their predicted
step time, tokens/s and GPU-hours at the site's stated speed.

Nothing is written and nothing is submitted: a study is planned on a laptop or a login node
before a single job waits in a queue. The line before the last says whether its checkpoints fit the free
space of the results folder (``jobs.disk_need``). ``--explain`` shows each prediction line by line, with its
formula; on a Slurm site, the last lines say how ``hpml submit`` would send the study."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from hpml_core.contract import fit
from hpml_core.contract.gpus import GpuMemory
from hpml_core.contract.memory_model import Prediction, predict
from hpml_core.contract.models import GPT2_VOCAB
from hpml_core.contract.step_time import Performance, StepPrediction, predict_step
from hpml_core.contract.units import GIB
from jobs import cli, experiment, render, site
from jobs.disk_need import disk_need


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
    return (f"study: {total}: training steps only (setup, compilation and queueing not counted); speed "
            f"{performance.describe()}; step = compute + optimizer + the communication overlap leaves exposed "
            "(hpml_core.contract.step_time; --explain shows the parts)")


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
        lines += step_part_lines(step)
    return lines


def step_part_lines(step: StepPrediction) -> list[str]:
    """The predicted step part by part (those it predicts), with the communication overlap hides."""
    if step.parts_s is None:
        return []
    lines = []
    hidden = {k.kind: k for k in step.communication}
    for part, seconds in step.parts_s.items():
        if part in hidden:
            k = hidden[part]
            lines.append(f"    {part:<14} {seconds * 1e3:9.3f} ms exposed  ({k.seconds * 1e3:.3f} ms for "
                         f"{k.bytes_sent / 1e6:,.3g} MB sent, {k.hidden_s * 1e3:.3f} ms of it hidden by overlap)")
        elif seconds or part in ("forward", "backward", "optimizer"):
            lines.append(f"    {part:<14} {seconds * 1e3:9.3f} ms")
    lines.append(f"    {'step':<14} {step.step_s * 1e3:9.3f} ms  (data and host overhead not predicted)")
    return lines


def data_line(exp: experiment.Experiment) -> str:
    """What the runs were checked against: the prepared data, or an assumption, said so."""
    if exp.data is not None:
        return (f"data: {exp.data_folder}: {exp.data.num_tokens} tokens, vocabulary {exp.data.vocab_size} "
                "(checked: vocabulary, size)")
    return (f"data: not prepared at {exp.data_folder}: vocabulary assumed GPT-2's {GPT2_VOCAB}, "
            "data size not checked")


def plan(exp: experiment.Experiment, profile: site.Site, explain: bool) -> int:
    gpu = profile.gpu_memory()
    memory, speeds = judge_memory(exp, gpu), judge_speed(exp, profile)
    unit = hours_unit(profile)
    Console(width=180).print(plan_table(exp, gpu, memory, speeds, unit))
    if explain:
        print("\n".join(explain_lines(exp, memory, speeds)))
    print(gpu_line(gpu))
    print(study_hours_line(exp, speeds, profile.performance(), unit))
    if profile.scheduler == "slurm":
        print(arrays_line(exp, profile))
    print(disk_need(exp, profile).line())
    print(data_line(exp))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = cli.command_parser("plan", __doc__)
    cli.add_experiment(parser)
    cli.add_site(parser)
    parser.add_argument("--explain", action="store_true",
                        help="under the table, each run's predicted memory line by line, with its formula")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        profile, exp = cli.load_study(args, checked=True)
        return plan(exp, profile, args.explain)

    return cli.run("plan", body)
