"""The jobs layer against a real Slurm: the one `jobs/local-slurm up` starts on this machine
(`.ci/run` starts it with two emulated nodes and sets HPML_CI=1, so that in CI these tests fail
rather than skip when the cluster is missing).

Everything here is real: sbatch through submitit, srun and torchrun in the job scripts, gloo
ranks on CPU, sacct backed by slurmdbd and MariaDB, scancel, requeue. Runs write under a
temporary results folder through a site profile made for the test.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from analysis import collect
from hpml_core.contract import attempts
from hpml_core.contract.run_states import COMPLETED
from jobs import experiment as experiment_module
from jobs import render, slurm_query
from tests.conftest import REPO, rank_files

FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}
# Held by every test that uses the cluster: shared here, exclusive by the tests that break it
# (tests/test_slurm_faults.py: a lost node, a restarted controller, a stopped slurmdbd), so that
# no test meets another's fault while `make test` runs two files at once (or two sessions share
# this machine's cluster).
CLUSTER_LOCK = Path(tempfile.gettempdir()) / "hpml-local-slurm-tests.lock"


@contextmanager
def cluster(exclusive: bool = False):
    """Hold the local Slurm (see CLUSTER_LOCK) for the block."""
    with open(CLUSTER_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


@pytest.fixture(autouse=True)
def _cluster_shared():
    with cluster():
        yield


def _responding() -> list[str]:
    """The cluster's node names, or [] when no controller answers."""
    if not shutil.which("sinfo"):
        return []
    try:
        with cluster():  # not while a fault test has the controller down
            done = subprocess.run(["sinfo", "--Node", "--noheader", "--format=%N"], capture_output=True, text=True,
                                  timeout=15)
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
        device_tflops: 0.03
        device_memory_gb_per_s: 3.0
    """))
    return site


def experiment(site: Path, name: str, runs: str, **defaults) -> tuple[Path, Path]:
    """An experiment file next to the site profile; returns it and its results folder."""
    settings = {"model": "tiny", "seq_len": 64, "precision": "fp32", "warmup_steps": 1, "steps": 6, "profile_steps": 0,
                "time_limit": "00:10:00", **defaults}
    path = site.parent / f"{name}.yaml"
    path.write_text(f"name: {name}\ndataset: wikitext-2\ndefaults: {json.dumps(settings)}\nruns:\n"
                    + textwrap.indent(textwrap.dedent(runs).strip(), "  ") + "\n")
    return path, site.parent / "results" / name


def hpml(*args: str, timeout: float = 120, path: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``hpml ARGS`` as a user types it (``path``: another PATH; ``env``: more variables)."""
    env = {**os.environ, **({"PATH": path} if path else {}), **(env or {})} if path or env else None
    return subprocess.run([sys.executable, "-m", "hpml_core.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def status_rows(experiment_arg: str, site: Path) -> dict[str, tuple[str, str]]:
    """``hpml status``'s table: each run's (state, progress), read from the table's rows (the
    lines under it say why, and are not read here)."""
    done = hpml("status", experiment_arg, "--site", str(site))
    assert done.returncode == 0, done.stderr
    rows = [[cell.strip() for cell in line.strip("│").split("│")] for line in done.stdout.splitlines()
            if line.startswith("│")]
    return {row[0]: (row[2], row[3]) for row in rows}


def ledger(folder: Path) -> dict:
    return json.loads((folder / "ledger.json").read_text())["runs"]


def wait_for(predicate, timeout: float, what: str, every: float = 1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")


def slurm_job(rank_file: dict) -> str:
    """The rank file's job as Slurm names it: ``<array job id>_<task>`` (hpml submits arrays)."""
    slurm = rank_file["slurm"]
    return f"{slurm['array_job_id']}_{slurm['array_task_id']}"


def job_state(job_id: str) -> str:
    info = slurm_query.query([job_id]).get(job_id)
    return info.state if info else "UNKNOWN"


def wait_finished(job_id: str, timeout: float = 300) -> str:
    return wait_for(lambda: job_state(job_id) if job_state(job_id) in FINISHED else None, timeout,
                    f"job {job_id} to finish")


def own_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "status.json").read_text())["step"]
    except (OSError, ValueError):
        return -1


def job_processes(job_number: str) -> set[int]:
    """Every process of a Slurm job on this host: its slurmstepds ("slurmstepd: [123.batch]")
    and all they started."""
    table = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
    rows = [line.split(None, 2) for line in table.splitlines()]
    children: dict[int, list[int]] = {}
    for pid, ppid, *_ in rows:
        children.setdefault(int(ppid), []).append(int(pid))
    found = {int(pid) for pid, _, *args in rows if args and args[0].startswith(f"slurmstepd: [{job_number}.")}
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def release_requeued(job: str) -> None:
    """Start a requeued job now instead of after Slurm's hold (cred_expire + 1 s: two minutes),
    but only once Slurm is done with its last attempt, which is what the hold waits for: no
    process of it left on any node, no message to a node still queued in the controller (a node
    back from the dead gets the old attempt's kill late, and it would kill the new one), and
    two seconds since (slurmd refuses a credential made in the second it revoked the old one's:
    "Job credential revoked", and the job FAILED)."""
    number = subprocess.run(["scontrol", "show", "-o", "job", job], capture_output=True, text=True,
                            check=True).stdout.split("JobId=", 1)[1].split()[0]

    def settled() -> bool:
        pending = subprocess.run(["sdiag"], capture_output=True, text=True).stdout
        return not job_processes(number) and "No pending RPCs" in pending

    wait_for(settled, 60, f"job {job}'s last attempt to be gone from its nodes", every=0.2)
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)


def stop_and_requeue(job: str, run_dir: Path, steps: int, after: int = 20) -> None:
    """Send the stop signal (as Slurm does before the time limit) once ``after`` steps are done,
    wait for the requeue, and release the job: Slurm holds a requeued job a while (reason
    BeginTime)."""
    wait_for(lambda: own_step(run_dir) >= after, 180, f"{after} steps before the signal", every=0.1)
    # No check of scancel's exit status: Slurm 22.05 delivers a signal to an array task, then
    # answers "Job can not be altered now, try again later" (scancel retries, signalling again,
    # and exits non-zero). Whether the engine got it is what the requeue below shows.
    subprocess.run(["scancel", "--signal=USR1", job], capture_output=True)
    wait_for(lambda: job_state(job) == "PENDING" and own_step(run_dir) < steps, 180, "the requeue")
    release_requeued(job)


# The tiny study's layouts, each twice: all that two concurrent submissions, Slurm's arrays and
# the report's spreads need, in 10 runs instead of the whole study's 20.
LAYOUTS = ("single", "ddp-4", "zero3-4", "dp2xtp2-b8", "zero3-1")


def test_make_submit_all_runs_the_tiny_study_once_even_when_submitted_twice_at_once(slurm_site):
    """Two `make submit-all` at once submit each run of the tiny study's layouts (single, DDP on
    4, ZeRO-3 on 4 and on 1, DP 2 x TP 2; 2 repeats: 10 runs) exactly once; every run completes
    with all its rank files; a third submits nothing; and the study's report shows each figure
    with its spread over the repeats, and says of every comparison whether it is within noise."""
    study = yaml.safe_load(experiment_module.experiment_path("tiny_study").read_text())
    study.update(runs=[run for run in study["runs"] if run["name"] in LAYOUTS], repeats=2)
    path = slurm_site.parent / "tiny_study.yaml"
    path.write_text(yaml.safe_dump(study))
    steps = study["defaults"]["steps"]
    make = ["make", "--no-print-directory", "submit-all", f"EXP={path}", f"SITE={slurm_site}"]
    assert subprocess.run(["make", "--no-print-directory", "data"], cwd=REPO, capture_output=True).returncode == 0
    worlds = experiment_module.load(path).world_sizes
    assert len(worlds) == 10
    first, second = (subprocess.Popen(make, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                     for _ in range(2))
    outputs = [proc.communicate(timeout=600)[0] for proc in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    folder = slurm_site.parent / "results" / "tiny_study"
    submitted = [line for out in outputs for line in out.splitlines() if line.startswith("[") and ": job " in line]
    assert sorted(line.split("] ")[1].split(":")[0] for line in submitted) == sorted(ledger(folder)) == sorted(worlds)
    assert all(entry["submissions"] == 1 for entry in ledger(folder).values())

    watch = hpml("status", str(path), "--site", str(slurm_site), "--watch", "5", timeout=1800)
    assert watch.returncode == 0, watch.stderr
    entries = ledger(folder)
    assert {entry["state"] for entry in entries.values()} == {"COMPLETED"}, entries
    for name, world in worlds.items():
        files = rank_files(folder / name)
        assert sorted(files) == list(range(world)) and {f["status"] for f in files.values()} == {"COMPLETED"}
        assert {(f["launcher"], slurm_job(f)) for f in files.values()} == {("srun", entries[name]["job_id"])}
        array_job = entries[name]["job_id"].split("_")[0]
        assert (folder / "arrays" / "submitit" / f"{array_job}_submission.sh").read_text() == \
            Path(entries[name]["script"]).read_text()
        assert {json.dumps(f["config_source"]) for f in files.values()} == {
            json.dumps({"file": str(folder / name / "run.json"), "overrides": []})}

    again = subprocess.run(make, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "0 to run, 10 skipped (completed), 0 pending or running" in again.stdout
    assert status_rows(str(path), slurm_site) == {name: ("COMPLETED", f"completed, step {steps}/{steps}") for name in worlds}

    report = hpml("report", str(path), "--site", str(slurm_site))
    assert report.returncode == 0, report.stderr
    summary = list(csv.DictReader((folder / "report" / "summary.csv").open()))
    assert len(summary) == len(LAYOUTS) and {row["runs_completed"] for row in summary} == {"2"}
    assert all(float(row["tokens_per_s_min"]) <= float(row["tokens_per_s_median"]) <= float(row["tokens_per_s_max"])
               for row in summary)
    # Hours spent: Slurm's elapsed time of each run's job (sacct) × its processes.
    runs = list(csv.DictReader((folder / "report" / "runs.csv").open()))
    assert all(row["device_hours_source"] == "Slurm elapsed" and float(row["device_hours"]) > 0 for row in runs)
    text = (folder / "report" / "summary.md").read_text()
    assert "min–max" in text
    # Which comparisons are within noise, or that none is, with how many are beyond it.
    assert "Within noise (the two ranges overlap): " in text or "No comparison is within noise (" in text, text
    assert_the_report_says_where_the_time_goes(folder / "report")

    # The planner learns the site's speed from these runs, and says so
    user_sites = {"HPML_SITES": str(slurm_site.parent / "user-sites")}
    calibrated = hpml("calibrate", str(path), "--site", str(slurm_site), env=user_sites)
    assert calibrated.returncode == 0, calibrated.stderr
    assert (slurm_site.parent / "user-sites" / "calibrations" / "test-slurm.yaml").is_file()  # the profile's name
    planned = hpml("plan", str(path), "--site", str(slurm_site), env=user_sites)
    assert planned.returncode == 0 and f"calibrated from {len(worlds)} runs of {path.stem}" in planned.stdout


def assert_the_report_says_where_the_time_goes(report: Path) -> None:
    """Every configuration's profiled step in parts that add up, the bytes of each of its
    collectives equal to the contract's, a finding per multi-process layout in words, and the
    page's figure and tables as a reader sees them in headless Chromium."""
    parts = list(csv.DictReader((report / "time_parts.csv").open()))
    assert {row["configuration"] for row in parts} == set(LAYOUTS)
    for layout in LAYOUTS:
        shares = [float(row["measured_share"]) for row in parts if row["configuration"] == layout]
        assert sum(shares) == pytest.approx(1.0)
    kinds = {(row["configuration"], row["kind"]): row["matches"] for row in csv.DictReader(
        (report / "collectives.csv").open())}
    assert set(kinds.values()) == {"True"}, kinds
    assert {kind for layout, kind in kinds if layout == "zero3-4"} == {"all-gather", "reduce-scatter", "all-reduce"}
    assert {kind for layout, kind in kinds if layout == "ddp-4"} == {"all-reduce"}
    assert not any(layout == "single" for layout, _ in kinds)
    text = (report / "summary.md").read_text()
    for layout in ("ddp-4", "zero3-4", "dp2xtp2-b8"):
        assert re.search(rf"- {layout}: (\d+% of the step is exposed [a-z-]+ \(|no communication is exposed).* the step "
                         rf"takes [\d.]+× the baseline's", text), layout
    from analysis import screenshot

    if screenshot.browser_paths() is None:
        pytest.fail("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    with screenshot.headless() as driver:
        driver.get((report / "report.html").as_uri())
        seen = driver.execute_script("""
            const img = Array.from(document.images).find(i => i.alt === 'where_time_goes');
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            canvas.getContext('2d').drawImage(img, 0, 0);
            const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            const colours = new Set();
            for (let i = 0; i < pixels.length && colours.size < 12; i += 4 * 53) colours.add(pixels.slice(i, i + 4).join());
            const rows = id => document.querySelectorAll('#' + id + '-table tbody tr').length;
            return {colours: colours.size, width: img.naturalWidth, time: rows('time'),
                    collectives: rows('collectives'), parts: rows('part-predictions'),
                    findings: document.getElementById('time-notes').innerText};""")
    assert seen["width"] > 100 and seen["colours"] > 6, seen  # stacked bars in several parts' colours
    assert seen["time"] == len(LAYOUTS) and seen["collectives"] == len(kinds) and seen["parts"] > len(LAYOUTS)
    assert "zero3-4: " in seen["findings"] and "of the step" in seen["findings"]


def test_doctor_passes_on_the_local_slurm_and_names_a_broken_container(slurm_site):
    done = hpml("doctor", "--site", str(slurm_site), "--smoke", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    statuses = {line.split()[1].rstrip(":"): line.split()[0] for line in done.stdout.splitlines()
                if line[:4] in ("ok  ", "skip", "warn", "FAIL")}
    assert statuses == {"sbatch": "ok", "squeue": "ok", "sacct": "ok", "partition": "ok", "container": "skip",
                        "python": "ok", "data": "ok", "results": "ok", "smoke": "ok"}, done.stdout
    broken = hpml("doctor", "--site", str(slurm_site), "--set", "container.kind=apptainer", "--set",
                  "container.image=/nope.sif", "--smoke")
    assert broken.returncode == 1 and "FAIL container: " in broken.stdout, broken.stdout
    assert "skip smoke: fix the failures above first" in broken.stdout


def test_a_failed_run_shows_failed_and_only_failed_submits_just_that_one(slurm_site):
    exp, folder = experiment(slurm_site, "failing", """
        - {name: broken, mode: single, gpus: 1, batch_size: 4}
        - {name: fine, mode: single, gpus: 1, batch_size: 4}
    """)
    # its only checkpoint corrupt (an unreadable manifest): --resume has none to fall back to, and refuses it
    (folder / "broken" / "checkpoints" / "step-00000001").mkdir(parents=True)
    (folder / "broken" / "checkpoints" / "step-00000001" / "manifest.json").write_text("{not json")
    submitted = hpml("submit", str(exp), "--site", str(slurm_site), "--report")
    assert submitted.returncode == 0, submitted.stderr
    jobs = {name: entry["job_id"] for name, entry in ledger(folder).items()}
    assert wait_finished(jobs["broken"]) == "FAILED" and wait_finished(jobs["fine"]) == "COMPLETED"
    rows = status_rows(str(exp), slurm_site)
    assert (rows["broken"][0], rows["fine"][0]) == ("FAILED", "COMPLETED")
    # --report: a job that waits for both (afterany) and builds the report, with no other command.
    array_job = jobs["broken"].split("_")[0]  # one array: both runs have one shape
    report_job = re.search(rf"^report: job (\d+), after job\(s\) {array_job} end", submitted.stdout, re.M).group(1)
    assert wait_finished(report_job, 600) == "COMPLETED", (folder / f"report-{report_job}.out").read_text()
    summary = (folder / "report" / "summary.md").read_text()
    assert re.search(r"^\| broken \|.*\| FAILED \|$", summary, re.M) and re.search(r"^\| fine \|.*\| COMPLETED \|$",
                                                                                   summary, re.M), summary

    shutil.rmtree(folder / "broken" / "checkpoints")
    again = hpml("submit", str(exp), "--site", str(slurm_site), "--only-failed")
    assert again.returncode == 0 and "1 to run, 1 skipped (not failed)" in again.stdout
    entries = ledger(folder)
    assert entries["fine"]["job_id"] == jobs["fine"] and entries["broken"]["job_id"] != jobs["broken"]
    assert wait_finished(entries["broken"]["job_id"]) == "COMPLETED"
    assert (entries["broken"]["submissions"], entries["fine"]["submissions"]) == (2, 1)


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
    # scancel sends SIGTERM first: the engine saves a checkpoint before it ends, and says so.
    rows = status_rows(str(exp), slurm_site)
    assert sorted(rows) == ["by-hpml", "by-scancel"]
    assert all(state == "CANCELLED" and progress.startswith("stopped, step") for state, progress in rows.values())
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
    assert sorted(resumed) == [0, 1] and all(slurm_job(f) == job for f in resumed.values())
    assert resumed[0]["slurm"]["restart_count"] == 1 and 20 <= resumed[0]["resumed_from_step"] < 300
    assert resumed[0]["steps_completed"] == reference[0]["steps_completed"] == 300
    assert abs(resumed[0]["loss"]["values"][-1] - reference[0]["loss"]["values"][-1]) <= 1e-6
    assert ledger(folder)["interrupted"]["submissions"] == 1  # one submission: Slurm restarted it


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
    assert {f["status"] for f in files.values()} == {"COMPLETED"}
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


def jobs_named(name: str) -> set[str]:
    """This user's job ids with that job name, from squeue and sacct asked directly."""
    queued = subprocess.run(["squeue", "--me", "--noheader", "--states=all", "--array", f"--name={name}", "--format=%i"],
                            capture_output=True, text=True, check=True).stdout.split()
    accounted = subprocess.run(["sacct", "-X", "--noheader", "--parsable2", f"--name={name}", f"--user={os.getuid()}",
                                "--starttime=now-7days", "--format=JobID"],
                               capture_output=True, text=True, check=True).stdout.split()
    return set(queued) | set(accounted)


def sbatch(*args: str) -> str:
    done = subprocess.run(["sbatch", "--parsable", "--output=/dev/null", *args], capture_output=True, text=True,
                          check=True, cwd="/tmp")
    return done.stdout.strip().split(";")[0]


def test_find_jobs_lists_this_users_jobs_of_one_name_newest_first(nodes):
    """Two jobs of ours with the name, one of another user's (root submits it as nobody) and one of
    ours with another name: find_jobs lists ours with that name, newest first, while they run
    (squeue) and once they ended (sacct); none submitted after a time still to come."""
    if os.getuid() != 0:
        pytest.fail("these tests submit a job as another user, which needs root (as `jobs/local-slurm up` does)")
    name = f"hpml-find-{os.getpid()}-{time.time_ns()}"
    first = sbatch(f"--job-name={name}", "--wrap=sleep 2")
    theirs = sbatch(f"--job-name={name}", "--uid=nobody", "--gid=nogroup", "--wrap=sleep 2")
    other = sbatch(f"--job-name={name}-other", "--wrap=sleep 2")
    second = sbatch(f"--job-name={name}", "--wrap=sleep 2")
    assert [job.job_id for job in slurm_query.find_jobs(name)] == [second, first]
    for job in (first, theirs, other, second):
        wait_finished(job)
    def from_sacct() -> list[slurm_query.JobInfo] | None:
        found = slurm_query.find_jobs(name)
        return found if {job.source for job in found} == {"sacct"} else None

    ended = wait_for(from_sacct, 60, "sacct to know the jobs")
    assert [(job.job_id, job.state) for job in ended] == [(second, "COMPLETED"), (first, "COMPLETED")]
    assert slurm_query.find_jobs(name, since=datetime.now(timezone.utc) + timedelta(hours=1)) == []
    assert [job.job_id for job in slurm_query.find_jobs(name, since=datetime.now(timezone.utc) - timedelta(hours=1))] \
        == [second, first]


def test_a_hanging_sbatch_then_only_failed_leaves_exactly_one_job(slurm_site, tmp_path):
    """sbatch queues the job for real, then hangs (a PATH shim around the real one): hpml submit
    gives up after the site's submit_timeout_s and records SUBMIT_FAILED. `--only-failed`, with
    sbatch answering again, must find the queued job by the run's job name and adopt it: the run
    has one job, and it completes. The shim queues the job held, so that it is still queued when
    `--only-failed` looks (a tiny run can otherwise finish first, and its rank files then say it
    completed), and the test releases it once adopted."""
    hanging = tmp_path / "hanging-site.yaml"
    hanging.write_text(slurm_site.read_text() + "submit_timeout_s: 3\n")
    shims = tmp_path / "bin"
    shims.mkdir()
    real = shutil.which("sbatch")
    (shims / "sbatch").write_text(f"""#!/bin/bash
if [ "$1" = --test-only ]; then exec {real} "$@"; fi
{real} --hold "$@" || exit
sleep 120
""")
    (shims / "sbatch").chmod(0o755)
    exp, folder = experiment(slurm_site, "hanging", "- {name: one, mode: single, gpus: 1, batch_size: 4}")
    name = render.array_job_name("hanging", "1x1-00h10m00s", 1)
    earlier = jobs_named(name)  # of earlier test sessions, on this cluster's long memory

    started = time.monotonic()
    first = hpml("submit", str(exp), "--site", str(hanging), path=f"{shims}:{os.environ['PATH']}")
    assert time.monotonic() - started < 60
    assert first.returncode == 1 and "sbatch did not answer within 3 s; the job may still have been queued" \
        in first.stderr, first.stderr
    assert ledger(folder)["one"]["state"] == "SUBMIT_FAILED"
    queued = jobs_named(name) - earlier
    assert len(queued) == 1, queued  # the shim's sbatch did queue it

    again = hpml("submit", str(exp), "--site", str(slurm_site), "--only-failed")
    assert again.returncode == 0, again.stdout + again.stderr
    (job,) = queued
    assert ledger(folder)["one"]["job_id"] == job
    subprocess.run(["scontrol", "release", job.split("_")[0]], check=True)
    assert wait_finished(job) == "COMPLETED"
    assert jobs_named(name) - earlier == queued
    files = rank_files(folder / "one")
    assert sorted(files) == [0] and files[0]["status"] == "COMPLETED" and slurm_job(files[0]) == job


def test_a_job_stopped_within_its_last_warm_up_steps_is_requeued_and_completes(slurm_site):
    """12 steps of which 5 warm-up, checkpoints every 4: the stop signal, sent once 7 steps are
    done, stops the job after step 8 or so, with fewer steps left than the warm-up. The requeued
    job trains them untimed and completes; the report's row is completed after 2 attempts, with
    the loss curve from step 0, equal to the same run's left alone. Steps of about a second
    (batch 64 of 256 tokens) let the signal land in time."""
    exp, folder = experiment(slurm_site, "late_stop", """
        - {name: interrupted, mode: single, gpus: 1, batch_size: 64}
        - {name: reference, mode: single, gpus: 1, batch_size: 64}
    """, steps=12, warmup_steps=5, checkpoint_every=4, seq_len=256)
    assert hpml("submit", str(exp), "--site", str(slurm_site)).returncode == 0
    job = ledger(folder)["interrupted"]["job_id"]
    stop_and_requeue(job, folder / "interrupted", steps=12, after=7)
    assert wait_finished(job) == "COMPLETED"
    assert wait_finished(ledger(folder)["reference"]["job_id"]) == "COMPLETED"

    run_dir = folder / "interrupted"
    assert attempts.attempt_numbers(run_dir) == [1, 2]
    stopped, resumed = rank_files(run_dir, attempt=1)[0], rank_files(run_dir, attempt=2)[0]
    assert stopped["status"] == "STOPPED" and resumed["status"] == "COMPLETED"
    resumed_at = resumed["resumed_from_step"]
    assert 12 - 5 < resumed_at < 12, f"the stop landed after step {resumed_at}, not within the last warm-up steps"
    assert resumed["throughput"] is None and "earlier attempts" in resumed["throughput_missing_reason"]
    assert stopped["throughput"] is not None and slurm_job(resumed) == job

    report = hpml("report", str(exp), "--site", str(slurm_site))
    assert report.returncode == 0, report.stderr
    rows = {row["run"]: row for row in csv.DictReader((folder / "report" / "runs.csv").open())}
    assert (rows["interrupted"]["status"], rows["interrupted"]["attempts"]) == (COMPLETED, "2")
    assert rows["interrupted"]["job_ids"] == f"{job};{job}"  # one job, restarted by Slurm
    # Slurm keeps the elapsed time of the job's last run only: the first attempt adds its wall time.
    assert rows["interrupted"]["device_hours_source"] == "Slurm elapsed + rank files' wall time"
    (result,), problems, _ = collect.collect(folder, {"interrupted": 1}, repeated=False)
    assert not problems and result.status == COMPLETED and len(result.attempts) == 2
    curve = result.loss_curve()  # (step, loss, attempt), from every attempt
    assert [(step, attempt) for step, _, attempt in curve] == [(step, 1 if step < resumed_at else 2)
                                                                for step in range(12)]
    reference = rank_files(folder / "reference")[0]["loss"]["values"]
    assert len(reference) == 12 and max(abs(loss - ref) for (_, loss, _), ref in zip(curve, reference)) <= 1e-6


def test_a_24_run_grid_is_one_throttled_array_and_a_stopped_task_is_requeued(slurm_site, tmp_path):
    """24 runs of one shape (1 GPU, 10 minutes): one ``sbatch`` (counted by a PATH shim around the
    real one), never more than --max-concurrent 2 tasks running (squeue sampled throughout);
    the first task, stopped by USR1 as before a time limit, is requeued alone and completes from
    its checkpoint; the last, cancelled while it waits its turn, is CANCELLED alone, and
    --only-failed sends it again, as a new array of one; every run completes."""
    shims, calls = tmp_path / "bin", tmp_path / "sbatch-calls.txt"
    shims.mkdir()
    (shims / "sbatch").write_text(f'#!/bin/bash\necho "$*" >> {calls}\nexec {shutil.which("sbatch")} "$@"\n')
    (shims / "sbatch").chmod(0o755)
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(f"""
        name: grid
        dataset: wikitext-2
        defaults: {{model: tiny, seq_len: 64, precision: fp32, warmup_steps: 1, time_limit: "00:10:00",
                    mode: single, gpus: 1, batch_size: 2, profile_steps: 0}}
        runs: [{{name: g}}]
        zip: {{seed: {list(range(1, 25))}, steps: {[300] + [3] * 23}}}
    """))
    path.rename(slurm_site.parent / "grid.yaml")
    exp, folder = slurm_site.parent / "grid.yaml", slurm_site.parent / "results" / "grid"
    names = list(experiment_module.load(exp).world_sizes)
    assert len(names) == 24

    running, sampling = [], True

    def sample() -> None:
        while sampling:
            out = subprocess.run(["squeue", "--me", "--noheader", "--array", "--states=RUNNING",
                                  f"--name={render.array_job_name('grid', '1x1-00h10m00s', 1)}", "--format=%i"],
                                 capture_output=True, text=True).stdout
            running.append(len(out.split()))
            time.sleep(0.3)

    dry = hpml("submit", str(exp), "--site", str(slurm_site), "--max-concurrent", "2", "--dry-run",
               path=f"{shims}:{os.environ['PATH']}")
    assert dry.returncode == 0 and "would submit one array of 24 run(s), 1 node(s) x 1 GPUs, 00:10:00, at most 2 " \
        "at once: g-seed-1-steps-300, g-seed-2-steps-3," in dry.stdout, dry.stdout + dry.stderr
    assert calls.read_text().splitlines() == ["--test-only"] and not folder.exists()  # checked, nothing submitted

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        done = hpml("submit", str(exp), "--site", str(slurm_site), "--max-concurrent", "2",
                    path=f"{shims}:{os.environ['PATH']}")
        assert done.returncode == 0, done.stdout + done.stderr
        submitted = [line for line in calls.read_text().splitlines() if not line.startswith("--test-only")]
        assert len(submitted) == 1, submitted
        entries = ledger(folder)
        array_job = entries[names[0]]["job_id"].split("_")[0]
        assert [entries[name]["job_id"] for name in names] == [f"{array_job}_{task}" for task in range(24)]
        first, last = entries[names[0]]["job_id"], names[-1]
        cancelled = hpml("cancel", str(exp), "--site", str(slurm_site), "--run", last)
        assert cancelled.returncode == 0 and f"{last}: cancelled job {array_job}_23\n" in cancelled.stdout
        assert status_rows(str(exp), slurm_site)[last][0] == "CANCELLED"
        stop_and_requeue(first, folder / names[0], steps=300)
        watch = hpml("status", str(exp), "--site", str(slurm_site), "--watch", "3", timeout=900)
        assert watch.returncode == 0, watch.stderr
    finally:
        sampling = False
        sampler.join()
    assert max(running) == 2, running  # the throttle was reached, and never passed
    assert {state for state, _ in status_rows(str(exp), slurm_site).values()} == {COMPLETED, "CANCELLED"}
    again = hpml("submit", str(exp), "--site", str(slurm_site), "--only-failed", path=f"{shims}:{os.environ['PATH']}")
    assert again.returncode == 0 and "1 to run, 23 skipped (not failed)" in again.stdout, again.stdout + again.stderr
    assert len([line for line in calls.read_text().splitlines() if not line.startswith("--test-only")]) == 2
    resent = ledger(folder)[last]["job_id"]
    assert resent.endswith("_0") and resent != f"{array_job}_23" and wait_finished(resent) == COMPLETED
    assert {state for state, _ in status_rows(str(exp), slurm_site).values()} == {COMPLETED}  # recorded, too
    entries = ledger(folder)
    assert {entries[name]["state"] for name in names} == {COMPLETED}, entries
    assert [entry["submissions"] for entry in entries.values()] == [1] * 23 + [2]
    for task, name in enumerate(names):
        files = rank_files(folder / name)
        job = resent if name == last else f"{array_job}_{task}"
        assert sorted(files) == [0] and files[0]["status"] == "COMPLETED" and slurm_job(files[0]) == job
    assert attempts.attempt_numbers(folder / names[0]) == [1, 2]
    resumed = rank_files(folder / names[0])[0]
    assert resumed["slurm"]["restart_count"] == 1 and 20 <= resumed["resumed_from_step"] < 300
    assert (folder / names[0] / f"slurm-{first}.out").exists()  # the task's output, in its run's folder
