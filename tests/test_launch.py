"""Rank discovery from the launchers' environments, and a real two-process run launched the
way srun launches it (SLURM_* variables only, no torchrun)."""

import os
import subprocess
import sys

import pytest

from hpml_core.launch import detect, first_host
from hpml_core.contract.config import parse_args
from tests.conftest import REPO, losses, rank_files

# The srun-style launch takes its rendezvous port from the job id (20000 + id % 20000). The real
# Slurm's jobs, which test_slurm.py runs at the same time on the other test worker, are numbered
# from 1 on a fresh cluster: an id this high keeps this test's port clear of theirs.
JOB_ID = 9770


@pytest.mark.parametrize("nodelist,host", [
    ("gr001", "gr001"), ("gr[012-015,020]", "gr012"), ("gpu[7,9],cpu1", "gpu7"), ("a-b[03-04]", "a-b03"),
])
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_torchrun_variables_win_over_slurm():
    env = detect({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234",
                  "TORCHELASTIC_RUN_ID": "x", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_NODELIST": "n1"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, env.launcher) == \
        (3, 4, 1, "n1", 1234, "torchrun")


def test_srun_task_variables():
    env = detect({"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
                  "SLURM_JOB_NODELIST": "gpu[03-06]", "SLURM_STEP_NODELIST": "gpu[04-05]"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.launcher) == (5, 8, 1, "gpu04", "srun")
    assert env.master_port == 20000 + 4242


def test_a_batch_script_without_srun_is_one_process():
    env = detect({"SLURM_JOB_ID": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "n1"})
    assert (env.rank, env.world_size, env.launcher) == (0, 1, "none")


def test_deepspeed_launcher_local_rank_argument_is_accepted(token_data):
    config, _ = parse_args(["--local_rank=1", "--data", str(token_data)])
    assert config.data == token_data


@pytest.mark.parametrize("mode", ["ddp", "zero3"])
def test_two_tasks_launched_like_srun_train_together(mode, tmp_path, token_data):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "hpml_core.train", "--test", "--mode", mode, "--precision", "fp32",
            "--batch-size", "2", "--steps", "4", "--warmup-steps", "1", "--data", str(token_data), "--out", str(out)]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_"))}
    procs = [
        subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={
            **base, "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": str(JOB_ID + len(mode)), "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
            "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_JOB_NODELIST": "localhost", "SLURM_STEP_NODELIST": "localhost"})
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    files = rank_files(out)
    assert sorted(files) == [0, 1]
    assert all(f["launcher"] == "srun" and f["slurm"]["job_id"] == str(JOB_ID + len(mode)) for f in files.values())
    assert losses(out, 0) == losses(out, 1)
