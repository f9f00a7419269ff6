"""The jobs layer against a real Slurm: the one `jobs/local-slurm up` starts on this machine
(`.ci/run` starts it with two emulated nodes and sets HPML_CI=1, so that in CI these tests fail
rather than skip when the cluster is missing).

Everything here is real: sbatch through submitit, srun and torchrun in the job scripts, gloo
ranks on CPU, sacct backed by slurmdbd and MariaDB, scancel, requeue. Runs write under a
temporary results folder through a site profile made for the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jobs import slurm
from tests.conftest import REPO, rank_files

FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def _responding() -> list[str]:
    """The cluster's node names, or [] when no controller answers."""
    if not shutil.which("sinfo"):
        return []
    try:
        done = subprocess.run(["sinfo", "--Node", "--noheader", "--format=%N"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return []
    return sorted(set(done.stdout.split())) if done.returncode == 0 else []


@pytest.fixture(scope="module")
def nodes() -> list[str]:
    found = _responding()
    if not found:
        message = "no Slurm controller answers: `NODES=2 jobs/local-slurm up` starts one (root, Debian)"
        if os.environ.get("HPML_CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def slurm_site(nodes, tmp_path_factory, token_data) -> Path:
    """local-slurm's profile, with this session's data and a results folder of its own."""
    root = tmp_path_factory.mktemp("slurm")
    (root / "data").mkdir()
    (root / "data" / "wikitext-2").symlink_to(token_data)
    site = root / "site.yaml"
    site.write_text(textwrap.dedent(f"""
        name: test-slurm
        scheduler: slurm
        partition: debug
        cpus_per_gpu: 1
        python: {sys.executable}
        project_dir: {REPO}
        results_root: {root / 'results'}
        data_root: {root / 'data'}
        env: {{OMP_NUM_THREADS: "1"}}
    """))
    return site


def experiment(site: Path, name: str, runs: str, **defaults) -> tuple[Path, Path]:
    """An experiment file next to the site profile; returns it and its results folder."""
    settings = {"model": "tiny", "seq_len": 64, "precision": "fp32", "warmup_steps": 1, "steps": 6,
                "time_limit": "00:10:00", **defaults}
    path = site.parent / f"{name}.yaml"
    path.write_text(f"name: {name}\ndataset: wikitext-2\ndefaults: {json.dumps(settings)}\nruns:\n"
                    + textwrap.indent(textwrap.dedent(runs).strip(), "  ") + "\n")
    return path, site.parent / "results" / name


def hpml(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def ledger(folder: Path) -> dict:
    return json.loads((folder / "ledger.json").read_text())["runs"]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")


def job_state(job_id: str) -> str:
    return slurm.query([job_id]).get(job_id, slurm.JobInfo("UNKNOWN", "", "", "")).state


def wait_finished(job_id: str, timeout: float = 300) -> str:
    return wait_for(lambda: job_state(job_id) if job_state(job_id) in FINISHED else None, timeout,
                    f"job {job_id} to finish")


def own_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "status.json").read_text())["step"]
    except (OSError, ValueError):
        return -1


def stop_and_requeue(job: str, run_dir: Path, steps: int) -> None:
    """Send the stop signal (as Slurm does before the time limit) after 20 steps, wait for the
    requeue, and release the job: Slurm holds a requeued job a while (reason BeginTime)."""
    wait_for(lambda: own_step(run_dir) >= 20, 180, "20 steps before the signal")
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    wait_for(lambda: job_state(job) == "PENDING" and own_step(run_dir) < steps, 180, "the requeue")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)


def test_make_submit_all_runs_the_tiny_study_once_even_when_submitted_twice_at_once(slurm_site):
    """Two `make submit-all` at once submit each run exactly once; every run completes with all
    its rank files; a third submits nothing."""
    make = ["make", "--no-print-directory", "submit-all", "EXP=tiny_study", f"SITE={slurm_site}"]
    assert subprocess.run(["make", "--no-print-directory", "data"], cwd=REPO, capture_output=True).returncode == 0
    first, second = (subprocess.Popen(make, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                     for _ in range(2))
    outputs = [proc.communicate(timeout=300)[0] for proc in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    folder = slurm_site.parent / "results" / "tiny_study"
    submitted = [line for out in outputs for line in out.splitlines() if ": job " in line]
    assert sorted(line.split("] ")[1].split(":")[0] for line in submitted) == sorted(ledger(folder))
    assert len(ledger(folder)) == 5 and all(entry["attempts"] == 1 for entry in ledger(folder).values())

    watch = hpml("status", "tiny_study", "--site", str(slurm_site), "--watch", "2", timeout=900)
    assert watch.returncode == 0, watch.stderr
    entries = ledger(folder)
    assert {entry["state"] for entry in entries.values()} == {"COMPLETED"}, entries
    worlds = {"single": 1, "ddp-4": 4, "zero3-4": 4, "dp2xtp2-b8": 4, "dp2xtp2-b32": 4}
    for name, world in worlds.items():
        files = rank_files(folder / name)
        assert sorted(files) == list(range(world)) and {f["status"] for f in files.values()} == {"completed"}
        assert {(f["launcher"], f["slurm"]["job_id"]) for f in files.values()} == {("srun", entries[name]["job_id"])}
        assert (folder / name / "submitit" / f"{entries[name]['job_id']}_submission.sh").read_text() == \
            (folder / name / "job.sbatch").read_text()
        assert {json.dumps(f["config_source"]) for f in files.values()} == {
            json.dumps({"file": str(folder / name / "run.json"), "overrides": []})}

    again = subprocess.run(make, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "0 to run, 5 skipped (completed), 0 pending or running" in again.stdout
    table = hpml("status", "tiny_study", "--site", str(slurm_site)).stdout
    assert table.count("COMPLETED") == 5 and table.count("completed, step 30/30") == 5


def test_a_failed_run_shows_failed_and_only_failed_submits_just_that_one(slurm_site):
    exp, folder = experiment(slurm_site, "failing", """
        - {name: broken, mode: single, gpus: 1, batch_size: 4}
        - {name: fine, mode: single, gpus: 1, batch_size: 4}
    """)
    (folder / "broken" / "checkpoints").mkdir(parents=True)  # a corrupt checkpoint: --resume refuses it
    (folder / "broken" / "checkpoints" / "latest.json").write_text("{not json")
    assert hpml("submit", str(exp), "--site", str(slurm_site)).returncode == 0
    jobs = {name: entry["job_id"] for name, entry in ledger(folder).items()}
    assert wait_finished(jobs["broken"]) == "FAILED" and wait_finished(jobs["fine"]) == "COMPLETED"
    table = hpml("status", str(exp), "--site", str(slurm_site)).stdout
    assert "FAILED" in table and "COMPLETED" in table

    (folder / "broken" / "checkpoints" / "latest.json").unlink()
    again = hpml("submit", str(exp), "--site", str(slurm_site), "--only-failed")
    assert again.returncode == 0 and "1 to run, 1 skipped (not failed)" in again.stdout
    entries = ledger(folder)
    assert entries["fine"]["job_id"] == jobs["fine"] and entries["broken"]["job_id"] != jobs["broken"]
    assert wait_finished(entries["broken"]["job_id"]) == "COMPLETED"
    assert (entries["broken"]["attempts"], entries["fine"]["attempts"]) == (2, 1)


def test_scancel_and_hpml_cancel_show_cancelled(slurm_site):
    exp, folder = experiment(slurm_site, "cancelled", """
        - {name: by-scancel, mode: single, gpus: 1, batch_size: 4}
        - {name: by-hpml, mode: single, gpus: 1, batch_size: 4}
    """, steps=100000, warmup_steps=10)
    assert hpml("submit", str(exp), "--site", str(slurm_site)).returncode == 0
    jobs = {name: entry["job_id"] for name, entry in ledger(folder).items()}
    for name in jobs:
        wait_for(lambda: own_step(folder / name) >= 0, 120, f"{name} to start")
    subprocess.run(["scancel", jobs["by-scancel"]], check=True)
    assert wait_finished(jobs["by-scancel"]) == "CANCELLED"
    cancel = hpml("cancel", str(exp), "--site", str(slurm_site))
    assert cancel.returncode == 0 and f"by-hpml: cancelled job {jobs['by-hpml']}" in cancel.stdout
    assert "1 job(s) cancelled" in cancel.stdout
    assert wait_finished(jobs["by-hpml"]) == "CANCELLED"
    table = hpml("status", str(exp), "--site", str(slurm_site)).stdout
    # scancel sends SIGTERM first: the engine saves a checkpoint before it ends, and says so.
    assert table.count("CANCELLED") == 2 and table.count("stopped, step") == 2
    assert {entry["state"] for entry in ledger(folder).values()} == {"CANCELLED"}


def test_a_stop_signal_requeues_the_job_which_resumes_to_the_uninterrupted_loss(slurm_site):
    """`scancel --signal=USR1` is what Slurm sends before a time limit (--signal=USR1@180) or a
    preemption: the engine checkpoints and exits 4, the script requeues the job, and the job
    resumes from the checkpoint to the same final loss as the same run left alone."""
    exp, folder = experiment(slurm_site, "requeued", """
        - {name: interrupted, mode: ddp, gpus: 2, batch_size: 2}
        - {name: reference, mode: ddp, gpus: 2, batch_size: 2}
    """, steps=300, warmup_steps=10)
    assert hpml("submit", str(exp), "--site", str(slurm_site)).returncode == 0
    job = ledger(folder)["interrupted"]["job_id"]
    stop_and_requeue(job, folder / "interrupted", steps=300)
    assert wait_finished(job) == "COMPLETED"
    assert wait_finished(ledger(folder)["reference"]["job_id"]) == "COMPLETED"

    resumed, reference = rank_files(folder / "interrupted"), rank_files(folder / "reference")
    assert sorted(resumed) == [0, 1] and all(f["slurm"]["job_id"] == job for f in resumed.values())
    assert resumed[0]["slurm"]["restart_count"] == 1 and 20 <= resumed[0]["resumed_from_step"] < 300
    assert resumed[0]["steps_completed"] == reference[0]["steps_completed"] == 300
    assert abs(resumed[0]["loss"]["values"][-1] - reference[0]["loss"]["values"][-1]) <= 1e-6
    assert ledger(folder)["interrupted"]["attempts"] == 1  # one submission: Slurm restarted it


def test_a_two_node_job_meets_through_the_rendezvous_and_survives_a_requeue(slurm_site, nodes):
    """Two emulated nodes, one torchrun on each: four ranks on two node names. The stop signal
    reaches the engine through torchrun (which must not die of it), and the job is requeued
    although torchrun turns the engine's exit status 4 into 1."""
    if len(nodes) < 2:
        pytest.fail(f"this cluster has one node ({nodes}): start it with NODES=2 jobs/local-slurm up")
    exp, folder = experiment(slurm_site, "two_nodes", """
        - {name: ddp-2x2, mode: ddp, nodes: 2, gpus: 2, batch_size: 2}
    """, steps=300, warmup_steps=10)
    assert hpml("submit", str(exp), "--site", str(slurm_site)).returncode == 0
    job = ledger(folder)["ddp-2x2"]["job_id"]
    stop_and_requeue(job, folder / "ddp-2x2", steps=300)
    assert wait_finished(job) == "COMPLETED"
    files = rank_files(folder / "ddp-2x2")
    assert sorted(files) == [0, 1, 2, 3] and {f["world_size"] for f in files.values()} == {4}
    assert {f["status"] for f in files.values()} == {"completed"}
    assert len({f["slurm"]["node"] for f in files.values()}) == 2
    assert {f["slurm"]["node"] for f in files.values()} <= set(nodes)
    assert {f["launcher"] for f in files.values()} == {"torchrun"}
    assert {f["slurm"]["restart_count"] for f in files.values()} == {1}
    assert len({f["resumed_from_step"] for f in files.values()}) == 1 and files[0]["resumed_from_step"] >= 20


def test_slurm_refusing_a_script_submits_nothing(slurm_site, tmp_path):
    site = tmp_path / "bad-partition.yaml"
    site.write_text(slurm_site.read_text().replace("partition: debug", "partition: nosuchpartition"))
    exp, folder = experiment(slurm_site, "refused", "- {name: one, mode: single, gpus: 1, batch_size: 4}")
    done = hpml("submit", str(exp), "--site", str(site))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "run 'one'" in done.stderr and "partition" in done.stderr.lower()
    assert not folder.exists()


@pytest.fixture
def without_accounting(nodes):
    """The same cluster restarted without slurmdbd; restarted with it afterwards."""
    env = {**os.environ, "NODES": str(len(nodes))}
    subprocess.run([str(REPO / "jobs" / "local-slurm"), "restart"], env={**env, "ACCOUNTING": "none"},
                   check=True, capture_output=True, timeout=120)
    yield
    subprocess.run([str(REPO / "jobs" / "local-slurm"), "restart"], env=env, check=True, capture_output=True,
                   timeout=120)


def test_status_answers_on_a_slurm_without_accounting(slurm_site, without_accounting):
    assert subprocess.run(["sacct"], capture_output=True).returncode != 0  # accounting is off indeed
    exp, folder = experiment(slurm_site, "no_accounting", "- {name: one, mode: single, gpus: 1, batch_size: 4}")
    assert hpml("submit", str(exp), "--site", str(slurm_site)).returncode == 0
    status = hpml("status", str(exp), "--site", str(slurm_site), timeout=60)
    assert status.returncode == 0 and ledger(folder)["one"]["state_from"] == "squeue"
    watch = hpml("status", str(exp), "--site", str(slurm_site), "--watch", "1", timeout=300)
    assert watch.returncode == 0 and "COMPLETED" in watch.stdout and "completed, step 6/6" in watch.stdout
