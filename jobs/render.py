"""``hpml render``: one sbatch script and one run spec per run, from ``templates/job.sbatch.j2``;
and the job arrays ``hpml submit`` sends, from the same template.

A study of hundreds of runs is not hundreds of ``sbatch`` calls: ``hpml submit`` groups the runs
it submits by resource shape (nodes, GPUs per node, time limit: everything the ``#SBATCH`` lines
of a run's script depend on) and sends each group as one job array (``--array=0-N%M``: at most
M tasks of it run at once). Task k of the array trains the k-th run listed in its script, which
writes its output to that run's folder as a run's own script does. ``hpml render`` writes each
run's script alone (no array), to read or to ``sbatch`` by hand.

The run's configuration reaches the engine as one file, ``<run>/run.json`` (``run_config``
builds it, ``hpml_core.contract.config.write_run_spec`` writes it), and the script starts the engine
with ``--config <run>/run.json``: no command line is encoded here and parsed again there. Paths
are the job's: the script changes directory to the site's project_dir, so the data and run
folders are written as the site profile gives them.

The rendering is a pure function (``render_run``) of the experiment's run and the site
profile, pinned by golden-file tests. Jinja runs with StrictUndefined (a misspelt variable is
an error, not an empty string), and every value that reaches shell text passes through
``shquote``; values in ``#SBATCH`` lines were validated to plain characters by the site and
experiment loaders, since sbatch reads those lines without a shell.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from hpml_core.contract.atomic import atomic_write
from hpml_core.contract.config import RUN_SPEC_FILE, TrainConfig, write_run_spec
from hpml_core.contract.errors import UsageError
from jobs import cli
from jobs.experiment import Experiment, Run
from jobs.site import Site, expand_path

# templates/ at the top of the repository, linked here so that it ships as package data of jobs.
TEMPLATES = Path(__file__).parent / "templates"
SCRIPT = "job.sbatch"
ARRAYS = "arrays"  # in the experiment's results folder: the submitted arrays' scripts and Slurm's output
# Slurm's default MaxArraySize is 1001 (task indices 0 to 1000): a larger group is split.
MAX_ARRAY_TASKS = 1000
# Time between the stop signal and the time limit: enough to save GPT-2 Large's checkpoint.
STOP_SECONDS = 180


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True,
                      autoescape=False)
    env.filters["shquote"] = lambda value: shlex.quote(str(value))
    return env


def job_name(experiment: str, run: str) -> str:
    """The Slurm job name of a run: how ``hpml submit`` finds the job an ``sbatch`` queued
    without answering (``slurm_query.find_jobs``), and how ``squeue --me --name`` finds it."""
    return f"hpml-{experiment}-{run}"


def job_results_dir(experiment: Experiment, site: Site) -> str:
    """The experiment's results folder as the job sees it (from the site's project_dir)."""
    return f"{expand_path(site.results_root)}/{experiment.name}"


def job_run_dir(experiment: Experiment, run: Run, site: Site) -> str:
    """The run folder as the job sees it (from the site's project_dir)."""
    return f"{job_results_dir(experiment, site)}/{run.name}"


def shape_label(run: Run) -> str:
    """The run's resource shape in words fit for a job name: "1x4-00h30m00s" (nodes x GPUs per
    node, time limit): runs of one shape can share a job array."""
    days, _, clock = run.time_limit.rpartition("-")
    hours, minutes, seconds = clock.split(":")
    return f"{run.nodes}x{run.gpus}-{days + 'd' if days else ''}{hours}h{minutes}m{seconds}s"


def array_job_name(experiment: str, label: str, number: int) -> str:
    """The job name of the experiment's ``number``-th array of a shape (``shape_label``): what
    finds the array again when its ``sbatch`` did not answer, and ``squeue --me --name``."""
    return f"hpml-{experiment}-{label}-{number}"


def group_by_shape(runs: list[Run]) -> list[list[Run]]:
    """The runs as the arrays that carry them: one per resource shape (in the order each shape
    first appears), split where one would exceed MAX_ARRAY_TASKS; runs keep their order."""
    shapes: dict[str, list[Run]] = {}
    for run in runs:
        shapes.setdefault(shape_label(run), []).append(run)
    return [group[start:start + MAX_ARRAY_TASKS] for group in shapes.values()
            for start in range(0, len(group), MAX_ARRAY_TASKS)]


def run_config(experiment: Experiment, run: Run, site: Site) -> TrainConfig:
    """The run's spec: the experiment's training fields, the site's data (and its number of
    checkpoints kept, where the experiment gives none), the run folder as the job sees it, and
    ``resume`` so that a resubmitted or requeued job continues."""
    return TrainConfig(**{"keep_checkpoints": site.keep_checkpoints, **run.train},
                       data=Path(f"{expand_path(site.data_root)}/{experiment.dataset}"),
                       out=Path(job_run_dir(experiment, run, site)), resume=True)


def container_wrapper(site: Site) -> list[str]:
    """The words that run a command inside the site's container (none without one)."""
    box = site.container
    if box.kind == "none":
        return []
    words = [box.kind, "exec", "--nv"]
    if box.overlay:
        words += ["--overlay", f"{expand_path(box.overlay)}:ro"]
    words.append(expand_path(box.image))
    if box.activate:  # source it, then run the command given as the remaining arguments
        words += ["bash", "-c", 'source "$0" && exec "$@"', expand_path(box.activate)]
    return words


def _render_job(experiment: Experiment, runs: list[Run], site: Site, array: str | None, name: str) -> str:
    run = runs[0]  # the shape's: every run of an array has the same nodes, GPUs and time limit
    single_node = run.nodes == 1
    return _environment().get_template("job.sbatch.j2").render(
        experiment=experiment.name, run=run, runs=runs, array=array, site=site,
        run_dir=job_run_dir(experiment, run, site), results_dir=job_results_dir(experiment, site),
        arrays_dir=f"{job_results_dir(experiment, site)}/{ARRAYS}",
        job_name=name,
        project_dir=expand_path(site.project_dir),
        tasks_per_node=run.gpus if single_node else 1,
        stop_seconds=STOP_SECONDS,
        cpus_per_task=site.cpus_per_gpu * (1 if single_node else run.gpus),
        launcher=[*container_wrapper(site), expand_path(site.python)],
        run_spec_file=RUN_SPEC_FILE,
    )


def render_run(experiment: Experiment, run: Run, site: Site) -> str:
    """One run's script, alone: what ``hpml render`` writes."""
    return _render_job(experiment, [run], site, None, job_name(experiment.name, run.name))


def render_array(experiment: Experiment, runs: list[Run], site: Site, max_concurrent: int | None,
                 number: int = 1) -> str:
    """The job array that trains ``runs`` (one shape; task k trains ``runs[k]``), at most
    ``max_concurrent`` tasks at once: what ``hpml submit`` sends, as the ``number``-th array of
    that shape (``<experiment>/arrays/<shape>-<number>.sbatch``)."""
    if not runs or len({shape_label(run) for run in runs}) != 1 or len(runs) > MAX_ARRAY_TASKS:
        raise ValueError("an array carries 1 to MAX_ARRAY_TASKS runs of one shape")
    array = f"0-{len(runs) - 1}" + (f"%{max_concurrent}" if max_concurrent else "")
    return _render_job(experiment, runs, site, array, array_job_name(experiment.name, shape_label(runs[0]), number))


JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")


def render_report(experiment: Experiment, site: Site, site_arg: str, overrides: list[str], after: list[str]) -> str:
    """The job that runs ``hpml report`` for the experiment once the jobs ``after`` have ended
    (``hpml submit --report``), with the same site profile (``site_arg``, ``overrides``)."""
    bad = [job for job in after if not JOB_ID.match(job)]
    if bad:
        raise ValueError(f"not a Slurm job id: {bad[0]!r}")
    return _environment().get_template("report.sbatch.j2").render(
        experiment=experiment.name, site=site, job_name=f"hpml-report-of-{experiment.name}",
        results_dir=f"{expand_path(site.results_root)}/{experiment.name}", after=after,
        project_dir=expand_path(site.project_dir), launcher=[*container_wrapper(site), expand_path(site.python)],
        experiment_file=str(experiment.path.resolve()), site_arg=site_arg, overrides=overrides,
    )


def render(experiment: Experiment, site: Site, results: Path) -> list[Path]:
    """Write results/<experiment>/<run>/job.sbatch and run.json for every run; all are rendered
    before any is written. Returns the scripts' paths."""
    rendered = {run.name: (render_run(experiment, run, site), run_config(experiment, run, site))
                for run in experiment.runs}
    paths = []
    for name, (text, config) in rendered.items():
        path = results / experiment.name / name / SCRIPT
        write_run_spec(path.parent / RUN_SPEC_FILE, config)
        atomic_write(path, lambda f, text=text: f.write(text.encode()))
        paths.append(path)
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = cli.command_parser("render", __doc__)
    cli.add_experiment(parser)
    cli.add_site(parser, required=True)
    parser.add_argument("--results", type=Path, default=Path("results"), help="where the scripts go")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        profile, exp = cli.load_study(args, checked=True)
        if profile.scheduler != "slurm":
            raise UsageError("--site", f"{args.site} runs without Slurm: it has no job scripts (use hpml submit)")
        paths = render(exp, profile, args.results)
        print(f"wrote {len(paths)} job scripts under {args.results / exp.name}/")
        return 0

    return cli.run("render", body)
