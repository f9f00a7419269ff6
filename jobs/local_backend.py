"""The backend of a site without a scheduler (``--site local``): the runs execute here.

One after another, from the site's project_dir (as a job would), each run's processes forked
from a warm process that imported torch once for the whole submission (``jobs/rank_servers.py``;
its launcher does torchrun's part), a client standing for them in a session of its own, output
in ``<run>/local-<attempt>.out``. A run's state comes from its rank files, as for Slurm. Its
``hpml submit`` is its job: there is nothing to cancel but that process, and no scheduler to
ask how a job stands.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from hpml_core.contract import attempts
from hpml_core.contract.config import RUN_SPEC_FILE, ZERO_STAGES
from hpml_core.contract.errors import UsageError
from hpml_core.contract.run_states import COMPLETED, FAILED, RUNNING
from jobs import ledger, observe
from jobs.experiment import Experiment, ExperimentError, Run
from jobs.rank_servers import RankServerError, RankServers
from jobs.site import Site, expand_path
from jobs.slurm_query import JobInfo, SlurmError
from jobs.submission import Submission, claim


class LocalBackend:
    """This machine's processes, one run at a time."""

    def __init__(self, site: Site):
        self.site = site

    def refuse(self, experiment: Experiment, max_concurrent: int | None) -> None:
        name = self.site.name
        if max_concurrent is not None:
            raise UsageError("--max-concurrent", f"{name} runs one run at a time on this machine; "
                             "--max-concurrent throttles the job arrays of a Slurm site")
        if importlib.util.find_spec("torch") is None:  # a login-side install
            raise UsageError("--site", f"{name} runs the engine on this machine, which needs it installed: "
                             "pip install 'hpml[engine]' (or submit to a Slurm site)")
        multi_node = [run.name for run in experiment.runs if run.nodes > 1]
        if multi_node:
            raise ExperimentError(f"run {multi_node[0]!r}", "nodes", "--site local runs on this one machine (nodes: 1)")

    def submit(self, submission: Submission) -> int:
        status = _run_all(submission)
        if submission.report and not submission.dry_run:  # the runs have ended: the report, as `hpml report` makes it
            site_arg, overrides = submission.report
            command = [sys.executable, "-m", "analysis.report", str(submission.experiment.path), "--site", site_arg,
                       *(word for item in overrides for word in ("--set", item))]
            status = max(status, subprocess.run(command).returncode)
        return status

    def cancel(self, job_ids: list[str]) -> None:
        raise UsageError("--site", f"{self.site.name} runs without Slurm: its runs belong to the `hpml submit` that "
                         "runs them (stop it with Ctrl-C); cancel is for Slurm sites")

    def query(self, job_ids: list[str]) -> dict[str, JobInfo]:
        """Local runs have no job, so this is asked only of a Slurm site's jobs in a results folder
        looked at through this site (a copy on a laptop): no scheduler here can say how they stand,
        and "none known" would call them lost, so it does not answer and they stay as recorded."""
        raise SlurmError(f"site {self.site.name} has no scheduler to ask about the ledger's Slurm jobs")


def engine_target(run_spec: Path) -> list[str]:
    """What each rank runs, after ``python``."""
    return ["-m", "hpml_core.train", "--config", str(run_spec)]


def local_command(run: Run, run_spec: Path) -> list[str]:
    """The engine on this machine, as one would start it by hand: one process, or hpml's launcher
    starting one per "GPU". ``hpml submit`` forks the same from its rank server."""
    engine = engine_target(run_spec)
    if run.gpus == 1:
        return [sys.executable, *engine]
    return [sys.executable, "-m", "hpml_core.local_ranks", str(run.gpus), *engine]


def forked_command(servers: RankServers, run: Run, run_spec: Path, cwd: Path) -> tuple[list[str], str]:
    """The client that has ``servers`` fork the run (``local_command``'s processes, without their
    imports); where no server could start, ``local_command`` itself, with why."""
    try:
        return servers.launch_command(run.mode in ZERO_STAGES, run.gpus, engine_target(run_spec), dict(os.environ),
                                      cwd), ""
    except RankServerError as error:
        return local_command(run, run_spec), f"started afresh: {error}"


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:  # nothing left in it
        pass


def run_processes(command: list[str], cwd: str, log: Path) -> tuple[int, int | None]:
    """Run a local run's processes to their end, leaving none behind; returns the launcher's
    exit status and the signal that interrupted ``hpml submit``, if one did.

    ``command`` (a rank server's client, or the launcher itself) runs in a session of its own:
    when it exits, whatever is left there is killed (a rank server's launcher kills the ranks it
    forked when their client is gone; hpml_core/local_ranks.py's are in this session). The
    session also keeps a terminal's Ctrl-C from reaching the ranks behind our back: SIGINT and
    SIGTERM to ``hpml submit`` are passed on to the session as SIGTERM, which the client relays
    to the ranks and the engine answers by saving a checkpoint and stopping (STOPPED: the next
    ``hpml submit`` resumes it); so is SIGHUP."""
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


def _run_all(submission: Submission) -> int:
    folder, runs = submission.folder, submission.runs
    project_dir = expand_path(submission.site.project_dir)  # where a job starts: the run spec's paths are relative to it
    if submission.dry_run:
        for run in runs:
            print(f"  would run {run.name}: {' '.join(local_command(run, folder / run.name / RUN_SPEC_FILE))}"
                  + (" (from step 0, its folder kept in previous-<n>/)" if submission.force else ""))
        return 0
    if runs:  # from here on the folder is this site's
        ledger.check_site(folder, submission.site.name, record=True)
    with RankServers() as servers:
        return _run_each(submission, Path(project_dir), servers)


def _run_each(submission: Submission, project_dir: Path, servers: RankServers) -> int:
    folder, runs = submission.folder, submission.runs
    failures = 0
    for index, run in enumerate(runs, 1):
        # Claimed one at a time, just before it runs: the runs waiting their turn are not RUNNING.
        ready = claim(submission, [run], backend="local", state=RUNNING, why="", job_id=None, exit_code=None)
        if not ready:
            print(f"[{index}/{len(runs)}] {run.name}: started meanwhile by another hpml submit, skipped")
            continue
        run_dir = folder / run.name
        log = free_log(run_dir, ready[0].first_attempt)
        ledger.update(folder, run.name, log=str(log))
        kept = ready[0].kept
        print(f"[{index}/{len(runs)}] {run.name}: {run.nodes} x {run.gpus} processes"
              + (f" (the previous run kept in {kept})" if kept else "") + " ...", end="", flush=True)
        started = time.perf_counter()
        command, note = forked_command(servers, run, (run_dir / RUN_SPEC_FILE).absolute(), project_dir)
        if note:
            print(f" ({note})", end="", flush=True)
        code, interrupted = run_processes(command, project_dir, log)
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
