"""`hpml report`: rank files (built from the schema, analysis/sample_rank_files.py) to tables, figures
and a page; every figure of summary.csv checked against a hand computation, a run assembled from
its attempts, and the states decided as `hpml status` decides them (Slurm's answers are set by
the test: `slurm_says`)."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from analysis.report import main
from analysis.sample_rank_files import A100, A100_BF16_PEAK, FLOPS_PER_TOKEN, H100, model_state_bytes, write_run
from hpml_core.contract.errors import EXIT_WRITE_REFUSED
from hpml_core.contract.metrics import training_flops_per_token
from hpml_core.contract.model_state import param_numels
from hpml_core.contract.models import model_dims
from hpml_core.contract.units import MIB
from jobs import slurm_query

SEQ = 1024
# The profiled steps of single and ddp-4 (ms; ddp-4-r1 has a corrupt rank file, so r0 is its only measured repeat)
SINGLE_PARTS = {"data": 1.0, "forward": 100.0, "backward": 200.0, "optimizer": 30.0, "other": 2.0}
DDP_PARTS = {"data": 1.0, "forward": 100.0, "backward": 200.0, "optimizer": 30.0, "all-reduce": 150.0, "other": 4.0}


@pytest.fixture
def slurm_says(monkeypatch):
    """What Slurm answers about jobs, set by the test: job id -> state; an exception: no answer."""
    answers: dict = {}

    def query(job_ids):
        if isinstance(answers.get("error"), Exception):
            raise answers["error"]
        return {job: slurm_query.JobInfo(job, answers[job], "0:10", "n1", "sacct") for job in job_ids
                if job in answers}

    monkeypatch.setattr(slurm_query, "query", query)
    return answers


@pytest.fixture
def study(tmp_path, slurm_says):
    """The seed study's layouts and the 1-process runs they are compared with (ZeRO-3 on 1 GPU:
    the ZeRO-3 layouts' weak baseline; single at batch 8 × 4 accumulation: DDP on 4's strong
    one), twice each (repeats: 2), with what goes wrong in real life: an OOM, a missing rank, a
    corrupt rank file, a run still running, one killed by the time limit (which the ledger still
    records as running: the report asks Slurm), one never submitted."""
    exp = tmp_path / "study.yaml"
    exp.write_text(textwrap.dedent("""
        name: study
        dataset: wikitext-103
        defaults: {model: gpt2-large, seq_len: 1024, precision: bf16, steps: 10, time_limit: "01:00:00"}
        repeats: 2
        runs:
          - {name: single, mode: single, gpus: 1, batch_size: 8}
          - {name: ddp-4, mode: ddp, gpus: 4, batch_size: 8}
          - {name: zero3-4, mode: zero3, gpus: 4, batch_size: 8}
          - {name: dp2xtp2-b8, mode: zero3, tp_size: 2, gpus: 4, batch_size: 8}
          - {name: dp2xtp2-b32, mode: zero3, tp_size: 2, gpus: 4, batch_size: 32}
          - {name: big, mode: single, gpus: 1, batch_size: 64}
          - {name: zero3-1, mode: zero3, gpus: 1, batch_size: 8}
          - {name: single-b32, mode: single, gpus: 1, batch_size: 8, grad_accum: 4}
    """))
    site = local_site(tmp_path)
    folder = tmp_path / "results" / "study"
    one = dict(mode="single", world=1, tp=1, batch=8)
    write_run(folder, "single-r0", step_medians=[0.5], memory_gib=[20.0], losses=(9.0, 7.5), parts_ms=SINGLE_PARTS,
              **one)
    write_run(folder, "single-r1", step_medians=[0.4], memory_gib=[22.0], losses=(9.0, 7.0),
              parts_ms={**SINGLE_PARTS, "backward": 250.0}, **one)
    four = dict(mode="ddp", world=4, tp=1, batch=8)
    write_run(folder, "ddp-4-r0", step_medians=[0.5, 0.55, 0.6, 0.52], memory_gib=[21, 21, 21, 23],
              wall_times_s=[60.0, 70.0, 65.0, 60.0], parts_ms=DDP_PARTS, **four)
    write_run(folder, "ddp-4-r1", parts_ms=DDP_PARTS, **four)
    (folder / "ddp-4-r1" / "attempts" / "1" / "rank-2.json").write_text("{not json")
    zero = dict(mode="zero3", world=4, tp=1, batch=8)
    state = sum(model_state_bytes("zero3", 4, 1))  # the memory model 5 % over it, and 25 GiB of training peak
    write_run(folder, "zero3-4-r0", step_medians=[0.8] * 4, memory_gib=[19, 20, 20, 21],
              predicted_state=state + state // 20, predicted_gib=25.0, **zero)
    write_run(folder, "zero3-4-r1", ranks=[0, 1, 2], step_medians=[0.8] * 4, **zero)
    dp_tp = dict(mode="zero3", world=4, tp=2, batch=8)
    write_run(folder, "dp2xtp2-b8-r0", step_medians=[0.3, 0.3, 0.32, 0.3], memory_gib=[6, 6, 6.5, 6], **dp_tp)
    write_run(folder, "dp2xtp2-b8-r1", step_medians=[0.34, 0.3, 0.3, 0.3], memory_gib=[6, 6, 6, 6], **dp_tp)
    (folder / "dp2xtp2-b32-r0").mkdir(parents=True)
    (folder / "dp2xtp2-b32-r0" / "status.json").write_text(json.dumps(
        {"state": "RUNNING", "step": 4, "total_steps": 10, "error": None, "started_at": 0, "updated_at": 1}))
    (folder / "dp2xtp2-b32-r1").mkdir(parents=True)
    (folder / "dp2xtp2-b32-r1" / "status.json").write_text(json.dumps(
        {"state": "RUNNING", "step": 7, "total_steps": 10, "error": None, "started_at": 0, "updated_at": 1}))
    (folder / "ledger.json").write_text(json.dumps({"runs": {
        "dp2xtp2-b32-r0": {"backend": "slurm", "job_id": "7", "state": "RUNNING", "attempts": 1},
        "dp2xtp2-b32-r1": {"backend": "slurm", "job_id": "8", "state": "RUNNING", "attempts": 1},
    }}))
    slurm_says.update({"7": "RUNNING", "8": "TIMEOUT"})
    write_run(folder, "big-r0", status="OUT_OF_MEMORY", mode="single", world=1, tp=1, batch=64,
              error="out of memory at batch size 64 per rank: CUDA out of memory")
    # big-r1: never submitted, no files at all
    z1 = dict(mode="zero3", world=1, tp=1, batch=8)
    write_run(folder, "zero3-1-r0", step_medians=[0.45], memory_gib=[18.0], setup_gib=9.0, **z1)
    write_run(folder, "zero3-1-r1", step_medians=[0.5], memory_gib=[18.5], setup_gib=9.5, **z1)
    b32 = dict(mode="single", world=1, tp=1, batch=8, grad_accum=4)
    write_run(folder, "single-b32-r0", step_medians=[1.8], memory_gib=[20.0], **b32)
    write_run(folder, "single-b32-r1", step_medians=[2.0], memory_gib=[20.0], **b32)
    return exp, site, folder


def local_site(tmp_path):
    """A site profile without Slurm whose results live in tmp_path/results."""
    site = tmp_path / "site.yaml"
    site.write_text(f"name: t\nscheduler: local\nproject_dir: .\nresults_root: {tmp_path / 'results'}\n"
                    f"data_root: {tmp_path}\n")
    return site


def test_every_figure_of_the_summary_matches_a_hand_computation(study, capsys):
    exp, site, folder = study
    assert main([str(exp), "--site", str(site)]) == 0
    summary = pd.read_csv(folder / "report" / "summary.csv").set_index("configuration")

    single = [8 * SEQ / 0.5, 8 * SEQ / 0.4]  # 16384 and 20480 tokens/s
    t1 = (single[0] + single[1]) / 2
    pytorch_state = sum(model_state_bytes("single", 1, 1)) / MIB  # 16 B per parameter, on every DDP rank too
    row = summary.loc["single"]
    assert (row.status, row.runs_completed, row.runs_total) == ("COMPLETED", 2, 2)
    assert row.device_name == A100 and row.regime == "fp32 weights, bf16 autocast"
    assert row.tokens_per_s_median == pytest.approx(t1)
    assert (row.tokens_per_s_min, row.tokens_per_s_max) == pytest.approx((single[0], single[1]))
    assert row.samples_per_s_median == pytest.approx((8 / 0.5 + 8 / 0.4) / 2)
    assert row.mfu_median == pytest.approx(FLOPS_PER_TOKEN * t1 / 1e12 / A100_BF16_PEAK)
    assert row.peak_memory_per_gpu_max_gib_median == pytest.approx(21.0)  # the training peak
    assert row.setup_memory_per_gpu_max_gib_median == pytest.approx(10.5)  # beside it, the setup peak
    assert row.memory_metric == "cuda_max_allocated"
    assert row.model_state_per_gpu_mib_median == pytest.approx(pytorch_state)
    assert row.final_loss_median == pytest.approx(7.25)
    assert (row.baseline, row.scaling_efficiency, row.speedup) == ("single", pytest.approx(1.0), pytest.approx(1.0))
    assert (row.baseline_strong, row.baseline_device) == ("single", A100)  # one process: its own baselines
    assert pd.isna(row.scaling_efficiency_noise)  # not a comparison

    # DDP on 4: the slowest rank (0.6 s) sets the pace; repeat r1 has a corrupt rank file.
    ddp = 4 * 8 * SEQ / 0.6
    row = summary.loc["ddp-4"]
    assert (row.status, row.runs_completed) == ("1/2 COMPLETED", 1)
    assert "ddp-4-r1: FAILED (the rank file of rank(s) 2 is unreadable)" in row.reason
    assert row.tokens_per_s_median == pytest.approx(ddp)
    assert row.tokens_per_s_per_gpu_median == pytest.approx(ddp / 4)
    assert (row.baseline, row.baseline_device) == ("single", A100)
    assert row.scaling_efficiency == pytest.approx(ddp / (4 * t1))
    assert (row.scaling_efficiency_min, row.scaling_efficiency_max) == pytest.approx(
        (ddp / (4 * single[1]), ddp / (4 * single[0])))
    assert row.scaling_efficiency_noise == "no spread: 1 repeat"  # one completed repeat
    assert row.speedup == pytest.approx(ddp / t1)
    assert row.mfu_median == pytest.approx(FLOPS_PER_TOKEN * ddp / 4 / 1e12 / A100_BF16_PEAK)
    assert row.peak_memory_per_gpu_max_gib_median == pytest.approx(23.0)
    assert row.peak_memory_per_gpu_mean_gib_median == pytest.approx(21.5)
    assert row.memory_reduction == pytest.approx(1 - 23.0 / 21.0)
    assert row.model_state_per_gpu_mib_median == pytest.approx(pytorch_state)
    assert row.model_state_reduction == pytest.approx(0.0)  # DDP replicates the model state
    # Strong scaling: against one process training the same global batch, 32 = 8 × 4 accumulation.
    b32 = [32 * SEQ / 1.8, 32 * SEQ / 2.0]
    assert (row.baseline_strong, row.baseline_strong_device) == ("single-b32", A100)
    assert row.speedup_strong == pytest.approx(ddp / (sum(b32) / 2))
    assert row.scaling_efficiency_strong == pytest.approx(ddp / (4 * sum(b32) / 2))
    assert (row.scaling_efficiency_strong_min, row.scaling_efficiency_strong_max) == pytest.approx(
        (ddp / (4 * b32[0]), ddp / (4 * b32[1])))

    # The ZeRO-3 layouts train in bf16 weights with an fp32 master: compared with ZeRO-3 on 1 GPU.
    z1 = [8 * SEQ / 0.45, 8 * SEQ / 0.5]
    zero = 4 * 8 * SEQ / 0.8
    zero3_state = sum(model_state_bytes("zero3", 1, 1)) / MIB
    row = summary.loc["zero3-4"]
    assert "zero3-4-r1: FAILED (no rank file from rank(s) 3: killed before writing it)" in row.reason
    assert (row.tokens_per_s_median, row.tokens_per_s_min, row.tokens_per_s_max) == pytest.approx((zero,) * 3)
    assert row.samples_per_s_median == pytest.approx(32 / 0.8)
    assert row.tokens_per_s_per_gpu_median == pytest.approx(zero / 4)
    assert row.mfu_median == pytest.approx(FLOPS_PER_TOKEN * zero / 4 / 1e12 / A100_BF16_PEAK)
    assert row.peak_memory_per_gpu_max_gib_median == pytest.approx(21.0)
    assert row.peak_memory_per_gpu_mean_gib_median == pytest.approx(20.0)
    assert row.final_loss_median == pytest.approx(7.0)
    assert (row.baseline, row.scaling_efficiency) == ("zero3-1", pytest.approx(zero / (4 * sum(z1) / 2)))
    assert row.memory_reduction == pytest.approx(1 - 21.0 / 18.25)
    assert row.model_state_per_gpu_mib_median == pytest.approx(zero3_state / 4)
    assert row.model_state_reduction == pytest.approx(0.75)
    assert pd.isna(row.baseline_strong) and pd.isna(row.scaling_efficiency_strong)
    assert row.baseline_strong_note == (
        "no completed 1-process run with the same strong-scaling key; the nearest, 'zero3-1', has global batch 8, "
        f"this 32: add a 1-process zero3 run with batch 8, accumulation 4, on {A100}")

    # DP 2 x TP 2: 2 replicas of batch 8 per step, whatever the 4 ranks say: TP ranks count once.
    dp_tp = [2 * 8 * SEQ / 0.32, 2 * 8 * SEQ / 0.34]
    row = summary.loc["dp2xtp2-b8"]
    assert row.tokens_per_s_median == pytest.approx(sum(dp_tp) / 2)
    assert (row.tokens_per_s_min, row.tokens_per_s_max) == pytest.approx((dp_tp[1], dp_tp[0]))
    assert row.tokens_per_s_per_gpu_median == pytest.approx(sum(dp_tp) / 2 / 4)
    assert row.mfu_median == pytest.approx(FLOPS_PER_TOKEN * sum(dp_tp) / 2 / 4 / 1e12 / A100_BF16_PEAK)
    assert row.peak_memory_per_gpu_mean_gib_median == pytest.approx((6.125 + 6.0) / 2)
    assert row.samples_per_s_median == pytest.approx((16 / 0.32 + 16 / 0.34) / 2)
    assert row.baseline == "zero3-1"
    assert row.speedup == pytest.approx(sum(dp_tp) / 2 / (sum(z1) / 2))
    assert (row.speedup_min, row.speedup_max) == pytest.approx((dp_tp[1] / z1[0], dp_tp[0] / z1[1]))
    assert row.scaling_efficiency == pytest.approx(sum(dp_tp) / 2 / (4 * sum(z1) / 2))
    assert (row.scaling_efficiency_min, row.scaling_efficiency_max) == pytest.approx(
        (dp_tp[1] / (4 * z1[0]), dp_tp[0] / (4 * z1[1])))
    # 48188-51200 tokens/s against 4 × (16384-18204): the ranges do not overlap.
    assert (row.speedup_noise, row.scaling_efficiency_noise) == ("beyond noise", "beyond noise")
    assert row.peak_memory_per_gpu_max_gib_median == pytest.approx((6.5 + 6.0) / 2)
    assert row.memory_reduction == pytest.approx(1 - 6.25 / 18.25)
    assert (row.memory_reduction_min, row.memory_reduction_max) == pytest.approx((1 - 6.5 / 18.0, 1 - 6.0 / 18.5))
    assert row.model_state_reduction == pytest.approx(0.75) and row.model_state_reduction_noise == "beyond noise"

    row = summary.loc["dp2xtp2-b32"]
    assert (row.status, row.runs_completed) == ("RUNNING, TIMEOUT", 0)
    assert "dp2xtp2-b32-r0: RUNNING (Slurm (sacct): RUNNING; running, step 4/10)" in row.reason
    assert "dp2xtp2-b32-r1: TIMEOUT (Slurm (sacct): TIMEOUT; ended at step 7/10)" in row.reason
    assert math.isnan(row.tokens_per_s_median) and math.isnan(row.scaling_efficiency)
    assert row.baseline_note == "no completed run"
    row = summary.loc["big"]
    assert row.status == "OUT_OF_MEMORY, NOT_SUBMITTED"
    assert "big-r0: OUT_OF_MEMORY (rank 0: out of memory at batch size 64" in row.reason
    assert "big-r1: NOT_SUBMITTED" in row.reason

    runs = pd.read_csv(folder / "report" / "runs.csv", dtype={"job_ids": str}).set_index("run")
    assert len(runs) == 16
    assert runs.loc["big-r0", "status"] == "OUT_OF_MEMORY" and runs.loc["big-r1", "status"] == "NOT_SUBMITTED"
    assert runs.loc["dp2xtp2-b32-r0", "status"] == "RUNNING" and runs.loc["dp2xtp2-b32-r1", "status"] == "TIMEOUT"
    assert runs.loc["ddp-4-r1", "status"] == "FAILED"
    assert (runs.loc["single-r0", "attempts"], runs.loc["single-r0", "job_ids"]) == (1, "1")
    assert runs.loc["big-r1", "attempts"] == 0
    row = runs.loc["zero3-1-r1"]
    assert (row.peak_memory_per_gpu_max_gib, row.setup_memory_per_gpu_max_gib) == pytest.approx((18.5, 9.5))
    assert (row.regime, row.device_name, row.grad_accum) == ("bf16 weights, fp32 master", A100, 1)
    assert row.model_state_per_gpu_mib == pytest.approx(zero3_state)
    assert (row.model_state_params_mib, row.model_state_grads_mib, row.model_state_optimizer_mib) == pytest.approx(
        tuple(part / MIB for part in model_state_bytes("zero3", 1, 1)))
    assert runs.loc["single-b32-r0", "global_batch"] == 32
    # The report asked Slurm and used its word (TIMEOUT, above), but recorded nothing: the ledger
    # is as the study wrote it (`hpml status` records; the report writes only report/).
    assert json.loads((folder / "ledger.json").read_text())["runs"]["dp2xtp2-b32-r1"] == {
        "backend": "slurm", "job_id": "8", "state": "RUNNING", "attempts": 1}

    markdown = (folder / "report" / "summary.md").read_text()
    assert ("| Configuration | Description | Memory (GiB/GPU) | Model state (MiB/GPU) | Predicted − measured "
            "(state; peak; tokens/s) | MFU | Tokens/s | Weak scaling eff. | Strong scaling eff. | Status |") in markdown
    assert "States:" not in markdown  # Slurm answered
    corrupt = folder / "ddp-4-r1" / "attempts" / "1" / "rank-2.json"
    assert f"{corrupt}: does not match the rank-file schema (not JSON)" in markdown
    assert "| dp2xtp2-b8 | DP 2 (ZeRO-3) x TP 2 on 4 GPUs, batch 8/GPU, bf16 (bf16 weights, fp32 master) | " \
           "6.25 [6.00–6.50]; setup 3.12 | 2,952.6 (−75%) |" in markdown
    assert "| 72% [66–78] | n/a | COMPLETED |" in markdown  # its weak efficiency, with the interval
    assert "| single | single GPU, batch 8/GPU, bf16 (fp32 weights, bf16 autocast) | 21.00 [20.00–22.00]; " \
           "setup 10.50 | 11,810.3 |" in markdown
    assert "| 74% | 79% | 1/2 COMPLETED |" in markdown  # ddp-4: one completed repeat, no interval
    assert "| 100% (baseline) | 100% (baseline) | COMPLETED |" in markdown
    assert (f"- Scaling efficiency (weak) T_N / (N × T_1) against 'single' on {A100} (1 process, same batch per GPU "
            "and accumulation; speedup T_N / T_1 and memory and model-state reductions 1 − M_N / M_1 against it "
            "too) for: ddp-4.") in markdown
    assert f"against 'zero3-1' on {A100} (1 process, same batch" in markdown
    assert "for: zero3-4, dp2xtp2-b8." in markdown
    assert (f"- Scaling efficiency (strong) T_N / (N × T_1) against 'single-b32' on {A100} (1 process, same global "
            "batch, by accumulation; speedup T_N / T_1 too) for: ddp-4.") in markdown
    assert "No comparison is within noise (" in markdown
    assert ("Precision regime 'bf16 weights, fp32 master' (weights bf16, master fp32, matmul bf16, grad reduce bf16, "
            "cast model): zero3-4, dp2xtp2-b8, zero3-1.") in markdown
    assert ("Peak used for MFU: NVIDIA A100 dense bf16 tensor core, 312 TFLOP/s (single, ddp-4, zero3-4, dp2xtp2-b8, "
            "zero3-1, single-b32).") in markdown
    assert "Step time: CUDA events." in markdown
    assert "Spread: each figure is the median over a configuration's completed repeats on one device" in markdown
    tex = (folder / "report" / "summary.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and "dp2xtp2-b8" in tex
    assert r"\begin{tabular}{llrrrrrrrl}" in tex
    out = capsys.readouterr().out
    assert "single" in out and "report.html" in out and str(folder / "report") in out


def test_predicted_memory_and_the_hours_spent_match_a_hand_computation(study):
    """The sample files predict the measured model state exactly and 90 % of each rank's
    training peak, except zero3-4-r0 (5 % over on model state, 25 GiB of peak); each rank ran 60 s
    of wall time, ddp-4-r0's slowest 70 s."""
    exp, site, folder = study
    assert main([str(exp), "--site", str(site)]) == 0
    summary = pd.read_csv(folder / "report" / "summary.csv").set_index("configuration")
    runs = pd.read_csv(folder / "report" / "runs.csv").set_index("run")
    pytorch_state = sum(model_state_bytes("single", 1, 1)) / MIB
    row = summary.loc["single"]  # peaks 20 and 22 GiB, predicted 18 and 19.8
    assert row.predicted_model_state_mib_median == pytest.approx(pytorch_state)
    assert row.model_state_error_pct_median == pytest.approx(0.0)
    assert (row.predicted_peak_gib_median, row.predicted_peak_gib_min) == pytest.approx((18.9, 18.0))
    assert (row.peak_error_pct_median, row.peak_error_pct_min, row.peak_error_pct_max) == pytest.approx((-10.0,) * 3)
    assert pd.isna(row.prediction_note)
    # DDP on 4: the largest prediction (0.9 × 23 GiB) against the largest measured peak, 23 GiB.
    row = runs.loc["ddp-4-r0"]
    assert (row.predicted_peak_gib, row.peak_error_pct) == pytest.approx((20.7, -10.0))
    state = sum(model_state_bytes("zero3", 4, 1))
    row = runs.loc["zero3-4-r0"]
    assert row.model_state_error_pct == pytest.approx(100 * (state // 20) / state)
    assert row.predicted_model_state_mib == pytest.approx((state + state // 20) / MIB)
    assert (row.predicted_peak_gib, row.peak_error_pct) == pytest.approx((25.0, 100 * (25 - 21) / 21))
    assert summary.loc["zero3-4", "peak_error_pct_median"] == pytest.approx(100 * 4 / 21)  # its one completed repeat
    assert pd.isna(summary.loc["big", "predicted_model_state_mib_median"])  # nothing completed

    # Hours: every attempt with rank files, failed and out-of-memory ones too: slowest wall time × world size.
    assert runs.loc["ddp-4-r0", "device_hours"] == pytest.approx(70 * 4 / 3600)
    assert runs.loc["ddp-4-r1", "device_hours"] == pytest.approx(60 * 4 / 3600)  # FAILED: a corrupt rank file
    assert runs.loc["zero3-4-r1", "device_hours"] == pytest.approx(60 * 4 / 3600)  # rank 3 never wrote its file
    assert runs.loc["big-r0", "device_hours"] == pytest.approx(60 / 3600)  # out of memory
    assert pd.isna(runs.loc["big-r1", "device_hours"])  # never submitted
    # Killed before any rank wrote a file (the time limit), or still running: Slurm's elapsed time
    # (0:10 here) × the run's 4 GPUs; the others' jobs ("1") Slurm has forgotten: wall time.
    assert runs.loc["dp2xtp2-b32-r1", "device_hours"] == pytest.approx(10 * 4 / 3600)
    assert runs.loc["dp2xtp2-b32-r1", "device_hours_source"] == "Slurm elapsed"
    assert runs.loc["ddp-4-r0", "device_hours_source"] == "rank files' wall time"
    assert runs.loc["single-r0", "device_hours_unit"] == "GPU-hours"
    assert summary.loc["ddp-4", "device_hours_total"] == pytest.approx((280 + 240) / 3600)
    assert summary.loc["big", "device_hours_total"] == pytest.approx(60 / 3600)
    total = (120 + 520 + 480 + 480 + 80 + 60 + 120 + 120) / 3600  # single, ddp-4, zero3-4, dp2xtp2-b8, -b32, big,
    # zero3-1, b32
    markdown = (folder / "report" / "summary.md").read_text()
    assert f"- Spent: {total:.3g} GPU-hours in all (single 0.0333; ddp-4 0.144; zero3-4 0.133;" in markdown
    assert "each Slurm job, failed, out-of-memory and killed ones included: Slurm's elapsed time" in markdown
    assert "an attempt without Slurm that wrote no rank file is not counted." in markdown
    # Predicted tokens/s at the site's stated speed (the defaults: 40 % of the A100's 312 TFLOP/s,
    # 100 GB/s within the node): one process computes and updates (AdamW and clipping, 40 B per
    # parameter at the A100 80GB's 2039 GB/s); DDP on 4 adds the ring all-reduce of its fp32
    # gradients, 2 × 3/4 of them, of which all but the last 25 MiB bucket hides behind the backward.
    dims = model_dims("gpt2-large", 50257)  # the sample files' padded vocabulary, 50304
    flops = training_flops_per_token(dims, 1024)  # the formula on the model, not the files' round figure
    params = sum(n for _, n in param_numels(dims, 1))
    compute, optimizer = 8 * 1024 * flops / (0.4 * A100_BF16_PEAK * 1e12), params * 40 / 2039e9
    single = 8 * 1024 / (compute + optimizer)
    assert runs.loc["single-r0", "predicted_tokens_per_s"] == pytest.approx(single)
    assert runs.loc["single-r0", "tokens_per_s_error_pct"] == pytest.approx(100 * (single - 16384) / 16384)
    all_reduce = 2 * 3 / 4 * params * 4 / 100e9
    hidden = min(all_reduce * (1 - 25 * 2**20 / (params * 4)), 2 / 3 * compute)
    ddp_step = compute + optimizer + all_reduce - hidden
    assert runs.loc["ddp-4-r0", "predicted_tokens_per_s"] == pytest.approx(4 * 8 * 1024 / ddp_step)
    single_error = summary.loc["single", "tokens_per_s_error_pct_median"]
    assert single_error == pytest.approx(runs.loc[["single-r0", "single-r1"], "tokens_per_s_error_pct"].median())
    # The table: model state's error; the training peak's; tokens/s'.
    assert f"| 11,810.3 | +0.0%; −10.0%; +{single_error:.1f}% |" in markdown  # single
    assert f"| +{100 * (state // 20) / state:.1f}%; +{400 / 21:.1f}%; +" in markdown  # zero3-4
    assert "- Predicted tokens/s: the step-time model (hpml_core/contract/step_time.py" in markdown
    assert "- Predicted − measured: the memory model's prediction" in markdown
    assert (folder / "report" / "predicted_vs_measured.png").stat().st_size > 0
    assert (folder / "report" / "predicted_vs_measured.svg").stat().st_size > 0


def test_on_a_cpu_the_peak_is_not_compared_and_older_files_have_no_prediction(tmp_path, slurm_says):
    exp = tmp_path / "cpu.yaml"
    exp.write_text("name: cpu\ndataset: d\ndefaults: {model: gpt2-large, steps: 10}\n"
                   "runs: [{name: single, mode: single}, {name: ddp-2, mode: ddp, gpus: 2}]\n")
    folder = tmp_path / "results" / "cpu"
    write_run(folder, "single", mode="single", world=1, tp=1, batch=8, device="cpu", prediction=False)
    write_run(folder, "ddp-2", mode="ddp", world=2, tp=1, batch=8, device="cpu", wall_times_s=[90.0, 120.0])
    assert main([str(exp), "--site", str(local_site(tmp_path))]) == 0
    summary = pd.read_csv(folder / "report" / "summary.csv").set_index("configuration")
    row = summary.loc["ddp-2"]
    assert row.model_state_error_pct_median == pytest.approx(0.0)  # model state: compared on any device
    assert pd.isna(row.peak_error_pct_median) and pd.isna(row.predicted_peak_gib_median)
    assert row.prediction_note.startswith("on a CPU the training peak is not compared")
    assert (row.device_hours_total, row.device_hours_unit) == (pytest.approx(240 / 3600), "process-hours")
    row = summary.loc["single"]  # written before the engine recorded its prediction
    assert pd.isna(row.model_state_error_pct_median) and pd.isna(row.peak_error_pct_median)
    assert row.prediction_note == "its rank files hold no memory prediction (written before hpml recorded it)"
    markdown = (folder / "report" / "summary.md").read_text()
    # CPU processes: the test's site states no device_tflops, so no predicted tokens/s either.
    assert "| +0.0%; n/a; n/a |" in markdown
    assert "- Predicted tokens/s n/a for single, ddp-2: no GPU peak on record and no device_tflops" in markdown
    assert ("- Prediction n/a for single: its rank files hold no memory prediction (written before hpml recorded "
            "it).") in markdown
    assert "- Predicted peak n/a for ddp-2: on a CPU the training peak is not compared" in markdown
    assert "- Spent: 0.0833 process-hours in all (single 0.0167; ddp-2 0.0667)" in markdown


def test_an_engine_run_records_a_prediction_whose_model_state_equals_the_measured(tmp_path, token_data, slurm_says):
    """One real 1-process run on the CPU: the rank file's predicted model state is the measured
    one to the byte, and the report says +0.0%."""
    from tests.conftest import engine, rank_files

    out = tmp_path / "results" / "real" / "single"
    engine(["--test", "--precision", "fp32", "--steps", "3", "--warmup-steps", "1", "--data", str(token_data),
            "--out", str(out), "--batch-size", "2"])
    record = rank_files(out)[0]
    prediction, state = record["prediction"], record["model_state"]
    assert prediction["device_type"] == "cpu"
    assert prediction["model_state_bytes"] == state["total_bytes"]
    assert prediction["allocated_bytes"] == prediction["total_bytes"] == sum(
        line["bytes"] for line in prediction["lines"])  # no CUDA context on a CPU
    exp = tmp_path / "real.yaml"
    exp.write_text("name: real\ndataset: d\ndefaults: {steps: 3, warmup_steps: 1}\n"
                   "runs: [{name: single, mode: single}]\n")
    assert main([str(exp), "--site", str(local_site(tmp_path))]) == 0
    summary = pd.read_csv(tmp_path / "results" / "real" / "report" / "summary.csv").set_index("configuration")
    assert summary.loc["single", "model_state_error_pct_median"] == 0.0


def test_energy_per_token_counts_each_gpu_once_and_says_why_it_is_missing(tmp_path, slurm_says):
    """Joules per token from the rank files' readings, never a rank's own figure (a decoy in the
    samples): four GPUs summed; four ranks sharing one GPU read its one counter, counted once
    (their mean); a rank without a reading makes the run's figure n/a, with its reason."""
    exp = tmp_path / "energy.yaml"
    exp.write_text("name: energy\ndataset: d\ndefaults: {model: gpt2-large, steps: 10}\nrepeats: 2\n"
                   "runs: [{name: ddp-4, mode: ddp, gpus: 4}, {name: shared, mode: ddp, gpus: 4},"
                   " {name: single, mode: single}]\n")
    folder = tmp_path / "results" / "energy"
    four = dict(mode="ddp", world=4, tp=1, batch=8)
    write_run(folder, "ddp-4-r0", joules=[100.0, 110.0, 120.0, 130.0], **four)
    write_run(folder, "ddp-4-r1", joules=[200.0, 200.0, 200.0, 200.0], **four)
    write_run(folder, "shared-r0", joules=[100.0, 102.0, 98.0, 100.0], gpus=["00000000:3B:00.0"] * 4, **four)
    write_run(folder, "shared-r1", joules=[100.0, 100.0, None, 100.0], gpus=["00000000:3B:00.0"] * 4, **four)
    write_run(folder, "single-r0", mode="single", world=1, tp=1, batch=8, device="cpu")
    write_run(folder, "single-r1", mode="single", world=1, tp=1, batch=8, device="cpu")
    assert main([str(exp), "--site", str(local_site(tmp_path))]) == 0
    runs = pd.read_csv(folder / "report" / "runs.csv").set_index("run")
    tokens = 5 * 4 * 8 * SEQ  # 5 timed steps of the global batch
    assert runs.loc["ddp-4-r0"].joules_per_token == pytest.approx(460.0 / tokens)
    assert runs.loc["ddp-4-r1"].joules_per_token == pytest.approx(800.0 / tokens)
    assert runs.loc["shared-r0"].joules_per_token == pytest.approx(100.0 / tokens)
    assert pd.isna(runs.loc["shared-r1"].joules_per_token)
    assert runs.loc["shared-r1"].energy_missing_reason.startswith("NVML's energy counter could not be read")
    summary = pd.read_csv(folder / "report" / "summary.csv").set_index("configuration")
    assert summary.loc["ddp-4"].joules_per_token_median == pytest.approx(630.0 / tokens)
    assert summary.loc["shared"].joules_per_token_median == pytest.approx(100.0 / tokens)  # the one reading
    assert pd.isna(summary.loc["single"].joules_per_token_median)
    page = (folder / "report" / "report.html").read_text()
    assert f"<td>{630 / tokens * 1000:,.2f}<br>[{460 / tokens * 1000:,.2f}–{800 / tokens * 1000:,.2f}]</td>" in page
    assert "Energy n/a: no energy counter on a cpu device (NVML measures NVIDIA GPUs)" in page


def test_scaling_efficiency_is_missing_without_a_matching_baseline(study):
    """Without the 1-process ZeRO-3 runs, the ZeRO-3 layouts have no baseline in their precision
    regime: 'single' trains in another, and the reason says so; without 'single' either, DDP's
    nearest 1-process run differs in its accumulation."""
    exp, site, folder = study
    for run in ("zero3-1-r0", "zero3-1-r1", "single-r0", "single-r1"):
        shutil.rmtree(folder / run)
    assert main([str(exp), "--site", str(site)]) == 0
    summary = pd.read_csv(folder / "report" / "summary.csv").set_index("configuration")
    assert summary.loc[["ddp-4", "zero3-4", "dp2xtp2-b8"], "scaling_efficiency"].isna().all()
    assert summary.loc["zero3-4", "baseline_note"] == (
        "no completed 1-process run with the same weak-scaling key; the nearest, 'single-b32', accumulates 4 "
        "micro-steps, this 1; trains in fp32 weights, bf16 autocast, this in bf16 weights, fp32 master: add a "
        f"1-process zero3 run with batch 8, accumulation 1, on {A100}")
    assert summary.loc["ddp-4", "baseline_note"] == (
        "no completed 1-process run with the same weak-scaling key; the nearest, 'single-b32', accumulates 4 "
        f"micro-steps, this 1: add a 1-process single run with batch 8, accumulation 1, on {A100}")
    assert summary.loc["ddp-4", "baseline_strong"] == "single-b32"  # the strong view still has one
    markdown = (folder / "report" / "summary.md").read_text()
    assert "- zero3-4: scaling efficiency (weak) n/a: no completed 1-process run" in markdown


def test_a_regime_mismatch_is_named_in_the_reason(study):
    """ZeRO-3 on 4 with only the PyTorch path's 1-process run at its batch: n/a, and why."""
    exp, site, folder = study
    for run in ("zero3-1-r0", "zero3-1-r1"):
        shutil.rmtree(folder / run)
    assert main([str(exp), "--site", str(site)]) == 0
    summary = pd.read_csv(folder / "report" / "summary.csv").set_index("configuration")
    assert summary.loc["zero3-4", "baseline_note"] == (
        "no completed 1-process run with the same weak-scaling key; the nearest, 'single', trains in fp32 weights, "
        "bf16 autocast, this in bf16 weights, fp32 master: add a 1-process zero3 run with batch 8, accumulation 1, "
        f"on {A100}")
    assert summary.loc["ddp-4", "baseline"] == "single"


def devices_study(tmp_path, single_devices: list[str]):
    """single (1 GPU) with one repeat on each of ``single_devices``, DDP on 4 twice on an H100."""
    exp = tmp_path / "devices.yaml"
    exp.write_text("name: devices\ndataset: d\ndefaults: {model: gpt2-large, steps: 10}\nrepeats: 2\n"
                   "runs: [{name: single, mode: single, batch_size: 8}, {name: ddp-4, mode: ddp, gpus: 4, batch_size: 8}]\n")
    folder = tmp_path / "results" / "devices"
    for repeat, (device, step) in enumerate(zip(single_devices, (0.5, 0.25))):
        write_run(folder, f"single-r{repeat}", mode="single", world=1, tp=1, batch=8, device_name=device,
                  step_medians=[step])
    for repeat in range(2):
        write_run(folder, f"ddp-4-r{repeat}", mode="ddp", world=4, tp=1, batch=8, device_name=H100,
                  step_medians=[0.3] * 4)
    assert main([str(exp), "--site", str(local_site(tmp_path))]) == 0
    return folder / "report"


def test_a_baseline_on_other_hardware_gives_n_a_with_the_reason(tmp_path, slurm_says):
    report = devices_study(tmp_path, [A100, A100])
    summary = pd.read_csv(report / "summary.csv").set_index("configuration")
    row = summary.loc["ddp-4"]
    assert pd.isna(row.scaling_efficiency) and pd.isna(row.scaling_efficiency_strong) and pd.isna(row.speedup)
    assert row.baseline_note == (
        f"no completed 1-process run with the same weak-scaling key; the nearest, 'single', ran on {A100}, this on "
        f"{H100}: add a 1-process single run with batch 8, accumulation 1, on {H100}")
    assert row.mfu_median == pytest.approx(FLOPS_PER_TOKEN * 32 * SEQ / 0.3 / 4 / 1e12 / 989.0)  # the H100's peak
    markdown = (report / "summary.md").read_text()
    assert f"- ddp-4: scaling efficiency (weak) n/a: no completed 1-process run with the same weak-scaling key; " \
           f"the nearest, 'single', ran on {A100}, this on {H100}" in markdown


def test_repeats_on_two_devices_are_two_rows_never_one_median(tmp_path, slurm_says):
    report = devices_study(tmp_path, [A100, H100])
    summary = pd.read_csv(report / "summary.csv")
    singles = summary[summary["configuration"] == "single"].set_index("device_name")
    assert sorted(singles.index) == sorted([A100, H100]) and set(singles["runs_completed"]) == {1}
    assert singles.loc[A100, "tokens_per_s_median"] == pytest.approx(8 * SEQ / 0.5)  # its own run, not a median
    assert singles.loc[H100, "tokens_per_s_median"] == pytest.approx(8 * SEQ / 0.25)
    assert singles.loc[H100, "label"] == f"single ({H100})"
    row = summary.set_index("configuration").loc["ddp-4"]
    assert (row.baseline, row.baseline_device) == ("single", H100)
    assert row.scaling_efficiency == pytest.approx((32 * SEQ / 0.3) / (4 * 8 * SEQ / 0.25))
    assert row.scaling_efficiency_noise == "no spread: 1 repeat"
    markdown = (report / "summary.md").read_text()
    assert f"| single ({A100}) |" in markdown and f"| single ({H100}) |" in markdown
    assert f"- Scaling efficiency (weak) T_N / (N × T_1) against 'single ({H100})' on {H100}" in markdown


def test_with_three_repeats_every_figure_has_its_spread_and_overlaps_are_within_noise(tmp_path, slurm_says):
    """single, DDP on 2 and single at DDP's global batch (8 × 2 accumulation), three repeats
    each. DDP's tokens/s range (29,789-36,409) overlaps 2 × single's (32,768-40,960): its weak
    efficiency is within noise; its speedup range (1.45-2.22) does not hold 1: beyond noise."""
    exp = tmp_path / "noise.yaml"
    exp.write_text(textwrap.dedent("""
        name: noise
        dataset: d
        defaults: {model: gpt2-large, steps: 10}
        repeats: 3
        runs:
          - {name: single, mode: single, batch_size: 8}
          - {name: ddp-2, mode: ddp, gpus: 2, batch_size: 8}
          - {name: single-b16, mode: single, batch_size: 8, grad_accum: 2}
    """))
    folder = tmp_path / "results" / "noise"
    for repeat, (one, two, accumulated, memory) in enumerate(
            zip((0.5, 0.4, 0.45), (0.45, 0.5, 0.55), (0.9, 1.0, 0.95), (20.0, 22.0, 21.0))):
        write_run(folder, f"single-r{repeat}", mode="single", world=1, tp=1, batch=8, step_medians=[one],
                  memory_gib=[memory])
        write_run(folder, f"ddp-2-r{repeat}", mode="ddp", world=2, tp=1, batch=8, step_medians=[two, two],
                  memory_gib=[memory + 1] * 2)
        write_run(folder, f"single-b16-r{repeat}", mode="single", world=1, tp=1, batch=8, grad_accum=2,
                  step_medians=[accumulated])
    assert main([str(exp), "--site", str(local_site(tmp_path))]) == 0
    summary = pd.read_csv(folder / "report" / "summary.csv").set_index("configuration")
    t1 = [8 * SEQ / s for s in (0.5, 0.4, 0.45)]
    tn = [16 * SEQ / s for s in (0.45, 0.5, 0.55)]
    ts = [16 * SEQ / s for s in (0.9, 1.0, 0.95)]
    row = summary.loc["ddp-2"]
    assert row.scaling_efficiency == pytest.approx(sorted(tn)[1] / (2 * sorted(t1)[1]))
    assert (row.scaling_efficiency_min, row.scaling_efficiency_max) == pytest.approx(
        (min(tn) / (2 * max(t1)), max(tn) / (2 * min(t1))))
    assert row.scaling_efficiency_noise == "within noise"
    assert (row.speedup_min, row.speedup_max) == pytest.approx((min(tn) / max(t1), max(tn) / min(t1)))
    assert row.speedup_noise == "beyond noise"
    assert row.speedup_strong == pytest.approx(sorted(tn)[1] / sorted(ts)[1])
    assert (row.scaling_efficiency_strong_min, row.scaling_efficiency_strong_max) == pytest.approx(
        (min(tn) / (2 * max(ts)), max(tn) / (2 * min(ts))))
    assert row.scaling_efficiency_strong_noise == "within noise"
    # Memory 21-23 GiB against 20-22: within noise; DDP holds the same model state as one process.
    assert row.memory_reduction == pytest.approx(1 - 22.0 / 21.0)
    assert row.memory_reduction_noise == "within noise"
    assert (row.model_state_reduction, row.model_state_reduction_noise) == (pytest.approx(0.0), "within noise")
    assert (row.tokens_per_s_min, row.tokens_per_s_max) == pytest.approx((min(tn), max(tn)))
    markdown = (folder / "report" / "summary.md").read_text()
    assert "| 90% [73–111], within noise | 95% [82–111], within noise | COMPLETED |" in markdown
    assert "22.00 [21.00–23.00]; setup 11.00" in markdown
    assert (f"- Within noise (the two ranges overlap): weak scaling efficiency of ddp-2 against 'single' on {A100}; "
            f"memory reduction of ddp-2 against 'single' on {A100}; model-state reduction of ddp-2 against 'single' "
            f"on {A100}; strong scaling efficiency of ddp-2 against 'single-b16' on {A100}.") in markdown
    assert "min–max rather than a 95% interval" in markdown


def test_rank_files_without_the_phase_split_or_the_regime_fall_back_and_say_so(tmp_path, slurm_says):
    """Files from an engine that measured neither memory phases nor the regime: the whole
    process's peak, no setup figure, the regime derived from mode and precision."""
    exp = tmp_path / "old.yaml"
    exp.write_text("name: old\ndataset: d\ndefaults: {model: gpt2-large, steps: 10}\n"
                   "runs: [{name: single, mode: single}, {name: zero3-2, mode: zero3, gpus: 2}, "
                   "{name: ddp-2, mode: ddp, gpus: 2}]\n")
    folder = tmp_path / "results" / "old"
    old = dict(phases=False, regime_recorded=False, setup_gib=30.0)
    write_run(folder, "single", mode="single", world=1, tp=1, batch=8, memory_gib=[20.0], **old)
    write_run(folder, "zero3-2", mode="zero3", world=2, tp=1, batch=8, memory_gib=[12.0, 12.0], setup_gib=4.0)
    write_run(folder, "ddp-2", mode="ddp", world=2, tp=1, batch=8, memory_gib=[12.0, 12.0])
    assert main([str(exp), "--site", str(local_site(tmp_path))]) == 0
    summary = pd.read_csv(folder / "report" / "summary.csv").set_index("configuration")
    row = summary.loc["single"]
    assert row.memory_metric == "cuda_max_allocated_process"
    assert row.peak_memory_per_gpu_max_gib_median == pytest.approx(30.0)  # the whole process: setup's peak
    assert pd.isna(row.setup_memory_per_gpu_max_gib_median)
    assert row.regime == "fp32 weights, bf16 autocast"
    assert summary.loc["zero3-2", "regime"] == "bf16 weights, fp32 master"
    assert summary.loc["zero3-2", "setup_memory_per_gpu_max_gib_median"] == pytest.approx(4.0)
    row = summary.loc["ddp-2"]  # compared with the old 'single': a training peak is no ratio of a whole-process one
    assert row.baseline == "single" and row.scaling_efficiency == pytest.approx(1.0)
    assert pd.isna(row.memory_reduction)
    assert row.memory_reduction_note == "the baseline's memory is cuda_max_allocated_process, this cuda_max_allocated"
    assert row.model_state_reduction == pytest.approx(0.0)
    markdown = (folder / "report" / "summary.md").read_text()
    assert ("- Memory of single: the whole process's peak (CUDA max_memory_allocated), setup included, and no setup "
            "figure: their rank files have no training/setup split (written before hpml measured phases).") in markdown
    assert "| 30.00 (whole process) |" in markdown
    assert "| 12.00; setup 4.00 |" in markdown


def test_a_report_replaces_the_old_one_only_when_complete(study):
    exp, site, folder = study
    assert main([str(exp), "--site", str(site)]) == 0
    first = (folder / "report" / "summary.csv").read_text()
    assert main([str(exp), "--site", str(site)]) == 0
    assert (folder / "report" / "summary.csv").read_text() == first
    assert not [p for p in folder.iterdir() if p.name.startswith(".report")]


def test_unknown_experiment_is_a_usage_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_report_html_opens_in_headless_chromium_with_every_figure_drawn(study, tmp_path):
    """Every figure embedded, decoded and not blank (pixels drawn into a canvas differ), and no
    console error: the page is read offline, from the file. It reads like a results section:
    the measured figures above the results table, the results table above the predicted-against-
    measured table (its figure right above it), the runs last, and each table's numbered notes
    right under it. A screenshot of the page as loaded is saved in the test's folder
    (report-page.png)."""
    from analysis import screenshot

    if screenshot.browser_paths() is None:
        message = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("HPML_CI"):
            pytest.fail(message)
        pytest.skip(message)
    exp, site, folder = study
    assert main([str(exp), "--site", str(site)]) == 0
    with screenshot.headless() as driver:
        driver.get((folder / "report" / "report.html").as_uri())
        images = driver.execute_script("""
            return Array.from(document.images).map(img => {
                const canvas = document.createElement('canvas');
                canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
                const context = canvas.getContext('2d');
                context.drawImage(img, 0, 0);
                const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
                const colours = new Set();
                for (let i = 0; i < pixels.length && colours.size < 10; i += 4 * 97) colours.add(pixels.slice(i, i + 4).join());
                return {alt: img.alt, complete: img.complete, width: img.naturalWidth, colours: colours.size};
            });""")
        layout = driver.execute_script("""
            const box = el => { const r = el.getBoundingClientRect();
                                return {top: r.top + window.scrollY, bottom: r.bottom + window.scrollY}; };
            const out = {figures: {}, tables: {}, notes: {}, next: {}, items: {}};
            for (const img of document.images) out.figures[img.alt] = box(img.closest('figure'));
            for (const id of ['results', 'time', 'collectives', 'predictions', 'part-predictions', 'runs']) {
                const table = document.getElementById(id + '-table'), notes = document.getElementById(id + '-notes');
                out.tables[id] = box(table);
                out.notes[id] = notes ? box(notes) : null;
                out.next[id] = table.nextElementSibling ? table.nextElementSibling.id : null;
                out.items[id] = notes ? notes.tagName + ':' + notes.children.length : null;
            }
            out.headers = Array.from(document.querySelectorAll('#results-table th')).map(th => th.textContent);
            return out;""")
        page_png = screenshot.full_page_png(driver)
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    (tmp_path / "report-page.png").write_bytes(page_png)
    assert page_png.startswith(b"\x89PNG") and len(page_png) > 10_000
    assert sorted(image["alt"] for image in images) == ["loss", "memory", "mfu_vs_batch", "predicted_vs_measured",
                                                        "throughput", "where_time_goes"]
    assert all(image["complete"] and image["width"] > 100 and image["colours"] > 2 for image in images), images
    assert errors == []

    figures, tables, notes = layout["figures"], layout["tables"], layout["notes"]
    for name in ("throughput", "memory", "mfu_vs_batch", "loss"):
        assert figures[name]["bottom"] <= tables["results"]["top"], name
    assert tables["results"]["bottom"] <= notes["results"]["top"] <= figures["where_time_goes"]["top"]
    assert figures["where_time_goes"]["bottom"] <= tables["time"]["top"] <= notes["time"]["top"]
    assert notes["time"]["bottom"] <= tables["collectives"]["top"] <= notes["collectives"]["top"]
    assert notes["collectives"]["bottom"] <= tables["predictions"]["top"]
    assert tables["results"]["bottom"] <= figures["predicted_vs_measured"]["top"]
    assert figures["predicted_vs_measured"]["bottom"] <= tables["predictions"]["top"]
    assert tables["predictions"]["bottom"] <= notes["predictions"]["top"] <= tables["part-predictions"]["top"]
    assert notes["part-predictions"]["bottom"] <= tables["runs"]["top"] <= notes["runs"]["top"]
    assert layout["next"] == {id_: f"{id_}-notes" for id_ in layout["next"]}
    assert layout["items"]["results"].startswith("OL:") and int(layout["items"]["results"][3:]) > 5  # numbered
    assert layout["headers"] == ["Configuration", "Repeats", "Tokens/s", "MFU", "Energy (mJ/token)",
                                 "Memory (GiB/GPU)", "Model state (MiB/GPU)", "Weak scaling eff.", "Strong scaling eff."]


def test_where_the_time_goes_matches_a_hand_computation(study):
    """Each configuration's parts (its median repeat's), the bytes against the contract, and the
    finding against the baseline, worded from those figures."""
    exp, site, folder = study
    assert main([str(exp), "--site", str(site)]) == 0
    parts = {(row["configuration"], row["part"]): row for row in csv.DictReader(
        (folder / "report" / "time_parts.csv").open())}
    assert float(parts["single", "backward"]["measured_ms"]) == 200.0  # r0's 333 ms step, not r1's 383 ms
    assert float(parts["ddp-4", "all-reduce"]["measured_ms"]) == 150.0
    assert float(parts["ddp-4", "all-reduce"]["measured_share"]) == pytest.approx(150 / 485)
    assert parts["ddp-4", "data"]["predicted_ms"] == ""  # not predicted: missing, not 0
    assert float(parts["ddp-4", "forward"]["predicted_ms"]) > 0
    assert {c for c, _ in parts} == {"single", "ddp-4"}  # the other configurations were not profiled
    kinds = list(csv.DictReader((folder / "report" / "collectives.csv").open()))
    assert [(k["configuration"], k["kind"], k["matches"]) for k in kinds] == [("ddp-4", "all-reduce", "True")]
    summary = (folder / "report" / "summary.md").read_text()
    assert ("ddp-4: 31% of the step is exposed all-reduce (150 ms); the baseline has none (single). Compute "
            "(forward, backward, recompute) is 62% of the step against 90%; the step takes 1.5× the baseline's "
            "(485 ms against 333 ms); 0 ms of 150 ms in flight hidden under compute.") in summary
    assert "zero3-4: no profiled step: rank 0: --profile-steps 0." in summary


def test_the_efficiency_figure_shows_only_the_configurations_with_a_baseline(study):
    """A 1-process configuration is its own baseline: its 100 % is no result, and a
    configuration without a baseline has nothing to show."""
    from analysis.baselines import summarize
    from analysis.collect import collect
    from analysis.configurations import configuration_rows
    from analysis.figures import efficiency_rows
    from analysis.runs import run_rows
    from jobs import experiment

    exp, _, folder = study
    study_ = experiment.load(exp)
    results, _, _ = collect(folder, study_.world_sizes, repeated=True)
    rows = summarize(configuration_rows(run_rows(results)))
    assert [row.label for row in efficiency_rows(rows)] == ["ddp-4", "zero3-4", "dp2xtp2-b8"]
    assert {row.label for row in rows} - {row.label for row in efficiency_rows(rows)} == {
        "single", "big", "zero3-1", "single-b32", "dp2xtp2-b32"}


def _drop_capabilities() -> None:
    """Root without its capabilities: file modes then bind it as they bind any owner (a file 444
    cannot be written, a folder 555 gains no entry), and its securebits, locked first, keep an
    ``exec`` from handing them back. Linux's capset(2) and prctl(2), through ctypes."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_securebits, noroot, noroot_locked = 28, 1 << 0, 1 << 1

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    if libc.prctl(pr_set_securebits, noroot | noroot_locked, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECUREBITS)")
    version_3 = 0x20080522  # two Data structs: capabilities 0-31 and 32-63, all zero
    if libc.capset(ctypes.byref(Header(version_3, 0)), (Data * 2)()) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _unprivileged(argv: list[str], stderr: Path) -> int:
    """``main(argv)`` in a forked child that cannot write what ``chmod a-w`` protects: as root,
    whom file modes do not stop, the child first gives up its capabilities (``_drop_capabilities``).
    It stays root, so it still reads everything root owns: the venv, wherever the checkout lies
    (a clone in a 700 folder is out of ``nobody``'s reach, and matplotlib opens font files late).
    The child inherits the test's Slurm answers (``slurm_says``). Its stderr goes to ``stderr``; an
    exception out of main is printed there as the interpreter would print it (a traceback).
    Returns its exit status."""
    import sys
    import traceback

    fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            os.dup2(fd, 2)
            sys.stderr = open(2, "w", closefd=False)
            if os.geteuid() == 0:
                _drop_capabilities()
            code = main(argv)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(fd)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture
def read_only_copy(study):
    """A copy of the finished study where nothing can be written (files 444, folders 555), with
    its own site profile."""
    import tempfile

    exp, _, folder = study
    root = Path(tempfile.mkdtemp(prefix="hpml-read-only-"))
    shutil.copytree(folder, root / "results" / "study")
    shutil.copy(exp, root / "study.yaml")
    local_site(root)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, 0o555 if path.is_dir() else 0o444)
    try:
        yield root
    finally:
        for path in [root, *root.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        shutil.rmtree(root)


def _may_write(path: Path) -> None:
    """Let the report's child (the owner of every file here) write ``path`` (a folder), and nothing else."""
    os.chmod(path, 0o755)


def test_a_report_writes_nothing_outside_its_folder(read_only_copy, slurm_says, tmp_path):
    """On a finished study that may only be read, except its report/ folder: the report is
    written, with the states Slurm gives (TIMEOUT for a run the ledger records as RUNNING), and
    nothing else changed, the ledger included. What this proves: the report, run by a user who
    cannot write anything but report/ (enforced by the OS, not by the test's good will), still
    succeeds; so it needs no write elsewhere, and the snapshot shows none happened."""
    from tests.conftest import snapshot

    folder = read_only_copy / "results" / "study"
    report = folder / "report"
    os.chmod(folder, 0o755)
    report.mkdir()
    os.chmod(folder, 0o555)
    _may_write(report)
    before = snapshot(folder)
    code = _unprivileged([str(read_only_copy / "study.yaml"), "--site", str(read_only_copy / "site.yaml")],
                         tmp_path / "stderr")
    assert code == 0, (tmp_path / "stderr").read_text()
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if not k.startswith("report")} == {
        k: v for k, v in before.items() if not k.startswith("report")}
    assert {"summary.csv", "runs.csv", "summary.md", "report.html", "throughput.png"} <= {
        k.removeprefix("report/") for k in after if k.startswith("report/")}
    assert not [k for k in after if k.startswith("report/.staging")]
    runs = pd.read_csv(report / "runs.csv").set_index("run")
    assert runs.loc["dp2xtp2-b32-r1", "status"] == "TIMEOUT"  # Slurm's word, used
    assert json.loads((folder / "ledger.json").read_text())["runs"]["dp2xtp2-b32-r1"]["state"] == "RUNNING"


@pytest.mark.parametrize("report_folder", ["read-only", "missing"])
def test_a_report_folder_that_cannot_be_written_is_one_line_and_exit_5(read_only_copy, slurm_says, tmp_path,
                                                                       report_folder):
    """report/ there but read-only, or missing in a folder that may only be read: exit status 5
    (a write refused; 2 is kept for bad input, 1 for a failure), one line on stderr naming the
    path and the free space, no traceback, and nothing written."""
    from tests.conftest import snapshot

    folder = read_only_copy / "results" / "study"
    if report_folder == "read-only":
        os.chmod(folder, 0o755)
        (folder / "report").mkdir()
        os.chmod(folder / "report", 0o555)
        os.chmod(folder, 0o555)
    before = snapshot(read_only_copy)
    code = _unprivileged([str(read_only_copy / "study.yaml"), "--site", str(read_only_copy / "site.yaml")],
                         tmp_path / "stderr")
    stderr = (tmp_path / "stderr").read_text()
    assert code == EXIT_WRITE_REFUSED, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith("hpml report: error: cannot write ") and str(folder / "report") in stderr
    assert "permission denied" in stderr and "free there" in stderr
    assert snapshot(read_only_copy) == before


def test_the_current_attempt_wins_over_the_rank_files_of_the_last(tmp_path, slurm_says):
    """A resubmitted run that is running again, or requeued and waiting, is not reported with
    its previous attempt's ending."""
    from analysis.collect import collect

    write_run(tmp_path, "again", status="FAILED", error="RuntimeError: boom", mode="single", world=1, tp=1, batch=8)
    write_run(tmp_path, "requeued", status="STOPPED", error="stopped by SIGUSR1; checkpoint saved", mode="single",
              world=1, tp=1, batch=8)
    for run, state in (("again", "RUNNING"), ("requeued", "STOPPED")):
        (tmp_path / run / "status.json").write_text(json.dumps(
            {"state": state, "attempt": 1, "step": 3, "total_steps": 10, "error": None, "started_at": 0,
             "updated_at": 1}))
    (tmp_path / "ledger.json").write_text(json.dumps({"runs": {
        "again": {"backend": "slurm", "job_id": "9", "state": "PENDING", "first_attempt": 2},
        "requeued": {"backend": "slurm", "job_id": "10", "state": "RUNNING", "first_attempt": 1}}}))
    slurm_says.update({"9": "RUNNING", "10": "REQUEUED"})
    results, problems, note = collect(tmp_path, {"again": 1, "requeued": 1}, repeated=False)
    assert not problems and note is None
    assert [(r.status, r.reason) for r in results] == [
        ("RUNNING", "Slurm (sacct): RUNNING; running, step 3/10"),
        ("PENDING", "Slurm (sacct): REQUEUED; last attempt: stopped, step 3/10")]


def test_when_slurm_does_not_answer_the_states_are_as_last_recorded_and_the_notes_say_so(tmp_path, slurm_says):
    site = local_site(tmp_path)
    exp = tmp_path / "quiet.yaml"
    exp.write_text("name: quiet\ndataset: d\ndefaults: {model: gpt2-large, steps: 10}\n"
                   "runs: [{name: queued, mode: single}, {name: done, mode: single}]\n")
    folder = tmp_path / "results" / "quiet"
    write_run(folder, "done", mode="single", world=1, tp=1, batch=8)
    (folder / "ledger.json").write_text(json.dumps({"runs": {
        "queued": {"backend": "slurm", "job_id": "7", "state": "PENDING"},
        "done": {"backend": "slurm", "job_id": "8", "state": "RUNNING"}}}))
    slurm_says["error"] = slurm_query.SlurmError("sacct did not answer within 30 s; and squeue did not answer")
    assert main([str(exp), "--site", str(site)]) == 0
    runs = pd.read_csv(folder / "report" / "runs.csv").set_index("run")
    assert (runs.loc["queued", "status"], runs.loc["queued", "reason"]) == (
        "PENDING", "as last recorded: Slurm did not answer; waiting")
    assert runs.loc["done", "status"] == "COMPLETED"  # its rank files say so, Slurm or not
    assert ("- States: Slurm did not answer (sacct did not answer within 30 s; and squeue did not answer): "
            "states as last recorded.") in (folder / "report" / "summary.md").read_text()


def test_a_run_is_assembled_from_all_its_attempts(tmp_path, slurm_says):
    """'resumed': attempt 1 (job 101 on n1) stopped after steps 0-7, three of them timed;
    attempt 2 (job 102 on n2) resumed at step 6 and completed 6-9, all warm-up. 'gapped':
    attempt 1 failed after steps 0-2, attempt 2 completed 5-9 (steps 3 and 4 recorded by none)."""
    site = local_site(tmp_path)
    exp = tmp_path / "attempts.yaml"
    exp.write_text("name: attempts\ndataset: d\ndefaults: {model: gpt2-large, steps: 10}\n"
                   "runs: [{name: resumed, mode: ddp, gpus: 2, batch_size: 8}, {name: gapped, mode: single}]\n")
    folder = tmp_path / "results" / "attempts"
    two = dict(mode="ddp", world=2, tp=1, batch=8)
    write_run(folder, "resumed", attempt=1, status="STOPPED", error="stopped by SIGUSR1; checkpoint saved",
              losses=(9.0, 8.0, 7.0, 6.0, 5.0, 4.5, 4.0, 3.5), timed=3, step_medians=[0.5, 0.6],
              memory_gib=[12.0, 11.0], job_id="101", node_list="n1", **two)
    write_run(folder, "resumed", attempt=2, start_step=6, losses=(4.1, 3.6, 3.2, 3.0), timed=0,
              memory_gib=[13.0, 13.0], job_id="102", node_list="n2", **two)
    one = dict(mode="single", world=1, tp=1, batch=8, job_id=None)
    write_run(folder, "gapped", attempt=1, status="FAILED", error="RuntimeError: boom", losses=(9.0, 8.0, 7.0), **one)
    write_run(folder, "gapped", attempt=2, start_step=5, losses=(5.0, 4.0, 3.0, 2.0, 1.0), step_medians=[0.25], **one)
    assert main([str(exp), "--site", str(site)]) == 0
    report = folder / "report"

    loss = pd.read_csv(report / "loss.csv")
    resumed = loss[loss["run"] == "resumed"]
    assert list(resumed["step"]) == list(range(10))
    assert list(resumed["loss"]) == [9.0, 8.0, 7.0, 6.0, 5.0, 4.5, 4.1, 3.6, 3.2, 3.0]  # attempt 2 wins on 6, 7
    assert list(resumed["attempt"]) == [1] * 6 + [2] * 4
    gapped = loss[loss["run"] == "gapped"]
    assert list(gapped["step"]) == [0, 1, 2, 5, 6, 7, 8, 9] and list(gapped["attempt"]) == [1] * 3 + [2] * 5

    times = pd.read_csv(report / "step_times.csv")
    assert [tuple(row) for row in times[times["run"] == "resumed"][["attempt", "rank", "step", "step_time_s"]]
            .itertuples(index=False)] == [(1, 0, 5, 0.5), (1, 0, 6, 0.5), (1, 0, 7, 0.5),
                                          (1, 1, 5, 0.6), (1, 1, 6, 0.6), (1, 1, 7, 0.6)]
    assert list(times[times["run"] == "gapped"]["step"]) == [5, 6, 7, 8, 9]
    assert set(times[times["run"] == "gapped"]["attempt"]) == {2}

    runs = pd.read_csv(report / "runs.csv", dtype={"job_ids": str}).set_index("run")
    row = runs.loc["resumed"]
    assert (row.status, row.attempts, row.job_ids, row.node_lists) == ("COMPLETED", 2, "101;102", "n1;n2")
    assert row.throughput_attempt == 1
    assert row.tokens_per_s == pytest.approx(2 * 8 * SEQ / 0.6)  # attempt 1's slowest rank
    assert row.peak_memory_per_gpu_max_gib == pytest.approx(12.0)  # attempt 1's, where the steps were timed
    assert row.final_loss == pytest.approx(3.0)
    assert row.steps_completed == 10
    row = runs.loc["gapped"]
    assert (row.status, row.attempts, row.job_ids, row.throughput_attempt) == ("COMPLETED", 2, "-;-", 2)
    assert row.tokens_per_s == pytest.approx(8 * SEQ / 0.25) and row.final_loss == pytest.approx(1.0)
    assert pd.isna(row.throughput_note)
    markdown = (report / "summary.md").read_text()
    assert ("- resumed: throughput from attempt 1 of 2 (attempt 2: every step left after resuming at "
            "step 6 was warm-up).") in markdown
    assert "gapped: throughput" not in markdown


def test_without_an_experiment_every_one_with_results_is_reported_even_before_any_rank_file(tmp_path):
    site = local_site(tmp_path)
    (tmp_path / "results" / "tiny_study").mkdir(parents=True)  # submitted, nothing written yet
    assert main(["--site", str(site)]) == 0
    report = tmp_path / "results" / "tiny_study" / "report"
    runs = pd.read_csv(report / "runs.csv")
    assert len(runs) == 20 and set(runs["status"]) == {"NOT_SUBMITTED"}  # 10 configurations × 2 repeats
    assert {p.name for p in report.glob("*.png")} == {"throughput.png", "memory.png", "mfu_vs_batch.png", "loss.png",
                                                      "where_time_goes.png", "predicted_vs_measured.png"}
    assert not (tmp_path / "results" / "seed_study").exists()  # no results, no report


def test_rank_files_written_with_the_seed_mode_names_read_as_ddp_and_zero3(tmp_path):
    """Results from before the rename say baseline and hybrid: the report names them DDP and ZeRO-3."""
    from analysis.collect import collect
    from analysis.runs import run_rows

    write_run(tmp_path, "old-ddp", mode="ddp", world=2, tp=1, batch=8)
    write_run(tmp_path, "old-zero3", mode="zero3", world=2, tp=1, batch=8)
    for run, new, old in (("old-ddp", "ddp", "baseline"), ("old-zero3", "zero3", "hybrid")):
        for path in (tmp_path / run).glob("attempts/1/rank-*.json"):
            text = path.read_text()
            assert f'"mode": "{new}"' in text
            path.write_text(text.replace(f'"mode": "{new}"', f'"mode": "{old}"'))
    results, problems, _ = collect(tmp_path, {"old-ddp": 2, "old-zero3": 2}, repeated=False)
    assert not problems and [r.status for r in results] == ["COMPLETED", "COMPLETED"]
    runs = {row.run: row.setting for row in run_rows(results)}
    assert [setting.mode for setting in runs.values()] == ["ddp", "zero3"]
    assert runs["old-ddp"].description.startswith("DDP on 2 GPUs")
    assert runs["old-zero3"].description.startswith("ZeRO-3 on 2 GPUs")


@pytest.mark.parametrize("elapsed,seconds", [("1-02:03:04", 93784), ("02:03:04", 7384), ("05:06", 306),
                                             ("0:10", 10), ("INVALID", None), ("", None), ("x-01:00", None)])
def test_slurm_elapsed_times_are_read_as_slurm_prints_them(elapsed, seconds):
    assert slurm_query.JobInfo("1", "COMPLETED", elapsed, "n1", "sacct").elapsed_s == seconds


def test_two_precision_regimes_the_report_tells_apart_never_share_a_phrase():
    """The report keys baselines by the regime and names it by its phrase: a note saying "trains
    in fp32, this in fp32" would explain nothing (ZeRO's fp32 keeps a master copy, single does not)."""
    from hpml_core.contract.config import MODES
    from hpml_core.contract.precision import regime

    from hpml_core.contract.checks import FP8_MODES

    held = {regime(mode, precision) for mode in MODES for precision in ("fp32", "bf16", "fp16")}
    held |= {regime(mode, "bf16", fp8=True) for mode in FP8_MODES}
    assert len(held) == 8 + 2  # FP8 linears in the PyTorch path's regime and in FSDP2's
    phrases = {}
    for one in held:
        phrases.setdefault(one.short(), set()).add(one.key())
    assert all(len(keys) == 1 for keys in phrases.values()), phrases
    assert regime("zero3", "fp32").short() == "fp32 weights, fp32 master" and regime("single", "fp32").short() == "fp32"
