"""``hpml render``: one sbatch script per run, from ``templates/job.sbatch.j2``.

The rendering is a pure function (``render_run``) of the experiment's run and the site
profile, pinned by golden-file tests. Jinja runs with StrictUndefined (a misspelt variable is
an error, not an empty string), and every value that reaches shell text passes through
``shquote``; values in ``#SBATCH`` lines were validated to plain characters by the site and
experiment loaders, since sbatch reads those lines without a shell.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from hpml_core.spec.atomic import atomic_write
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


def train_args(run: Run, data_dir: str, run_dir: str) -> list[str]:
    """The engine's command line for this run; --resume so a resubmitted job continues."""
    args = []
    for field, value in run.train.items():
        flag = "--" + field.replace("_", "-")
        if isinstance(value, bool):
            args += [flag] if value else []
        elif value is not None:
            args += [flag, str(value)]
    return [*args, "--data", data_dir, "--out", run_dir, "--resume"]


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
    run_dir = f"{expand_path(site.results_root)}/{experiment.name}/{run.name}"
    single_node = run.nodes == 1
    return _environment().get_template("job.sbatch.j2").render(
        experiment=experiment.name, run=run, site=site, run_dir=run_dir,
        project_dir=expand_path(site.project_dir),
        tasks_per_node=run.gpus if single_node else 1,
        stop_seconds=STOP_SECONDS,
        cpus_per_task=site.cpus_per_gpu * (1 if single_node else run.gpus),
        launcher=[*container_wrapper(site), expand_path(site.python)],
        train_args=train_args(run, f"{expand_path(site.data_root)}/{experiment.dataset}", run_dir),
    )


def render(experiment: Experiment, site: Site, results: Path) -> list[Path]:
    """Write results/<experiment>/<run>/job.sbatch for every run; all are rendered before any is written."""
    texts = {run.name: render_run(experiment, run, site) for run in experiment.runs}
    paths = []
    for name, text in texts.items():
        path = results / experiment.name / name / SCRIPT
        atomic_write(path, lambda f, text=text: f.write(text.encode()))
        paths.append(path)
    return paths
