"""``hpml submit``: submit every run of an experiment that has not completed, and keep the ledger.

What is submitted follows each run's state (``jobs.observe``, in the words of
``hpml_core.contract.run_states``), decided just before: an active run (SUBMITTING, PENDING,
RUNNING) is never submitted again, not even with ``--force``; by default every run that is not
COMPLETED is; ``--only-failed`` narrows to the runs that ENDED_BADLY; ``--force`` takes every run
that is not active and starts it afresh: everything in its folder (attempts, checkpoints,
status, spec, logs) is first moved into ``<run>/previous-<n>/``, so nothing is resumed and
nothing is lost. ``--dry-run`` only says what would happen. Each run is claimed in the ledger
under its lock before it is started, so two ``hpml submit`` calls at once never start the same run.

A run predicted not to fit in the memory of the site's GPU (``hpml_core.contract.fit``) is
refused before anything is written or submitted, dry run or not: every chosen run is checked,
and the refusal names the first with its predicted and available GiB, and the others, so that
one round of fixes covers them all. ``--no-fit-check`` submits them all the same (a prediction
can be wrong; a run that does run out of memory ends OUT_OF_MEMORY).

A run whose last ``sbatch`` failed or timed out (SUBMIT_FAILED, which a hung or dead
``hpml submit`` also leaves) may have been queued all the same: before submitting it again,
Slurm is asked for this user's job of that run's name, submitted since that claim, and such a
job is adopted (recorded in the ledger) instead of submitting a second one.

Two backends, one engine command, ``python -m hpml_core.train --config <run>/run.json``: each
run's spec (``render.run_config``) is written into its folder before the run is started.
- a Slurm site: the runs are grouped by resource shape, and each group is one job array
  (``jobs.render``: task k trains the group's k-th run; at most ``--max-concurrent`` or the
  site's ``max_concurrent`` tasks at once), rendered from the template, checked by ``sbatch
  --test-only`` (all of them, before any is submitted), and submitted through submitit
  (``jobs.slurm``): one ``sbatch`` per shape, whatever the number of runs. A run's job is its
  task, ``<array job id>_<task>``, which status, cancel, requeue and ``--only-failed`` act on
  alone. Submitting returns at once; ``hpml status`` follows the jobs.
- ``--site local``: the runs execute here, one after another, from the site's project_dir (as a
  job would), each run's processes started by torchrun in a session of their own, output in
  ``<run>/local-<attempt>.out``. A run's state comes from its rank files, as for Slurm
  (torchrun reports an engine's exit status 3, out of memory, or 4, stopped, as 1).
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from hpml_core.contract import attempts, fit
from hpml_core.contract.atomic import atomic_write
from hpml_core.contract.config import RUN_SPEC_FILE, write_run_spec
from hpml_core.contract.data_meta import DataMeta
from hpml_core.contract.errors import UsageError
from hpml_core.contract.units import GIB
from hpml_core.contract.memory_model import predict
from hpml_core.contract.run_states import (ACTIVE, COMPLETED, ENDED_BADLY, FAILED, PENDING, RUNNING, SUBMIT_FAILED,
                                       SUBMITTING, from_slurm)
from jobs import ledger, observe, render, slurm, slurm_query
from jobs.experiment import Experiment, ExperimentError, Run
from jobs.site import Site, expand_path

PREVIOUS = re.compile(r"^previous-(\d+)$")
REPORT_SCRIPT = "report.sbatch"  # the --report job's script, in the experiment's results folder


def local_command(run: Run, run_spec: Path) -> list[str]:
    """The engine on this machine: one process, or torchrun starting one per "GPU"."""
    engine = ["-m", "hpml_core.train", "--config", str(run_spec)]
    if run.gpus == 1:
        return [sys.executable, *engine]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={run.gpus}", *engine]


def select(experiment: Experiment, states: dict[str, observe.RunState], only_failed: bool,
           force: bool) -> list[Run]:
    chosen = []
    for run in experiment.runs:
        state = states[run.name].state
        if state in ACTIVE:
            continue
        if force or (state in ENDED_BADLY if only_failed else state != COMPLETED):
            chosen.append(run)
    return chosen


def set_aside(run_dir: Path) -> Path | None:
    """Move everything in the run folder into ``<run>/previous-<n>/`` (n one more than the last
    one there), so that the run starts from step 0 and the old one is kept; None when the
    folder holds nothing to keep."""
    if not run_dir.is_dir():
        return None
    entries = list(run_dir.iterdir())
    kept = [path for path in entries if not PREVIOUS.match(path.name)]
    if not kept:
        return None
    numbers = [int(match.group(1)) for path in entries if (match := PREVIOUS.match(path.name))]
    target = run_dir / f"previous-{max(numbers, default=0) + 1}"
    target.mkdir()
    for path in kept:
        path.rename(target / path.name)
    return target


def _busy(seen: dict):
    """Whether a run's entry changed since its state was decided (``seen``): another submit took it."""
    def key(entry: dict) -> tuple:
        return entry.get("state"), entry.get("job_id"), entry.get("attempts", 0), entry.get("claimed_at")

    return lambda entry: key(entry) != key(seen)


def _claim(folder: Path, run: Run, seen: dict, submission: bool = True, **fields) -> int | None:
    """Claim the run unless, since its state was decided, another submit took it or it changed."""
    return ledger.claim(folder, run.name, _busy(seen), submission=submission, pid=os.getpid(),
                        host=socket.gethostname(), **fields)


def _job_history(entry: dict) -> list[str]:
    return list(entry.get("job_ids") or ([entry["job_id"]] if entry.get("job_id") else []))


def check_fit(experiment: Experiment, site: Site, runs: list[Run]) -> None:
    """Refuse (``ExperimentError``, naming the first run, its predicted GiB and the GPU's, and
    how many more) when a run is predicted not to fit on the site's GPU; say so when the site
    names no GPU to judge against."""
    gpu = site.gpu_memory()
    if gpu.total_bytes is None:
        if runs:
            print(f"memory fit not checked: {gpu.missing_reason}")
        return
    too_big = []
    for run in runs:
        resolved = experiment.resolved(run)
        prediction = predict(resolved.config, resolved.dims, resolved.layout)
        if not fit.fits(prediction, gpu):
            too_big.append((run, prediction.total_bytes))
    if too_big:
        (run, predicted), more = too_big[0], [other.name for other, _ in too_big[1:]]
        also = f" (so are {len(more)} more: {', '.join(more)})" if more else ""
        raise ExperimentError(f"run {run.name!r}", "memory",
                              f"predicted {predicted / GIB:.1f} GiB per GPU does not fit the {gpu.total_gib:.1f} "
                              f"GiB of site {site.name}'s {gpu.label}{also}; hpml plan --explain says why, "
                              f"--no-fit-check submits anyway")


def submit(experiment: Experiment, site: Site, only_failed: bool, force: bool, dry_run: bool,
           fit_check: bool = True, report: tuple[str, list[str]] | None = None,
           max_concurrent: int | None = None) -> int:
    """Submit (or, on a local site, run) every selected run; ``report``: the site argument and
    ``--set`` items to build the study's report with once its runs have ended (``--report``);
    ``max_concurrent``: at most that many tasks of each job array at once (else the site's
    ``max_concurrent``)."""
    if max_concurrent is not None and site.scheduler == "local":
        raise UsageError("--max-concurrent", f"{site.name} runs one run at a time on this machine; "
                         "--max-concurrent throttles the job arrays of a Slurm site")
    if site.scheduler == "local" and importlib.util.find_spec("torch") is None:  # a login-side install
        raise UsageError("--site", f"{site.name} runs the engine on this machine, which needs it installed: "
                         "pip install 'hpml[engine]' (or submit to a Slurm site)")
    folder = site.experiment_folder(experiment.name)
    ledger.check_site(folder, site.name, record=False)
    data = site.dataset_folder(experiment.dataset)
    if not DataMeta.exists(data):
        raise UsageError("dataset", f"{data} holds no prepared data (no meta.json): prepare it first, "
                         f"`hpml data prepare ... --site {site.name} --dataset {experiment.dataset}` (README, Data)")
    if site.scheduler == "local":
        multi_node = [run.name for run in experiment.runs if run.nodes > 1]
        if multi_node:
            raise ExperimentError(f"run {multi_node[0]!r}", "nodes", "--site local runs on this one machine (nodes: 1)")
    states = observe.refresh(experiment.world_sizes, folder)
    runs = select(experiment, states, only_failed, force)
    if fit_check:
        check_fit(experiment, site, runs)
    active = sum(found.active for found in states.values())
    print(f"{experiment.name}: {len(runs)} to run, {len(experiment.runs) - len(runs) - active} skipped"
          f"{' (completed)' if not only_failed else ' (not failed)'}, {active} pending or running"
          f"{' [dry run]' if dry_run else ''}")
    if site.scheduler == "local":
        status = _run_locally(experiment, site, folder, runs, states, force, dry_run)
        if report and not dry_run:  # the runs have ended: the report, as `hpml report` would make it
            command = [sys.executable, "-m", "analysis.report", str(experiment.path), "--site", report[0],
                       *(word for item in report[1] for word in ("--set", item))]
            status = max(status, subprocess.run(command).returncode)
        return status
    status = _submit_to_slurm(experiment, site, folder, runs, states, force, dry_run,
                              max_concurrent or site.max_concurrent)
    if report and status == 0:
        _submit_report(experiment, site, folder, *report, dry_run=dry_run)
    return status


def _submit_report(experiment: Experiment, site: Site, folder: Path, site_arg: str, overrides: list[str],
                   dry_run: bool) -> None:
    """A small CPU job that runs `hpml report` once every pending or running job of the study
    has ended, whatever its state (``--dependency=afterany``)."""
    entries = ledger.read(folder) if not dry_run else {}
    after = sorted({str(entry["job_id"]).split("_")[0] for entry in entries.values()  # whole arrays
                    if entry.get("backend") == "slurm" and entry.get("job_id")
                    and entry.get("state") in (PENDING, RUNNING)}, key=lambda job: (len(job), job))
    if dry_run:
        print("  would submit the report job, to run after the study's pending and running jobs")
        return
    script = render.render_report(experiment, site, site_arg, overrides, after)
    atomic_write(folder / REPORT_SCRIPT, lambda f: f.write(script.encode()))
    job_id = slurm.submit(script, folder / "submitit", 1, timeout_s=site.submit_timeout_s)
    print(f"report: job {job_id}, after job(s) {','.join(after) or '(none)'} end: {folder}/report/ "
          f"({folder / REPORT_SCRIPT})")


def queued_after_all(experiment: Experiment, run: Run, entry: dict) -> slurm_query.JobInfo | None:
    """The job Slurm queued for a submission whose sbatch failed or timed out: this user's newest
    job of the run's job name (its array's), submitted since that claim, that the ledger does not
    know yet; in an array, the task the run was given."""
    claimed = entry.get("claimed_at")
    since = datetime.fromisoformat(claimed) if claimed else None
    known = set(_job_history(entry))
    task = entry.get("array_task")
    found = slurm_query.find_jobs(entry.get("job_name") or render.job_name(experiment.name, run.name), since=since)
    return next((job for job in found if job.job_id not in known
                 and (task is None or job.job_id.endswith(f"_{task}"))), None)


def _new_array_script(folder: Path, label: str) -> tuple[Path, int]:
    """A new, empty ``<experiment>/arrays/<shape>-<n>.sbatch`` and its n, the first number no
    earlier submission took (created with O_EXCL: two hpml submit at once never share one, nor
    the job name that n gives the array)."""
    arrays = folder / render.ARRAYS
    arrays.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        path = arrays / f"{label}-{number}.sbatch"
        try:
            path.open("x").close()
            return path, number
        except FileExistsError:
            number += 1


def _submit_to_slurm(experiment: Experiment, site: Site, folder: Path, runs: list[Run],
                     states: dict[str, observe.RunState], force: bool, dry_run: bool,
                     max_concurrent: int | None) -> int:
    slurm.require_slurm(site.name)
    adopted = {run.name: job for run in runs if states[run.name].state == SUBMIT_FAILED
               and (job := queued_after_all(experiment, run, states[run.name].entry)) is not None}
    groups = render.group_by_shape([run for run in runs if run.name not in adopted])
    for group in groups:  # Slurm checks every array (partition, account, GPUs, time) before any is submitted
        slurm.test_only(render.render_array(experiment, group, site, max_concurrent),
                        f"run {group[0].name!r}" + (f" (and {len(group) - 1} more of its shape)" if len(group) > 1
                                                    else ""), timeout_s=site.submit_timeout_s)
    at_once = f", at most {max_concurrent} at once" if max_concurrent else ""
    if dry_run:
        for name, job in adopted.items():
            print(f"  would adopt {name}: job {job.job_id} ({job.state}), queued although its sbatch failed")
        for group in groups:
            shape = group[0]
            print(f"  would submit one array of {len(group)} run(s), {shape.nodes} node(s) x {shape.gpus} GPUs, "
                  f"{shape.time_limit}{at_once}: {', '.join(run.name for run in group)}"
                  + (" (each from step 0, its folder kept in previous-<n>/)" if force else ""))
        return 0
    if runs:  # every script passed Slurm's check: from here on the folder is this site's
        ledger.check_site(folder, site.name, record=True)
    for run in runs:
        if run.name in adopted:
            _adopt(folder, run, adopted[run.name], states[run.name].entry)
    count, total = 0, sum(map(len, groups))
    for group in groups:
        claimed = ledger.claim_many(
            folder, {run.name: _busy(states[run.name].entry) for run in group}, backend="slurm", state=SUBMITTING,
            why="", job_id=None, pid=os.getpid(), host=socket.gethostname())
        for run in group:
            if run.name not in claimed:
                count += 1
                print(f"[{count}/{total}] {run.name}: submitted meanwhile by another hpml submit, skipped")
        group = [run for run in group if run.name in claimed]
        if not group:
            continue
        label = render.shape_label(group[0])
        script, number = _new_array_script(folder, label)
        text = render.render_array(experiment, group, site, max_concurrent, number)
        atomic_write(script, lambda f: f.write(text.encode()))
        name, kept, recorded = render.array_job_name(experiment.name, label, number), {}, {}
        for task, run in enumerate(group):
            run_dir = folder / run.name
            first = 1 if force else attempts.next_attempt(run_dir)
            kept[run.name] = set_aside(run_dir) if force else None
            write_run_spec(run_dir / RUN_SPEC_FILE, render.run_config(experiment, run, site))
            recorded[run.name] = {"first_attempt": first, "job_name": name, "array_task": task,
                                  "script": str(script)}
        ledger.update_many(folder, recorded)  # before sbatch: a lost answer is then found by name and task
        try:
            array_id = slurm.submit(text, folder / render.ARRAYS / "submitit", group[0].world_size,
                                    timeout_s=site.submit_timeout_s)
        except slurm_query.SlurmError as exc:  # a timeout included: the array may be queued all the same
            ledger.update_many(folder, {run.name: {"state": SUBMIT_FAILED, "why": str(exc)} for run in group})
            print(f"{', '.join(run.name for run in group)}: {exc}; nothing more submitted", file=sys.stderr)
            return 1
        ledger.update_many(folder, {
            run.name: {"state": PENDING, "why": "", "job_id": f"{array_id}_{task}",
                       "job_ids": [*_job_history(states[run.name].entry), f"{array_id}_{task}"],
                       "log": str(folder / run.name / f"slurm-{array_id}_{task}.out")}
            for task, run in enumerate(group)})
        print(f"array {name}: job {array_id}, {len(group)} run(s) of {group[0].nodes} x {group[0].gpus}, "
              f"{group[0].time_limit}{at_once} ({script})")
        for task, run in enumerate(group):
            count += 1
            print(f"[{count}/{total}] {run.name}: job {array_id}_{task}"
                  + (f"; the previous run kept in {kept[run.name]}" if kept[run.name] else ""))
    if runs:
        print(f"follow: hpml status {experiment.name} --site {site.name} [--watch 30]; "
              f"results: {folder}/<run>/{attempts.ATTEMPTS}/<n>/rank-<k>.json")
    return 0


def _adopt(folder: Path, run: Run, job: slurm_query.JobInfo, seen: dict) -> None:
    if _claim(folder, run, seen, submission=False, state=from_slurm(job.state),
              why=f"adopted job {job.job_id}, queued although its sbatch failed ({seen.get('why') or 'no answer'})",
              job_id=job.job_id, job_ids=[*_job_history(seen), job.job_id],
              log=str(folder / run.name / f"slurm-{job.job_id}.out")) is None:
        print(f"{run.name}: taken meanwhile by another hpml submit, skipped")
        return
    print(f"{run.name}: adopted job {job.job_id} ({job.state}): Slurm had queued it although its sbatch failed")


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:  # nothing left in it
        pass


def run_processes(command: list[str], cwd: str, log: Path) -> tuple[int, int | None]:
    """Run a local run's processes to their end, leaving none behind; returns the launcher's
    exit status and the signal that interrupted ``hpml submit``, if one did.

    They run in a session of their own: when the launcher exits, whatever is left there (a
    worker blocked in a collective with a killed peer) is killed. The session also keeps a
    terminal's Ctrl-C from reaching the workers behind our back: SIGINT and SIGTERM to ``hpml
    submit`` are passed on to the session as SIGTERM, which the engine answers by saving a
    checkpoint and stopping (STOPPED: the next ``hpml submit`` resumes it); so is SIGHUP."""
    received: list[int] = []
    with open(log, "x") as out:  # a new file: an earlier submission's log is never overwritten
        proc = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        def forward(signum, _frame) -> None:
            received.append(signum)
            _signal_group(proc.pid, signal.SIGTERM)

        # SIGHUP too: a dropped login session must stop the run at a checkpoint, not leave it
        # training on unseen while the ledger calls it INTERRUPTED and a new hpml submit restarts it.
        stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        handled = stops if threading.current_thread() is threading.main_thread() else ()
        previous = {signum: signal.signal(signum, forward) for signum in handled}
        try:
            code = proc.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            _signal_group(proc.pid, signal.SIGKILL)
    return code, (received[0] if received else None)


def free_log(run_dir: Path, attempt: int) -> Path:
    """``<run>/local-<n>.out`` for the first n from ``attempt`` that no earlier submission used
    (one whose engine stopped before it made an attempt folder leaves a log under that number)."""
    n = attempt
    while (run_dir / f"local-{n}.out").exists():
        n += 1
    return run_dir / f"local-{n}.out"


def _exit_words(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


def _run_locally(experiment: Experiment, site: Site, folder: Path, runs: list[Run],
                 states: dict[str, observe.RunState], force: bool, dry_run: bool) -> int:
    project_dir = expand_path(site.project_dir)  # where a job starts: the run spec's paths are relative to it
    if dry_run:
        for run in runs:
            print(f"  would run {run.name}: {' '.join(local_command(run, folder / run.name / RUN_SPEC_FILE))}"
                  + (" (from step 0, its folder kept in previous-<n>/)" if force else ""))
        return 0
    if runs:  # from here on the folder is this site's
        ledger.check_site(folder, site.name, record=True)
    failures = 0
    for index, run in enumerate(runs, 1):
        run_dir = folder / run.name
        run_spec = (run_dir / RUN_SPEC_FILE).absolute()
        first = 1 if force else attempts.next_attempt(run_dir)
        if _claim(folder, run, states[run.name].entry, backend="local", state=RUNNING, why="", job_id=None,
                  first_attempt=first, exit_code=None) is None:
            print(f"[{index}/{len(runs)}] {run.name}: started meanwhile by another hpml submit, skipped")
            continue
        kept = set_aside(run_dir) if force else None
        run_dir.mkdir(parents=True, exist_ok=True)
        log = free_log(run_dir, first)
        write_run_spec(run_spec, render.run_config(experiment, run, site))
        ledger.update(folder, run.name, log=str(log))
        print(f"[{index}/{len(runs)}] {run.name}: {run.nodes} x {run.gpus} processes"
              + (f" (the previous run kept in {kept})" if kept else "") + " ...", end="", flush=True)
        started = time.perf_counter()
        code, interrupted = run_processes(local_command(run, run_spec), project_dir, log)
        ended = (COMPLETED if code == 0 else FAILED, _exit_words(code))
        state, why = observe.judge(ledger.read(folder)[run.name], run_dir, run.world_size, ended=ended)
        ledger.update(folder, run.name, state=state, why=why, exit_code=code)
        print(f" {state} in {time.perf_counter() - started:.0f} s"
              + ("" if state == COMPLETED else f" ({why}; log: {log})"))
        failures += state != COMPLETED
        if interrupted:
            print(f"{signal.Signals(interrupted).name}: the runs after {run.name} were not started", file=sys.stderr)
            return 1
    print(f"results: {folder}/<run>/{attempts.ATTEMPTS}/<n>/rank-<k>.json; ledger: {folder / ledger.LEDGER}")
    return 1 if failures else 0
