"""``hpml submit``: submit every run of an experiment that has not completed, and keep the ledger.

Idempotent: a run whose rank files all say completed is skipped, and a run whose Slurm job is
pending or running (or that another ``hpml submit`` is starting right now) is never submitted
twice, not even with ``--force``. So submitting again after failures submits only what did not
finish; ``--only-failed`` narrows to runs that ended badly, ``--force`` submits completed runs
again, ``--dry-run`` only says what would be submitted. Each run is claimed in the ledger under
its lock before it is started, so two ``hpml submit`` calls at once never start the same run.

Two backends, one engine command, ``python -m hpml_core.train --config <run>/run.json``: each
run's spec (``render.run_config``) is written into its folder before the run is started.
- a Slurm site: each run's script is rendered from the template, checked by
  ``sbatch --test-only`` (all of them, before any is submitted), and submitted through submitit
  (``jobs.slurm``). Submitting returns at once; ``hpml status`` follows the jobs.
- ``--site local``: the runs execute here, one after another, from the site's project_dir (as a
  job would), each run's processes started by torchrun, output in ``<run>/local-<attempt>.out``.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from hpml_core.spec.atomic import atomic_write
from hpml_core.spec.config import RUN_SPEC_FILE, write_run_spec
from hpml_core.spec.data_meta import DataMeta
from hpml_core.spec.errors import EXIT_OOM, EXIT_STOPPED, UsageError
from jobs import ledger, render, slurm
from jobs.experiment import Experiment, ExperimentError, Run
from jobs.run_state import BAD_ENDINGS, busy, refresh, run_outcome
from jobs.site import Site, expand_path


def local_command(run: Run, run_spec: Path) -> list[str]:
    """The engine on this machine: one process, or torchrun starting one per "GPU"."""
    engine = ["-m", "hpml_core.train", "--config", str(run_spec)]
    if run.gpus == 1:
        return [sys.executable, *engine]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={run.gpus}", *engine]


def select(experiment: Experiment, folder: Path, entries: dict, only_failed: bool, force: bool) -> list[Run]:
    chosen = []
    for run in experiment.runs:
        entry = entries.get(run.name, {})
        if busy(entry):
            continue
        if force:
            chosen.append(run)
        elif only_failed:
            if entry.get("state") in BAD_ENDINGS:
                chosen.append(run)
        elif run_outcome(folder / run.name, run.world_size) != "COMPLETED":
            chosen.append(run)
    return chosen


def _claim(folder: Path, run: Run, entries: dict, **fields) -> int | None:
    """Claim the run unless, since we read the ledger, it became busy or another submit took it."""
    seen = entries.get(run.name, {}).get("attempts", 0)
    return ledger.claim(folder, run.name, lambda entry: busy(entry) or entry.get("attempts", 0) != seen,
                        pid=os.getpid(), host=socket.gethostname(), **fields)


def submit(experiment: Experiment, site: Site, only_failed: bool, force: bool, dry_run: bool) -> int:
    if site.scheduler == "local" and importlib.util.find_spec("torch") is None:  # a login-side install
        raise UsageError("--site", f"{site.name} runs the engine on this machine, which needs it installed: "
                         "pip install 'hpml[engine]' (or submit to a Slurm site)")
    folder = site.experiment_folder(experiment.name)
    data = site.dataset_folder(experiment.dataset)
    if not DataMeta.exists(data):
        raise UsageError("dataset", f"{data} holds no prepared data (no meta.json): prepare it first, "
                         f"`hpml data prepare ... --out {data}` (README, Data)")
    if site.scheduler == "local":
        multi_node = [run.name for run in experiment.runs if run.nodes > 1]
        if multi_node:
            raise ExperimentError(f"run {multi_node[0]!r}", "nodes", "--site local runs on this one machine (nodes: 1)")
    entries = refresh(experiment, folder)
    runs = select(experiment, folder, entries, only_failed, force)
    active = sum(busy(entries.get(run.name, {})) for run in experiment.runs)
    print(f"{experiment.name}: {len(runs)} to run, {len(experiment.runs) - len(runs) - active} skipped"
          f"{' (completed)' if not only_failed else ' (not failed)'}, {active} pending or running"
          f"{' [dry run]' if dry_run else ''}")
    if site.scheduler == "local":
        return _run_locally(experiment, site, folder, runs, entries, dry_run)
    return _submit_to_slurm(experiment, site, folder, runs, entries, dry_run)


def _submit_to_slurm(experiment: Experiment, site: Site, folder: Path, runs: list[Run], entries: dict,
                     dry_run: bool) -> int:
    slurm.require_slurm(site.name)
    scripts = {run.name: render.render_run(experiment, run, site) for run in runs}
    for run in runs:  # Slurm checks every script (partition, account, GPUs, time) before any is submitted
        slurm.test_only(scripts[run.name], f"run {run.name!r}")
    if dry_run:
        for run in runs:
            print(f"  would submit {run.name}: {run.nodes} node(s) x {run.gpus} GPUs, {run.time_limit}")
        return 0
    for index, run in enumerate(runs, 1):
        run_dir = folder / run.name
        attempt = _claim(folder, run, entries, backend="slurm", state="SUBMITTING", job_id=None,
                         submitted_at=datetime.now(timezone.utc).isoformat())
        if attempt is None:
            print(f"[{index}/{len(runs)}] {run.name}: submitted meanwhile by another hpml submit, skipped")
            continue
        script = run_dir / render.SCRIPT
        write_run_spec(run_dir / RUN_SPEC_FILE, render.run_config(experiment, run, site))
        atomic_write(script, lambda f, text=scripts[run.name]: f.write(text.encode()))
        try:
            job_id = slurm.submit(scripts[run.name], run_dir / "submitit", run.world_size)
        except slurm.SlurmError as exc:
            ledger.update(folder, run.name, state="SUBMIT_FAILED", error=str(exc))
            print(f"[{index}/{len(runs)}] {run.name}: {exc}; nothing more submitted", file=sys.stderr)
            return 1
        ledger.update(folder, run.name, state="PENDING", job_id=job_id, script=str(script),
                      log=str(run_dir / f"slurm-{job_id}.out"))
        print(f"[{index}/{len(runs)}] {run.name}: job {job_id} ({run.nodes} x {run.gpus}, {script})")
    if runs:
        print(f"follow: hpml status {experiment.name} --site {site.name} [--watch 30]; "
              f"results: {folder}/<run>/rank-<k>.json")
    return 0


def _run_locally(experiment: Experiment, site: Site, folder: Path, runs: list[Run], entries: dict,
                 dry_run: bool) -> int:
    project_dir = expand_path(site.project_dir)  # where a job starts: the run spec's paths are relative to it
    if dry_run:
        for run in runs:
            print(f"  would run {run.name}: {' '.join(local_command(run, folder / run.name / RUN_SPEC_FILE))}")
        return 0
    failures = 0
    for index, run in enumerate(runs, 1):
        run_dir = folder / run.name
        run_spec = (run_dir / RUN_SPEC_FILE).absolute()
        attempt = _claim(folder, run, entries, backend="local", state="RUNNING", job_id=None,
                         started_at=datetime.now(timezone.utc).isoformat())
        if attempt is None:
            print(f"[{index}/{len(runs)}] {run.name}: started meanwhile by another hpml submit, skipped")
            continue
        log = run_dir / f"local-{attempt}.out"
        write_run_spec(run_spec, render.run_config(experiment, run, site))
        ledger.update(folder, run.name, log=str(log))
        print(f"[{index}/{len(runs)}] {run.name}: {run.nodes} x {run.gpus} processes ...", end="", flush=True)
        started = time.perf_counter()
        with open(log, "w") as out:
            code = subprocess.run(local_command(run, run_spec), cwd=project_dir, stdout=out,
                                  stderr=subprocess.STDOUT).returncode
        state = run_outcome(run_dir, run.world_size) if code in (0, EXIT_OOM, EXIT_STOPPED) else "FAILED"
        ledger.update(folder, run.name, state=state, exit_code=code)
        print(f" {state} in {time.perf_counter() - started:.0f} s" + ("" if state == "COMPLETED" else f" (log: {log})"))
        failures += state != "COMPLETED"
    print(f"results: {folder}/<run>/rank-<k>.json; ledger: {folder / ledger.LEDGER}")
    return 1 if failures else 0
