"""A stop signal (Slurm's --signal=USR1 before the time limit, or a preemption's SIGTERM) ends
training at a step boundary agreed by all ranks, after a checkpoint, with exit status 4; the
resumed run then ends exactly where an uninterrupted one does."""

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO, engine, losses, rank_files

STEPS = 100


def launch_like_srun(args: list[str], job_id: int) -> list[subprocess.Popen]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_"))}
    return [subprocess.Popen([sys.executable, "-m", "hpml_core.train", *args], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={
                                 **base, "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": str(job_id), "SLURM_PROCID": str(rank),
                                 "SLURM_LOCALID": str(rank), "SLURM_STEP_NUM_TASKS": "2",
                                 "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_JOB_NODELIST": "localhost"})
            for rank in range(2)]


def arguments(token_data) -> list[str]:
    return ["--test", "--mode", "ddp", "--precision", "fp32", "--batch-size", "2", "--steps", str(STEPS),
            "--max-samples", str(4 * STEPS), "--warmup-steps", "1", "--data", str(token_data), "--profile-steps", "0"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory, token_data):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    engine([*arguments(token_data), "--out", str(out)], nproc=2)
    return out


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_a_signal_to_one_rank_stops_all_at_the_same_step_and_resume_finishes_the_run(sig, tmp_path, token_data, whole):
    args = arguments(token_data)
    split = tmp_path / "split"

    procs = launch_like_srun([*args, "--out", str(split)], job_id=900 + sig)
    for line in procs[0].stdout:  # rank 0 reports every tenth of the run
        if f"step {STEPS // 10}/{STEPS}" in line:
            procs[1].send_signal(sig)  # only one rank is told, as when a signal reaches one node first
            break
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [4, 4], outputs
    files = rank_files(split)
    assert {f["status"] for f in files.values()} == {"STOPPED"}
    stopped_at = {f["steps_completed"] for f in files.values()}
    assert len(stopped_at) == 1 and STEPS // 10 <= stopped_at.pop() < STEPS  # same step everywhere, and early
    assert sig.name in files[1]["error"]

    engine([*args, "--out", str(split), "--resume"], nproc=2)
    record = rank_files(split)[0]
    assert record["status"] == "COMPLETED" and record["resumed_from_step"] == files[0]["steps_completed"]
    assert losses(split)[-1] == losses(whole)[-1]
    assert losses(split) == losses(whole)[record["resumed_from_step"]:]
