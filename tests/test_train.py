"""End-to-end runs of the engine: one process, and DDP under torchrun (gloo on the CPU)."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import torch

from hpml_core.contract import rank_file
from tests.conftest import REPO, engine, losses, rank_files

# fp32 AdamW; 8 steps of which 2 warm-up; a global batch of 4 sequences of 64 tokens.
COMMON = ["--test", "--precision", "fp32", "--steps", "8", "--warmup-steps", "2", "--profile-steps", "0"]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, token_data):
    out = tmp_path_factory.mktemp("single") / "run"
    engine([*COMMON, "--data", str(token_data), "--out", str(out), "--batch-size", "4"])
    return out


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, token_data):
    """DDP on 2 ranks under torchrun (the other tests start their ranks themselves, tests/conftest.py)."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "hpml_core.train", *COMMON, "--mode", "baseline", "--data", str(token_data),
                           "--out", str(out), "--batch-size", "2"],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_single_run_writes_a_schema_valid_rank_file(single_run):
    files = rank_files(single_run)
    assert list(files) == [0]
    record = files[0]
    jsonschema.validate(record, json.loads(rank_file.SCHEMA_PATH.read_text()))
    rank_file.read(single_run / "attempts" / "1" / "rank-0.json")  # the typed model accepts it too
    assert record["status"] == "COMPLETED" and record["error"] is None
    assert record["run_id"] == "run" and record["attempt"] == 1 and record["config"]["steps"] == 8
    assert record["throughput_missing_reason"] is None
    assert (record["world_size"], record["dp_size"], record["tp_size"]) == (1, 1, 1)
    assert record["steps_completed"] == record["total_steps"] == 8 and len(record["loss"]["values"]) == 8
    assert record["versions"]["torch"] and record["versions"]["deepspeed"] == "0.19.8"
    assert record["slurm"] is None


def test_throughput_and_flops_figures_follow_from_the_step_times(single_run):
    record = rank_files(single_run)[0]
    t = record["throughput"]
    assert t["timed_steps"] == len(t["step_times_s"]) == 6  # 8 steps less 2 warm-up
    assert t["step_time_median_s"] == pytest.approx(statistics.median(t["step_times_s"]))
    assert t["tokens_per_step"] == 4 * 64 and t["samples_per_step"] == 4
    assert t["run_tokens_per_s"] == pytest.approx(4 * 64 / t["run_step_time_median_s"])
    assert t["rank_tokens_per_s"] == pytest.approx(t["run_tokens_per_s"])  # one rank: all of it
    f = record["flops"]
    m = record["model"]
    assert f["n_params"] == m["params_matmul"]
    assert f["flops_per_token"] == 6 * m["params_matmul"] + 12 * m["n_layer"] * m["n_embd"] * 64
    assert f["achieved_tflops_per_s"] == pytest.approx(f["flops_per_token"] * t["run_tokens_per_s"] / 1e12)
    # A CPU has no peak to compare with: MFU is missing, with the reason, never guessed.
    assert f["mfu"] is None and f["peak_tflops_per_s"] is None and "cpu" in f["mfu_missing_reason"]
    assert record["memory"]["cpu_peak_rss_bytes"] > 50e6 and record["memory"]["cuda_max_allocated_bytes"] is None
    # Nor an energy counter: missing with the reason, never estimated from a nominal power.
    assert record["energy"] is None and "cpu device" in record["energy_missing_reason"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, tests/test_gpu.py reads the counter")
def test_a_gpu_without_nvml_has_no_energy_figure_and_says_why():
    from hpml_core.energy import EnergyMeter

    meter = EnergyMeter(torch.device("cuda", 0))  # NVML's library is looked for first: not on this machine
    meter.start()
    meter.stop()
    assert meter.span is None
    assert meter.record(timed_steps=6, run_tokens=1536) == (None, meter.missing_reason)
    assert meter.missing_reason.startswith("NVML's energy counter could not be read: NVMLError_LibraryNotFound")


def test_ddp_losses_equal_the_single_process_run(single_run, ddp_run):
    files = rank_files(ddp_run)
    assert sorted(files) == [0, 1]
    for rank, record in files.items():
        assert record["status"] == "COMPLETED" and record["rank"] == rank and record["dp_rank"] == rank
        # launched with the seed's --mode baseline: recorded under its name, ddp
        assert (record["mode"], record["world_size"], record["dp_size"], record["global_batch"]) == ("ddp", 2, 2, 4)
        assert record["launcher"] == "torchrun"
    single = losses(single_run)
    for rank in (0, 1):
        assert losses(ddp_run, rank) == pytest.approx(single, abs=1e-5)
    assert single[-1] < single[0]  # it learns


def test_ddp_counts_each_token_once(ddp_run):
    files = rank_files(ddp_run)
    run_rates = {r["throughput"]["run_tokens_per_s"] for r in files.values()}
    assert len(run_rates) == 1  # every rank reports the same run figure (the slowest rank's pace)
    t = files[0]["throughput"]
    assert t["tokens_per_step"] == 4 * 64  # global batch, not world x global batch
    assert t["run_tokens_per_s"] == pytest.approx(4 * 64 / t["run_step_time_median_s"])
    for record in files.values():
        own = record["throughput"]
        assert own["rank_tokens_per_s"] == pytest.approx(2 * 64 / own["step_time_median_s"])
        assert own["run_step_time_median_s"] == max(r["throughput"]["step_time_median_s"] for r in files.values())


def test_a_run_spec_trains_what_it_says_and_the_rank_file_names_the_overrides(tmp_path, token_data, single_run):
    """The job's way in: --config <run>/run.json. The single run's own recorded config, written
    as a run spec, trains the same losses; a flag next to it wins and is recorded."""
    from hpml_core.contract.config import TrainConfig, write_run_spec

    recorded = TrainConfig.model_validate(rank_files(single_run)[0]["config"])
    spec = tmp_path / "run.json"
    write_run_spec(spec, recorded.model_copy(update={"out": tmp_path / "spec", "run_id": None}))
    engine(["--config", str(spec)])
    record = rank_files(tmp_path / "spec")[0]
    assert record["config_source"] == {"file": str(spec), "overrides": []}
    assert losses(tmp_path / "spec") == losses(single_run)
    engine(["--config", str(spec), "--out", str(tmp_path / "longer"), "--steps", "9"])
    record = rank_files(tmp_path / "longer")[0]
    assert sorted(record["config_source"]["overrides"]) == ["--out", "--steps"]
    assert record["config"]["steps"] == 9 and losses(tmp_path / "longer")[:8] == pytest.approx(losses(single_run))


def test_activation_checkpointing_does_not_change_the_training(tmp_path, token_data, single_run):
    """...and a profiled step names its recomputation apart from the backward it runs in."""
    out = tmp_path / "ckpt"
    engine([*COMMON, "--data", str(token_data), "--out", str(out), "--batch-size", "4", "--grad-ckpt",
            "--profile-steps", "1"])
    assert losses(out) == pytest.approx(losses(single_run), abs=1e-6)
    [step] = rank_files(out)[0]["profile"]["steps"]
    assert step["parts_s"]["recompute"] > 0 and step["parts_s"]["backward"] > 0  # without it: 0 (test_parallel_equivalence)


def test_resume_without_a_checkpoint_starts_from_step_zero(tmp_path, token_data, single_run):
    out = tmp_path / "fresh"
    engine([*COMMON, "--data", str(token_data), "--out", str(out), "--batch-size", "4", "--resume"])
    record = rank_files(out)[0]
    assert record["resumed_from_step"] is None and losses(out) == losses(single_run)


def test_deepspeed_launcher_runs_the_same_ddp_training(tmp_path, token_data, ddp_run):
    out = tmp_path / "ds"
    launcher = Path(sys.executable).parent / "deepspeed"
    proc = subprocess.run([str(launcher), "--num_gpus", "2", "--module", "hpml_core.train", *COMMON, "--mode", "baseline",
                           "--data", str(token_data), "--out", str(out), "--batch-size", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(rank_files(out)) == [0, 1]
    # The deepspeed launcher leaves OMP_NUM_THREADS alone, unlike torchrun, so CPU kernels may
    # sum in another order: equal up to float32 rounding.
    assert losses(out, 1) == pytest.approx(losses(ddp_run, 1), abs=1e-5)


def test_compiled_model_trains_the_same(tmp_path, token_data, single_run):
    out = tmp_path / "compiled"
    engine([*COMMON, "--data", str(token_data), "--out", str(out), "--batch-size", "4", "--compile"])
    assert losses(out) == pytest.approx(losses(single_run), abs=1e-5)


def test_compiled_zero3_trains_like_uncompiled(trained):
    """Under ZeRO-3, compilation goes through DeepSpeed's engine.compile() (its hooks must see
    the plain modules); the result is the same training, up to float32 rounding of fused kernels."""
    compiled = trained("adamw", "zero3-2", ("--compile",))
    assert losses(compiled) == pytest.approx(losses(trained("adamw", "zero3-2")), abs=1e-5)


def test_compiled_blocks_under_ddp_and_tensor_parallelism_train_like_uncompiled(trained):
    """DP 2 x TP 2 with all-reduce: DDP wraps a model whose blocks are compiled one by one, and
    TP's all-reduces run inside the compiled blocks; the same training (SGD, no clipping: a
    gradient of the wrong scale shows), up to float32 rounding of fused kernels."""
    compiled = trained("sgd", "dp2xtp2-allreduce", ("--compile",))
    plain = trained("sgd", "dp2xtp2-allreduce")
    assert losses(compiled) == pytest.approx(losses(plain), abs=1e-5)
    ours, ref = torch.load(compiled / "model.pt"), torch.load(plain / "model.pt")
    assert max(((ours[k] - ref[k]).norm() / ref[k].norm()).item() for k in ref) <= 1e-5


def test_fsdp2_with_checkpointing_and_compile_trains_like_plain_fsdp2(trained):
    """FSDP2 composes them in torchtitan's order (checkpointing, then compile per block, then
    ``fully_shard``), so FSDP2's hooks stay outside the compiled blocks; the same training, up to
    float32 rounding of fused kernels (measured: losses 2.4e-7 apart)."""
    composed = trained("sgd", "fsdp2-2", ("--grad-ckpt", "--compile"))
    plain = trained("sgd", "fsdp2-2")
    assert losses(composed) == pytest.approx(losses(plain), abs=1e-5)
    ours, ref = torch.load(composed / "model.pt"), torch.load(plain / "model.pt")
    assert max(((ours[k] - ref[k]).norm() / ref[k].norm()).item() for k in ref) <= 1e-5
