"""The jobs layer when the local Slurm breaks: a node lost under training jobs, slurmctld
restarted mid-study, slurmdbd stopped. Real faults on the real cluster of `jobs/local-slurm`
(its daemons killed or stopped through their PID files, a node set DOWN), never mocks. Each test
holds the cluster alone while it breaks it (``test_slurm.cluster``), and leaves it as it found
it, passed or failed: every daemon running, every node it set down back in service, its jobs
cancelled. Like tests/test_slurm.py they fail rather than skip under HPML_CI=1 when no cluster
answers."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from hpml_core.contract import attempts
from hpml_core.contract.run_states import ACTIVE, COMPLETED, PENDING, RUNNING, from_slurm
from jobs import slurm_query
from tests.conftest import REPO, rank_files
from tests.test_slurm import (cluster, experiment, hpml, job_processes, ledger, nodes,  # noqa: F401 (fixtures)
                              own_step, release_requeued, slurm_job, slurm_site, wait_finished, wait_for)

LOCAL_SLURM = REPO / "jobs" / "local-slurm"
PIDS = Path("/var/lib/hpml-slurm/run")  # where jobs/local-slurm's daemons keep their PID files
LOST = "hpml test: node lost"  # the reason a lost node is set DOWN with


def local_slurm(*args: str) -> None:
    subprocess.run([str(LOCAL_SLURM), *args], check=True, capture_output=True, timeout=120)


def alive(daemon: str) -> bool:
    try:
        os.kill(int((PIDS / f"{daemon}.pid").read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def show(kind: str, name: str) -> dict[str, str]:
    """``scontrol show -o job|node NAME`` as a table of its KEY=VALUE words."""
    out = subprocess.run(["scontrol", "show", "-o", kind, name], capture_output=True, text=True, check=True).stdout
    return dict(word.split("=", 1) for word in out.split() if "=" in word)


def reason(node: str) -> str:
    """Why the node is down or drained, as set ("none" when it is not)."""
    return subprocess.run(["sinfo", "--Node", "--noheader", f"--nodes={node}", "--format=%E"], capture_output=True,
                          text=True, check=True).stdout.splitlines()[0].strip()


@pytest.fixture
def faults(nodes):
    """The cluster held alone; yields a list the test adds its results folders to. Afterwards,
    passed or failed: those folders' jobs cancelled, every daemon that was running runs again
    (started as jobs/local-slurm starts it), and every node set down as lost is back in service."""
    with cluster(exclusive=True):
        daemons = [name for name in ("slurmdbd", "slurmctld", *(f"slurmd-{node}" for node in nodes)) if alive(name)]
        folders: list[Path] = []
        try:
            yield folders
        finally:
            for name in daemons:
                if name.startswith("slurmd-"):
                    local_slurm("start-node", name.removeprefix("slurmd-"))
                else:
                    local_slurm({"slurmdbd": "start-dbd", "slurmctld": "start-ctld"}[name])
            for node in nodes:
                if reason(node) == LOST:  # back by itself (ReturnToService=2) once its slurmd runs, else resumed here
                    subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
            jobs = [job for folder in folders if (folder / "ledger.json").exists()
                    for entry in ledger(folder).values() for job in entry.get("job_ids") or []]
            if jobs:
                subprocess.run(["scancel", *jobs], capture_output=True)
            wait_for(lambda: all(show("node", node)["State"] in ("IDLE", "MIXED", "ALLOCATED") for node in nodes),
                     60, "every node back in service")


def lose_node(node: str, jobs: list[str]) -> None:
    """Lose ``node`` under ``jobs`` as a node is lost: its slurmd and every process of the jobs
    stop at once and die (no stop signal reaches the engine: no checkpoint at the end, no rank
    file), and the controller is told, as an admin (or slurmctld itself, after SlurmdTimeout)
    sets such a node DOWN. The node stays down until its slurmd is started again."""
    numbers = [show("job", job)["JobId"] for job in jobs]  # the array task's own job number
    os.kill(int((PIDS / f"slurmd-{node}.pid").read_text()), signal.SIGKILL)
    frozen: set[int] = set()
    while new := set().union(*(job_processes(number) for number in numbers)) - frozen:
        for pid in new:  # frozen first, so that none of them reports an ending to the controller
            os.kill(pid, signal.SIGSTOP)
        frozen |= new
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", f"reason={LOST}"], check=True)
    for pid in frozen:
        os.kill(pid, signal.SIGKILL)


def accounted(jobs: list[str]) -> dict[str, str]:
    """What accounting says of these jobs (sacct asked directly): job id -> state."""
    done = subprocess.run(["sacct", "-X", "--noheader", "--parsable2", "-j", ",".join(jobs), "--format=JobID,State"],
                          capture_output=True, text=True)
    rows = [line.split("|") for line in done.stdout.splitlines()] if done.returncode == 0 else []
    return {job: state.split()[0] for job, state in rows if job in jobs}


def status(exp: Path, site: Path) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """``hpml status``: its rows (state, progress) and the lines below the table; it must answer
    (exit status 0) in a table, and nothing on stderr."""
    done = hpml("status", str(exp), "--site", str(site))
    assert done.returncode == 0 and done.stderr == "", done.stdout + done.stderr
    lines = done.stdout.splitlines()
    cells = [[cell.strip() for cell in line.strip("│").split("│")] for line in lines if line.startswith("│")]
    below = lines[max(i for i, line in enumerate(lines) if line.startswith("└")) + 1:]
    return {row[0]: (row[2], row[3]) for row in cells}, [line.strip() for line in below if line.strip()]


def test_a_lost_node_s_jobs_resume_from_their_checkpoints_requeued_by_slurm_or_by_only_failed(slurm_site, nodes,
                                                                                              faults):
    """Two runs train on one node (12 steps, checkpoints every 4), and the node is lost at step
    5 or later. Slurm requeues the job that asks for it (every hpml job does) at once: PENDING,
    held two minutes (BeginTime), while accounting says RUNNING, then NODE_FAIL, for seconds;
    the other, made not requeueable (as a site may), ends NODE_FAIL. `hpml submit --only-failed`
    right then submits that one alone (it runs on the other node), never the requeued one; `hpml
    status` says why the job was requeued, and at which step each attempt ended. Once the node
    is back, both complete from their last periodic checkpoint (no stop signal reached the
    engine, so nothing later was saved), to the losses of the same run left alone on the other
    node, step for step."""
    if len(nodes) < 2:
        pytest.fail(f"this cluster has one node ({nodes}): start it with NODES=2 jobs/local-slurm up")
    node, other = nodes[0], nodes[1]
    settings = dict(steps=12, checkpoint_every=4, seq_len=256)  # steps of about half a second, batch 64
    exp, folder = experiment(slurm_site, "lost_node", """
        - {name: requeued, mode: single, gpus: 1, batch_size: 64}
        - {name: not-requeued, mode: single, gpus: 1, batch_size: 64}
    """, **settings)
    ref_exp, ref_folder = experiment(slurm_site, "lost_node_reference", """
        - {name: reference, mode: single, gpus: 1, batch_size: 64}
    """, **settings)
    faults += [folder, ref_folder]
    on = ["--set", f'sbatch_extra=["--nodelist={node}"]']
    assert hpml("submit", str(exp), "--site", str(slurm_site), *on).returncode == 0
    assert hpml("submit", str(ref_exp), "--site", str(slurm_site), "--set",
                f'sbatch_extra=["--exclude={node}"]').returncode == 0
    jobs = {name: entry["job_id"] for name, entry in ledger(folder).items()}
    subprocess.run(["scontrol", "update", f"JobId={jobs['not-requeued']}", "Requeue=0"], check=True)
    for name in jobs:
        wait_for(lambda: own_step(folder / name) >= 5, 180, f"{name}: 5 steps", every=0.1)

    lose_node(node, list(jobs.values()))
    # Requeued at once; sacct, behind the controller, still says RUNNING, then NODE_FAIL, for seconds.
    assert wait_for(lambda: show("job", jobs["requeued"])["JobState"] == "PENDING", 30, "the requeue")
    assert show("job", jobs["requeued"])["Restarts"] == "1"
    again = hpml("submit", str(exp), "--site", str(slurm_site), "--only-failed")  # anywhere: its node is down
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 to run, 0 skipped (not failed), 1 pending or running" in again.stdout, again.stdout
    entries = ledger(folder)
    assert (entries["requeued"]["job_id"], entries["requeued"]["submissions"]) == (jobs["requeued"], 1)
    resent = entries["not-requeued"]["job_id"]
    assert resent != jobs["not-requeued"] and entries["not-requeued"]["job_ids"] == [jobs["not-requeued"], resent]
    assert from_slurm(slurm_query.query([jobs["not-requeued"]])[jobs["not-requeued"]].state) == "NODE_FAIL"

    def says_why() -> tuple | None:  # once accounting has recorded how the lost run ended (a second or so)
        rows, below = status(exp, slurm_site)
        return (rows, below) if any(line.endswith(f", requeued after NODE_FAIL on {node}") for line in below) else None

    rows, below = wait_for(says_why, 30, "status to say why the job was requeued")
    # the resent job may already train on the other node; the requeued one waits out its hold
    assert rows["requeued"][0] == PENDING and rows["not-requeued"][0] in (PENDING, RUNNING), rows
    assert rows["requeued"][1].startswith("last attempt: ended at step "), rows
    assert rows["not-requeued"][0] == RUNNING or rows["not-requeued"][1].startswith("last attempt: ended at step ")
    requeued = [line for line in below if line.startswith("requeued: ")]
    assert len(requeued) == 1 and re.fullmatch(rf"requeued: PENDING: Slurm \((sacct|squeue)\): PENDING, requeued after "
                                               rf"NODE_FAIL on {node}", requeued[0]), below

    local_slurm("start-node", node)  # the node is back: with ReturnToService=2 its slurmd's registration
    # returns it to service; else an admin resumes it (refused if the registration won the race)
    if show("node", node)["State"].startswith("DOWN"):
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
    wait_for(lambda: not show("node", node)["State"].startswith("DOWN"), 60, f"{node} back in service")
    release_requeued(jobs["requeued"])
    assert wait_finished(jobs["requeued"]) == wait_finished(resent) == COMPLETED
    assert wait_finished(ledger(ref_folder)["reference"]["job_id"]) == COMPLETED
    assert status(exp, slurm_site)[0] == {name: (COMPLETED, "completed, step 12/12") for name in jobs}

    reference = rank_files(ref_folder / "reference")[0]
    assert reference["slurm"]["node"] == other and reference["resumed_from_step"] is None
    for name, job in (("requeued", jobs["requeued"]), ("not-requeued", resent)):
        run_dir = folder / name
        assert attempts.attempt_numbers(run_dir) == [1, 2] and rank_files(run_dir, attempt=1) == {}  # died unwarned
        resumed = rank_files(run_dir, attempt=2)[0]
        assert resumed["status"] == COMPLETED and slurm_job(resumed) == job
        assert resumed["slurm"]["restart_count"] == (1 if name == "requeued" else 0)
        start = resumed["loss"]["start_step"]
        assert start == resumed["resumed_from_step"] in (4, 8), (name, start)  # a periodic checkpoint
        values = resumed["loss"]["values"]
        assert len(values) == 12 - start
        assert max(abs(a - b) for a, b in zip(values, reference["loss"]["values"][start:])) <= 1e-6, name
    assert [ledger(folder)[name]["submissions"] for name in jobs] == [1, 2]


def test_slurmctld_restarted_mid_study_loses_no_job_and_no_ledger_entry(slurm_site, faults):
    """Two runs in one array, one at a time (--max-concurrent 1). While the first trains and the
    second waits its turn, slurmctld is stopped (SIGTERM through its PID file: it saves its state)
    and started again as jobs/local-slurm starts it. Meanwhile `hpml status` answers from
    accounting, with one line saying the controller is unreachable, and the waiting run as last
    recorded (sacct does not know a task still pending in its array): neither is called lost.
    Afterwards both complete in their own jobs, in one attempt each, each recorded once in the
    ledger, and status answers as before. (The first run outlives the restart: a job that ends
    while slurmctld is down stays COMPLETING up to a minute after it is back, until its step's
    completion message is sent again.)"""
    exp, folder = experiment(slurm_site, "ctld_restart", """
        - {name: through, mode: single, gpus: 1, batch_size: 64, seq_len: 256, steps: 50}
        - {name: after, mode: single, gpus: 1, batch_size: 4, steps: 20}
    """)
    faults.append(folder)
    assert hpml("submit", str(exp), "--site", str(slurm_site), "--max-concurrent", "1").returncode == 0
    jobs = {name: entry["job_id"] for name, entry in ledger(folder).items()}
    wait_for(lambda: own_step(folder / "through") >= 1, 120, "the first run to train")

    local_slurm("stop-ctld")
    try:
        rows, below = status(exp, slurm_site)
    finally:
        local_slurm("start-ctld")
    # (and, if sacct does not list the waiting task yet: "; jobs it does not list yet as last recorded")
    assert len(below) == 1 and below[0].startswith(
        "Slurm's controller is unreachable (squeue: slurm_load_jobs error: Unable to contact slurm controller "
        "(connect failure)): states from accounting (sacct)"), below
    assert {name: state for name, (state, _) in rows.items()} == {"through": RUNNING, "after": PENDING}, rows

    watch = hpml("status", str(exp), "--site", str(slurm_site), "--watch", "1", timeout=300)
    assert watch.returncode == 0, watch.stderr
    rows, below = status(exp, slurm_site)
    assert rows == {"through": (COMPLETED, "completed, step 50/50"), "after": (COMPLETED, "completed, step 20/20")}
    assert below == []
    entries = ledger(folder)
    assert {name: (entry["job_id"], entry["submissions"], entry["job_ids"]) for name, entry in entries.items()} == {
        name: (job, 1, [job]) for name, job in jobs.items()}
    for name, job in jobs.items():
        assert attempts.attempt_numbers(folder / name) == [1]
        (only,) = rank_files(folder / name).values()
        assert only["status"] == COMPLETED and slurm_job(only) == job and only["slurm"]["restart_count"] == 0
    # Accounting lost neither.
    wait_for(lambda: accounted(list(jobs.values())) == {job: COMPLETED for job in jobs.values()}, 60,
             "accounting to know both jobs completed")


def test_submit_while_slurmctld_is_down_says_so_and_submits_nothing(slurm_site, faults):
    """With the controller stopped, `hpml submit` is not told the script is bad: sbatch cannot
    reach it, which is Slurm's failure (one line, exit status 1), not bad input (2); no job is
    recorded in the ledger, so the next submit starts the run afresh."""
    exp, folder = experiment(slurm_site, "ctld_down", "- {name: later, mode: single, gpus: 1, batch_size: 4}")
    faults.append(folder)
    local_slurm("stop-ctld")
    try:
        done = hpml("submit", str(exp), "--site", str(slurm_site), timeout=300)
    finally:
        local_slurm("start-ctld")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "the controller is unreachable" in done.stderr, done.stderr
    recorded = ledger(folder) if (folder / "ledger.json").exists() else {}
    assert not any(entry.get("job_id") for entry in recorded.values()), recorded


def test_with_slurmdbd_stopped_status_and_report_answer_from_squeue_and_say_accounting_is_unreachable(slurm_site,
                                                                                                       faults):
    """slurmdbd is stopped (sacct: "Connection refused"), then a run is submitted and trains:
    `hpml status` and `hpml report` answer from squeue and the ledger, exit status 0, and say in
    one line that accounting is unreachable, as `hpml submit` and `hpml cancel` do before they
    act. A run whose job squeue no longer lists (one that ended long ago: its job id made up
    here, as squeue forgets a job only 5 minutes after it ended) stays as last recorded, not
    lost, while accounting, which would know, does not answer.
    Once slurmdbd is back, accounting knows the job that ran meanwhile as COMPLETED, and the
    forgotten one is FAILED ("Slurm no longer knows the job")."""
    exp, folder = experiment(slurm_site, "dbd_down", "- {name: live, mode: single, gpus: 1, batch_size: 4}",
                             steps=40)
    old_exp, old_folder = experiment(slurm_site, "dbd_down_old", "- {name: old, mode: single, gpus: 1, batch_size: 4}")
    old_folder.mkdir(parents=True)
    (old_folder / "ledger.json").write_text(json.dumps({"site": "test-slurm", "runs": {"old": {
        "backend": "slurm", "job_id": "987654_0", "job_ids": ["987654_0"], "state": RUNNING, "why": "",
        "submissions": 1, "first_attempt": 1}}}))
    faults.append(folder)

    local_slurm("stop-dbd")
    assert subprocess.run(["sacct", "-X", "-n"], capture_output=True).returncode != 0  # accounting is down indeed
    assert hpml("submit", str(exp), "--site", str(slurm_site)).returncode == 0
    job = ledger(folder)["live"]["job_id"]
    rows, below = status(exp, slurm_site)
    assert rows["live"][0] in ACTIVE and ledger(folder)["live"]["state_from"] == "squeue"
    assert below == ["Slurm's accounting is unreachable (sacct: error: Problem talking to the database: Connection "
                     "refused): states from the controller (squeue)"], below
    partial = below[0]
    rows, below = status(old_exp, slurm_site)
    assert rows["old"][0] == RUNNING and ledger(old_folder)["old"]["state"] == RUNNING  # not lost: not known
    assert below[0].endswith("; jobs it no longer lists as last recorded") and len(below) == 1, below
    # submit decides on the same partial answer and says so: the old run, as last recorded, is not sent again
    again = hpml("submit", str(old_exp), "--site", str(slurm_site))
    assert again.returncode == 0 and again.stdout.splitlines() == [
        f"note: {below[0]}", "dbd_down_old: 0 to run, 0 skipped (completed), 1 pending or running"], again.stdout

    watch = hpml("status", str(exp), "--site", str(slurm_site), "--watch", "1", timeout=300)
    assert watch.returncode == 0 and watch.stderr == "", watch.stderr
    assert status(exp, slurm_site)[0] == {"live": (COMPLETED, "completed, step 40/40")}
    report = hpml("report", str(exp), "--site", str(slurm_site))
    assert report.returncode == 0 and "Traceback" not in report.stderr, report.stderr
    said = "States: Slurm's accounting is unreachable (sacct: error: Problem talking to the database: Connection refused)"
    assert said in " ".join(report.stdout.split()), report.stdout  # in the caption under its table, wrapped
    assert said in (folder / "report" / "summary.md").read_text()
    rows = list(csv.DictReader((folder / "report" / "runs.csv").open()))
    assert [(row["run"], row["status"]) for row in rows] == [("live", COMPLETED)]
    cancelled = hpml("cancel", str(exp), "--site", str(slurm_site))  # and so does cancel
    assert cancelled.returncode == 0 and cancelled.stdout.splitlines() == [
        f"note: {partial}", "dbd_down: 0 job(s) cancelled (none was pending or running)"], cancelled.stdout

    local_slurm("start-dbd")  # the controller sends accounting what it kept meanwhile
    wait_for(lambda: accounted([job]) == {job: COMPLETED}, 60, "accounting to know the job completed")
    rows, below = status(exp, slurm_site)
    assert rows == {"live": (COMPLETED, "completed, step 40/40")} and below == []
    assert ledger(folder)["live"]["state_from"] == "sacct"
    rows, below = status(old_exp, slurm_site)
    assert rows["old"][0] == "FAILED" and below == ["old: FAILED: Slurm no longer knows the job, and it wrote no rank "
                                                    "file"], below
