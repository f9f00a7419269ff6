"""The step-time model (hpml_core/contract/step_time.py) against hand computations, and `hpml plan`'s
step, tokens/s and GPU-hours columns and study total from it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpml_core.contract.config import TrainConfig
from hpml_core.contract.metrics import training_flops_per_token
from hpml_core.contract.gpus import BY_KEY
from hpml_core.contract.layout import Layout
from hpml_core.contract.model_state import param_numels
from hpml_core.contract.models import model_dims
from hpml_core.contract.step_time import Performance, predict_step
from jobs import experiment
from tests.conftest import REPO
from tests.test_plan import plan_rows

DIMS = model_dims("gpt2-large", 50257)
A100 = BY_KEY["a100-40gb"]
SPEED = Performance(compute_efficiency=0.5, intra_node_gb_per_s=200.0, inter_node_gb_per_s=20.0, device_tflops=None,
                    source="test")
PARAMS = sum(n for _, n in param_numels(DIMS, 1))


def config(**fields) -> TrainConfig:
    return TrainConfig(data=Path("/d"), batch_size=8, seq_len=1024, precision="bf16", **fields)


def compute_s(batch: int = 8, tp: int = 1, ckpt: bool = False) -> float:
    flops = training_flops_per_token(DIMS, 1024) * batch * 1024 / tp * (4 / 3 if ckpt else 1)
    return flops / (0.5 * 312e12)


def optimizer_s(elements: int = PARAMS, per_element: int = 28 + 12) -> float:
    """AdamW's fp32 weight, gradient and moments (read 4, write 3) and clipping's read and scale."""
    return elements * per_element / 1555e9  # the A100 40GB's memory bandwidth


def test_one_process_only_computes_and_checkpointing_adds_a_forward():
    step = predict_step(config(), DIMS, Layout(1, 1), 1, A100, SPEED)
    assert step.communication_s == 0 and step.compute_s == pytest.approx(compute_s())
    parts = step.parts_s
    assert parts["forward"] == pytest.approx(compute_s() / 3) and parts["backward"] == pytest.approx(2 * compute_s() / 3)
    assert parts["optimizer"] == pytest.approx(optimizer_s())
    assert step.tokens_per_s == pytest.approx(8 * 1024 / (compute_s() + optimizer_s()))
    recomputed = predict_step(config(grad_ckpt=True), DIMS, Layout(1, 1), 1, A100, SPEED)
    assert recomputed.compute_s == pytest.approx(compute_s(ckpt=True)) == pytest.approx(4 / 3 * step.compute_s)
    assert recomputed.parts_s["recompute"] == pytest.approx(parts["forward"])
    sgd = predict_step(config(optimizer="sgd", grad_clip=0), DIMS, Layout(1, 1), 1, A100, SPEED)
    assert sgd.parts_s["optimizer"] == pytest.approx(optimizer_s(per_element=12))
    # fp32 runs on the CUDA cores' peak, not the tensor cores'
    fp32 = predict_step(config().model_copy(update={"precision": "fp32"}), DIMS, Layout(1, 1), 1, A100, SPEED)
    assert fp32.compute_s == pytest.approx(compute_s() * 312 / 19.5)


def test_an_fp8_run_is_predicted_at_the_16_bit_rate_until_a_calibration_measures_its_own():
    """No FP8 gain is assumed (what it gains after its casts is for a run to say), and its rates
    are kept apart from bf16's in a calibration."""
    from hpml_core.contract.calibration import rate_key
    from hpml_core.contract.precision import regime

    h100 = BY_KEY["h100-sxm"]
    fp8, bf16 = (predict_step(config(fp8=on), DIMS, Layout(1, 1), 1, h100, SPEED) for on in (True, False))
    assert fp8.parts == bf16.parts and "no FP8 gain assumed" in fp8.how and "FP8" not in bf16.how
    keys = {rate_key("single", regime("single", "bf16", fp8=on), "cuda", 1, True) for on in (True, False)}
    assert len(keys) == 2


def test_ddp_all_reduces_fp32_gradients_within_a_node_or_across_nodes():
    ring = 2 * 3 / 4 * PARAMS * 4  # fp32 gradients (fp32 weights under autocast)
    within = predict_step(config(mode="ddp"), DIMS, Layout(4, 1), 4, A100, SPEED)
    assert within.communication_s == pytest.approx(ring / 200e9)
    across = predict_step(config(mode="ddp"), DIMS, Layout(4, 1), 2, A100, SPEED)  # 2 nodes of 2
    assert across.communication_s == pytest.approx(ring / 20e9)
    # accumulation: one all-reduce per optimizer step, four micro-steps of compute
    accumulated = predict_step(config(mode="ddp", grad_accum=4), DIMS, Layout(4, 1), 4, A100, SPEED)
    assert accumulated.communication_s == pytest.approx(ring / 200e9)
    assert accumulated.compute_s == pytest.approx(4 * compute_s())
    assert accumulated.tokens_per_step == 4 * 8 * 4 * 1024


def test_ddp_hides_all_but_its_last_bucket_behind_the_backward():
    step = predict_step(config(mode="ddp"), DIMS, Layout(4, 1), 2, A100, SPEED)  # across nodes: 20 GB/s
    [all_reduce] = step.communication
    last_bucket = 25 * 2**20 / (PARAMS * 4)
    backward = 2 * compute_s() / 3
    assert all_reduce.hidden_s == pytest.approx(min(all_reduce.seconds * (1 - last_bucket), backward))
    assert step.parts_s["all-reduce"] == pytest.approx(all_reduce.seconds - all_reduce.hidden_s)
    assert step.step_s == pytest.approx(compute_s() + optimizer_s() + step.parts_s["all-reduce"])


def test_zero3_gathers_parameters_and_reduce_scatters_gradients_every_micro_step():
    run = config(mode="zero3", zero_stage=3, grad_accum=2)  # bf16 weights and gradients under DeepSpeed
    padded = sum(-(-n // 4) * 4 for _, n in param_numels(DIMS, 1))  # each parameter padded to a multiple of dp
    block = sum(-(-n // 4) * 4 for name, n in param_numels(DIMS, 1) if name.startswith("blocks.0."))
    # DeepSpeed gathers a block again for the backward when the blocks after it, forward and
    # backward, fetch more than stage3_max_reuse_distance (1e9) elements: GPT-2 Large's first ten
    assert [2 * (35 - i) * block > 1e9 for i in range(36)] == [True] * 10 + [False] * 26
    gathered = padded + 10 * block
    sent = 2 * (3 / 4 * gathered * 2 + 3 / 4 * padded * 2) + 2 * 3 / 4 * 2 * 8  # + two fp64 scalars
    step = predict_step(run, DIMS, Layout(4, 1), 4, A100, SPEED)
    assert step.communication_s == pytest.approx(sent / 200e9)
    # the all-gathers hide behind the forward, the reduce-scatters behind the backward, up to their length
    kinds = {k.kind: k for k in step.communication}
    assert kinds["all-gather"].hidden_s == pytest.approx(min(kinds["all-gather"].seconds, 2 * compute_s() / 3))
    assert kinds["all-reduce"].hidden_s == 0


def test_tensor_parallel_all_reduces_activations_inside_the_node():
    activation = 8 * 1024 * DIMS.n_embd
    L = DIMS.n_layer
    # forward: the embedding's output (fp32 weights) and two bf16 block outputs per block; the loss's
    # three fp32 reductions; backward: the fp32 gradient at every column-parallel input; the clip norm
    sent = activation * (4 + 2 * L * 2 + (2 * L + 1) * 4) + 3 * 8 * 1024 * 4 + 4  # x 2(n-1)/n = 1 for tp 2
    step = predict_step(config(mode="ddp", tp_size=2), DIMS, Layout(2, 2), 2, A100, SPEED)
    assert step.compute_s == pytest.approx(compute_s(tp=2))
    assert step.communication_s == pytest.approx(sent / 200e9)
    assert step.parts_s["all-reduce"] == step.communication_s  # TP does not overlap
    recomputed = predict_step(config(mode="ddp", tp_size=2, grad_ckpt=True), DIMS, Layout(2, 2), 2, A100, SPEED)
    assert recomputed.communication_s == pytest.approx((sent + L * activation * 2) / 200e9)


def test_a_device_without_a_peak_needs_the_sites_stated_rate():
    step = predict_step(config(), DIMS, Layout(1, 1), 1, None, SPEED)
    assert step.tokens_per_s is None and step.gpu_hours(100, 1) is None and "device_tflops" in step.missing_reason
    cpu = Performance(0.4, 1.0, 1.0, device_tflops=0.05, source="test")
    step = predict_step(config(), DIMS, Layout(1, 1), 1, None, cpu)
    assert step.step_s is None and "device_memory_gb_per_s" in step.missing_reason  # the optimizer's pace
    cpu = Performance(0.4, 1.0, 1.0, device_tflops=0.05, source="test", device_memory_gb_per_s=10.0)
    step = predict_step(config(), DIMS, Layout(1, 1), 1, None, cpu)
    assert step.compute_s == pytest.approx(training_flops_per_token(DIMS, 1024) * 8 * 1024 / 0.05e12)
    assert step.parts_s["optimizer"] == pytest.approx(PARAMS * 40 / 10e9)
    assert step.gpu_hours(100, 1) == pytest.approx(step.step_s * 100 / 3600)


def test_plan_prints_each_runs_step_tokens_and_gpu_hours_and_the_study_total():
    proc = subprocess.run([sys.executable, "-m", "hpml_core.cli", "plan", "seed_study", "--site", "greene"], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "USER": "alice"})
    assert proc.returncode == 0, proc.stderr
    rows = plan_rows(proc.stdout)
    exp = experiment.load(REPO / "jobs" / "experiments" / "seed_study.yaml")
    greene = Performance(0.40, 100.0, 10.0, None, "defaults")  # greene states no speed: hpml's defaults
    total = 0.0
    for run in exp.runs:
        resolved = exp.resolved(run)
        step = predict_step(resolved.config, resolved.dims, resolved.layout, run.gpus, A100, greene)
        hours = step.gpu_hours(resolved.total_steps, run.world_size)
        assert rows[run.name][-3:] == [f"{step.step_s:.3g}", f"{step.tokens_per_s:,.0f}", f"{hours:.3g}"], run.name
        total += hours
    assert f"study: {total:,.3g} GPU-hours predicted for the 30 runs: training steps only" in proc.stdout
    assert "speed assumed: 40% of the GPU's dense peak, 100 GB/s within a node, 10 GB/s between nodes" in proc.stdout
