"""``hpml doctor --site SITE [--smoke]``: whether a site works, before a study's worth of jobs
finds out at start-up. One line per check, ``ok``, ``warn`` (works, with a caveat), ``skip``
(not for this site) or ``FAIL`` with how to fix it; exit status 1 when any check failed.

The checks, in order: Slurm answers (``sbatch``, ``squeue``, ``sacct``, each under a timeout);
the profile's account and partition exist (``sacctmgr``, ``sinfo``); the container runtime,
image and overlay exist; the job environment's Python (inside the container, from
``project_dir``) imports torch (a CUDA build where the site has GPUs), deepspeed and hpml; a
dataset is prepared under ``data_root``; ``results_root`` is writable; with ``--experiment``, the
study's kept checkpoints fit its free space (``jobs.disk_need``: warn when not). ``--smoke`` then submits
one tiny 1-GPU run through the real job template (``hpml submit`` of a one-run experiment in
``results_root/hpml-doctor-<time>``) and waits for its rank file; it is skipped while another
check fails, since it would fail for the same reason.
"""

from __future__ import annotations

import argparse
import getpass
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from hpml_core.contract.data_meta import DataMeta
from hpml_core.contract.run_states import COMPLETED
from jobs import cli, experiment, observe, render, slurm_query
from jobs.disk_need import disk_need
from jobs.site import Site, expand_path

PYTHON_TIMEOUT_S = 180  # a container's first start can be slow
SMOKE_TIMEOUT_S = 600
IMPORTS = ("import torch, deepspeed, hpml_core.train; "
           "print(torch.__version__, torch.version.cuda or 'cpu-only', deepspeed.__version__)")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, warn, skip or FAIL
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}"


def _ask(command: list[str], timeout_s: float = slurm_query.QUERY_TIMEOUT_S) -> tuple[bool, str]:
    """(answered without error, its output or error) of a read-only command."""
    try:
        return True, slurm_query.run(command, timeout_s=timeout_s).strip()
    except slurm_query.SlurmError as exc:
        return False, str(exc)


def slurm_checks(site: Site) -> list[Check]:
    if site.scheduler != "slurm":
        return [Check("slurm", "skip", f"site {site.name} runs jobs on this machine, without Slurm")]
    found = []
    for command, name in ((["sbatch", "--version"], "sbatch"), (["squeue", "--me", "--noheader"], "squeue")):
        answered, said = _ask(command)
        found.append(Check(name, "ok" if answered else "FAIL",
                           said.splitlines()[0] if answered and said else "answers" if answered else
                           f"{said}: run hpml on the cluster's login node (module load slurm, if it is a module)"))
    answered, said = _ask(["sacct", "-X", "--noheader", "--starttime", "now"])
    found.append(Check("sacct", "ok" if answered else "warn", "accounting answers" if answered else
                       f"{said}: without accounting hpml asks squeue, which forgets finished jobs"))
    user = getpass.getuser()
    if site.account:
        answered, said = _ask(["sacctmgr", "--noheader", "--parsable2", "show", "assoc", f"user={user}",
                               f"account={site.account}", "format=account"])
        found.append(Check("account", "ok" if answered and said else "warn" if not answered else "FAIL",
                           f"{site.account}: yours" if answered and said else
                           f"cannot ask sacctmgr ({said})" if not answered else
                           f"{user} has no association with account {site.account}: set account (`sacctmgr show "
                           f"assoc user={user}` lists yours), e.g. --set account=NAME or in your profile"))
    if site.partition:
        answered, said = _ask(["sinfo", "--noheader", "--partition", site.partition, "--format=%P"])
        found.append(Check("partition", "ok" if answered and said else "FAIL",
                           f"{site.partition}: exists" if answered and said else
                           f"no partition {site.partition} ({said or 'sinfo lists none'}): `sinfo -s` lists them"))
    return found


def container_check(site: Site) -> Check:
    box = site.container
    if box.kind == "none":
        return Check("container", "skip", "none: jobs run the site's python directly")
    if shutil.which(box.kind) is None:
        return Check("container", "FAIL", f"{box.kind} is not on PATH: `module load {box.kind}`, or set "
                                          "container.kind to the runtime the cluster has")
    for what, value in (("image", box.image), ("overlay", box.overlay)):
        if value and not Path(expand_path(value)).exists():
            return Check("container", "FAIL", f"no {what} {expand_path(value)}: build it as docs/cluster.md's 'The job "
                                              f"environment' says, or set container.{what}")
    return Check("container", "ok", f"{box.kind}, {expand_path(box.image)}"
                                    + (f" with {expand_path(box.overlay)}" if box.overlay else ""))


def python_check(site: Site) -> Check:
    """The engine's imports, in the environment a job runs them in."""
    python = sys.executable if site.scheduler == "local" else expand_path(site.python)
    command = [*render.container_wrapper(site), python, "-c", IMPORTS]
    try:
        done = subprocess.run(command, cwd=expand_path(site.project_dir), capture_output=True, text=True,
                              timeout=PYTHON_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("python", "FAIL", f"{' '.join(command[:3])}...: {exc}")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("python", "FAIL", f"{last}: install the engine where jobs run it (pip install '.[engine]' in "
                                       "the job environment, docs/cluster.md's 'The job environment')")
    torch_version, cuda, deepspeed_version = done.stdout.split()[-3:]
    if site.gpu() is not None and cuda == "cpu-only":
        return Check("python", "FAIL", f"torch {torch_version} is a CPU build, and {site.name}'s jobs get GPUs: "
                                       "install a CUDA build of torch in the job environment")
    build = "a CPU build" if cuda == "cpu-only" else f"CUDA {cuda}"
    return Check("python", "ok", f"torch {torch_version} ({build}), deepspeed {deepspeed_version}, hpml from "
                                 f"{expand_path(site.project_dir)}")


def data_check(site: Site, dataset: str | None) -> tuple[Check, str | None]:
    """The check, and the dataset a smoke run can train on."""
    folder = site.data_folder()
    prepared = sorted(p.name for p in folder.iterdir() if DataMeta.exists(p)) if folder.is_dir() else []
    if dataset is not None:
        ok = dataset in prepared
        return Check("data", "ok" if ok else "FAIL", f"{folder / dataset}: prepared" if ok else
                     f"{folder / dataset} holds no prepared data: `hpml data prepare ... --site {site.name} "
                     f"--dataset {dataset}`"), dataset if ok else None
    if not prepared:
        return Check("data", "FAIL", f"nothing prepared under {folder}: `hpml data prepare ... --site {site.name} "
                                     "--dataset NAME` (docs/cluster.md#data)"), None
    return Check("data", "ok", f"{folder}: {', '.join(prepared)}"), prepared[0]


def results_check(site: Site) -> Check:
    folder = Path(expand_path(site.project_dir)) / expand_path(site.results_root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".hpml-doctor-"):
            pass
    except OSError as exc:
        return Check("results", "FAIL", f"{folder} is not writable ({exc.strerror}): set results_root")
    return Check("results", "ok", f"{folder}: writable")


def smoke(site: Site, dataset: str) -> Check:
    """One tiny run through ``hpml submit`` and the real template; waits for its rank file."""
    from jobs import backend, submit  # Slurm's side (submitit): only for the smoke run

    name = f"hpml-doctor-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    spec = {"name": name, "dataset": dataset, "defaults": {"model": "tiny", "seq_len": 64, "precision": "fp32",
                                                           "steps": 4, "warmup_steps": 1, "time_limit": "00:10:00"},
            "runs": [{"name": "smoke", "mode": "single", "gpus": 1, "batch_size": 2}]}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        exp = experiment.load(path, site.data_folder(), site.gpu_memory())
        if submit.submit(exp, site, only_failed=False, force=False, dry_run=False) != 0:
            return Check("smoke", "FAIL", "hpml submit of the smoke run failed (its output above)")
    folder = site.experiment_folder(name)
    deadline = time.monotonic() + SMOKE_TIMEOUT_S
    while True:
        state = observe.refresh({"smoke": 1}, folder, query=backend.for_site(site).query)[0]["smoke"]
        if not state.active or time.monotonic() > deadline:
            break
        time.sleep(2)
    if state.state != COMPLETED:
        return Check("smoke", "FAIL", f"the smoke run is {state.state}: {state.reason} (its files: {folder}/smoke)")
    return Check("smoke", "ok", f"a tiny run completed through the job template: {folder}/smoke")


def disk_check(site: Site, exp: experiment.Experiment) -> Check:
    """Whether the study's kept checkpoints fit the results folder's free space (``jobs.disk_need``)."""
    need = disk_need(site=site, exp=exp)
    detail = f"{exp.name}: " + need.line().removeprefix("disk: ")
    return Check("disk", "warn" if need.fits is False or need.free is None else "ok", detail)


def doctor(site: Site, run_smoke: bool, dataset: str | None, study: experiment.Experiment | None = None) -> int:
    box = container_check(site)
    python = python_check(site) if box.status != "FAIL" else Check("python", "skip", "the container check failed")
    checks = [*slurm_checks(site), box, python]
    data, usable = data_check(site, dataset)
    checks += [data, results_check(site)]
    if study is not None:
        checks.append(disk_check(site, study))
    for check in checks:
        print(check.line(), flush=True)
    failed = any(check.status == "FAIL" for check in checks)
    if run_smoke:
        final = (Check("smoke", "skip", "fix the failures above first") if failed
                 else smoke(site, usable))
        print(final.line(), flush=True)
        failed = failed or final.status == "FAIL"
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = cli.command_parser("doctor", __doc__)
    cli.add_site(parser)
    parser.add_argument("--smoke", action="store_true", help="submit one tiny 1-GPU run and wait for its rank file")
    parser.add_argument("--dataset", help="the prepared dataset to check (and train the smoke run on)")
    parser.add_argument("--experiment", help="a study to check the results disk for: whether its kept checkpoints "
                                             "fit the free space (an experiment file or name)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        profile = cli.load_site(args)
        study = (experiment.load(experiment.experiment_path(args.experiment), profile.data_folder(), profile.gpu_memory())
                 if args.experiment else None)
        return doctor(profile, args.smoke, args.dataset, study)

    return cli.run("doctor", body)
