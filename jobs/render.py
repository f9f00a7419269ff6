"""``hpml render``: one sbatch script and one run spec per run, from ``templates/job.sbatch.j2``.

The run's configuration reaches the engine as one file, ``<run>/run.json`` (``run_config``
builds it, ``hpml_core.spec.config.write_run_spec`` writes it), and the script starts the engine
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

import re
import shlex
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from hpml_core.spec.atomic import atomic_write
from hpml_core.spec.config import RUN_SPEC_FILE, TrainConfig, write_run_spec
from jobs.experiment import Experiment, Run
from jobs.site import Site, expand_path

# templates/ at the top of the repository, linked here so that it ships as package data of jobs.
TEMPLATES = Path(__file__).parent / "templates"
SCRIPT = "job.sbatch"
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


def job_run_dir(experiment: Experiment, run: Run, site: Site) -> str:
    """The run folder as the job sees it (from the site's project_dir)."""
    return f"{expand_path(site.results_root)}/{experiment.name}/{run.name}"


def run_config(experiment: Experiment, run: Run, site: Site) -> TrainConfig:
    """The run's spec: the experiment's training fields, the site's data, the run folder as
    the job sees it, and ``resume`` so that a resubmitted or requeued job continues."""
    return TrainConfig(**run.train, data=Path(f"{expand_path(site.data_root)}/{experiment.dataset}"),
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


def render_run(experiment: Experiment, run: Run, site: Site) -> str:
    run_dir = job_run_dir(experiment, run, site)
    single_node = run.nodes == 1
    return _environment().get_template("job.sbatch.j2").render(
        experiment=experiment.name, run=run, site=site, run_dir=run_dir,
        job_name=job_name(experiment.name, run.name),
        project_dir=expand_path(site.project_dir),
        tasks_per_node=run.gpus if single_node else 1,
        stop_seconds=STOP_SECONDS,
        cpus_per_task=site.cpus_per_gpu * (1 if single_node else run.gpus),
        launcher=[*container_wrapper(site), expand_path(site.python)],
        run_spec=f"{run_dir}/{RUN_SPEC_FILE}",
    )


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
