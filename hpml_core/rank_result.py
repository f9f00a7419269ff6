"""Assemble this rank's result file from what the run measured: the throughput and FLOP figures
derived from the step times, the losses averaged over data-parallel ranks, the model-state
accounting, and the facts of the environment (versions, Slurm ids, device). Kept apart from
the training loop, which only measures."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist

from hpml_core.energy import EnergyMeter
from hpml_core.memory import PhasePeaks
from hpml_core.plan import Plan
from hpml_core.contract import memory_model, metrics, model_state
from hpml_core.contract import rank_file as rf
from hpml_core.contract.config import TrainConfig
from hpml_core.contract.precision import run_regime
from hpml_core.contract.run_states import COMPLETED, STOPPED
from hpml_core.timing import StepTimer


@dataclass
class Measured:
    """What the training loop measured; kept when training fails midway, for the rank file."""

    timer: StepTimer
    memory: PhasePeaks
    energy: EnergyMeter
    start_step: int = 0
    losses: list[torch.Tensor] = field(default_factory=list)  # one per step, still on the device
    model_state: dict | None = None  # measured at the last step (hpml_core.measure_model_state)
    memory_before_window: rf.Memory | None = None  # the peaks as they stood before the profiled window
    profile: rf.StepProfile | None = None  # the profiled window after the last step (hpml_core.profile_window)
    profile_missing_reason: str | None = None
    energy_record: rf.Energy | None = None  # the GPU's energy over the timed steps (hpml_core.energy)
    energy_missing_reason: str | None = None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _slurm() -> rf.Slurm | None:
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return rf.Slurm(job_id=os.environ.get("SLURM_JOB_ID"), array_job_id=os.environ.get("SLURM_ARRAY_JOB_ID"),
                    array_task_id=os.environ.get("SLURM_ARRAY_TASK_ID"), node_list=os.environ.get("SLURM_JOB_NODELIST"),
                    node=os.environ.get("SLURMD_NODENAME"), restart_count=int(os.environ.get("SLURM_RESTART_COUNT", 0)))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def loss_values(losses: list[torch.Tensor], ranks_alive: bool) -> list[float]:
    """Per-step losses, read from the device once; averaged over data-parallel ranks (one
    collective for the whole run) when every rank is known to be alive.

    The sum is taken in fp64, where adding a few fp32 losses is exact: in fp32 it would depend on
    the all-reduce's order, which gloo varies with the number of values, so a resumed attempt
    (fewer steps) could record a step's mean one rounding away from an uninterrupted run's."""
    if not losses:
        return []
    if not ranks_alive:  # one scalar at a time: after an out-of-memory error even a stack may fail
        return [loss.item() for loss in losses]
    values = torch.stack(losses).double()
    if dist.is_initialized():
        dist.all_reduce(values)  # tensor-parallel ranks hold equal losses, so the world mean is the DP mean
        values /= dist.get_world_size()
    return values.cpu().tolist()


def throughput(plan: Plan, timer: StepTimer, device: torch.device) -> rf.Throughput:
    """Collective. Every token counted once: a rank's share is its replica's tokens / TP size,
    the run's figure the global batch's tokens over the slowest rank's median step time."""
    times = timer.step_times_s()
    median = statistics.median(times)
    run_median = median
    if dist.is_initialized():
        box = torch.tensor([median], dtype=torch.float64, device=device)
        dist.all_reduce(box, op=dist.ReduceOp.MAX)
        run_median = box.item()
    config, tp = plan.config, plan.layout.tp_size
    replica_samples = config.batch_size * config.grad_accum
    global_batch = plan.batches.global_batch
    return rf.Throughput(
        timing=timer.description,
        timed_steps=len(times),
        step_times_s=times,
        step_time_median_s=median,
        step_time_mean_s=statistics.fmean(times),
        run_step_time_median_s=run_median,
        tokens_per_step=global_batch * config.seq_len,
        samples_per_step=global_batch,
        rank_tokens_per_s=metrics.tokens_per_s(replica_samples * config.seq_len / tp, median),
        rank_samples_per_s=replica_samples / tp / median,
        run_tokens_per_s=metrics.tokens_per_s(global_batch * config.seq_len, run_median),
        run_samples_per_s=global_batch / run_median,
    )


def flops_record(plan: Plan, device_type: str, device_name: str, run_tokens_per_s: float) -> rf.Flops:
    per_token = metrics.training_flops_per_token(plan.dims, plan.config.seq_len)
    achieved = metrics.achieved_tflops_per_device(per_token, run_tokens_per_s, plan.env.world_size)
    peak = metrics.lookup_peak(device_type, device_name, plan.config.precision, plan.config.fp8)
    return rf.Flops(
        formula=metrics.FORMULA, n_params=plan.dims.params_matmul, flops_per_token=per_token,
        achieved_tflops_per_s=achieved, peak_tflops_per_s=peak.tflops, peak_source=peak.source,
        mfu=metrics.mfu(achieved, peak.tflops), mfu_missing_reason=peak.missing_reason,
    )


def model_state_record(plan: Plan, measured: dict) -> rf.ModelState:
    expected, how = model_state.expected_bytes(plan.config, plan.dims, plan.layout.tp_size, plan.layout.dp_size,
                                               plan.position.dp_rank)
    total = measured["params_bytes"] + measured["grads_bytes"] + measured["optimizer_bytes"]
    return rf.ModelState(**measured, total_bytes=total, expected_bytes=expected, expectation=how)


def prediction_record(plan: Plan, device_type: str) -> rf.MemoryPrediction:
    """The memory model's prediction for this rank, as the engine resolved the run."""
    predicted = memory_model.predict(plan.config, plan.dims, plan.layout, device_type, dp_rank=plan.position.dp_rank)
    return rf.MemoryPrediction(
        device_type=device_type, total_bytes=predicted.total_bytes, allocated_bytes=predicted.allocated_bytes,
        model_state_bytes=predicted.model_state_bytes,
        lines=[rf.PredictionLine(name=line.name, bytes=line.bytes, formula=line.formula, in_allocated=line.in_allocated)
               for line in predicted.lines])


def throughput_missing_reason(plan: Plan, start_step: int, status: str,
                              run_throughput: rf.Throughput | None) -> str | None:
    """Why an attempt that completed has no throughput: it had no step left past its warm-up.
    A resumed attempt trains whatever remains, so its run's figure comes from earlier attempts."""
    if status != COMPLETED or run_throughput is not None:
        return None
    left, warmup = plan.total_steps - start_step, plan.config.warmup_steps
    if not plan.resume_state:
        return f"all {left} steps were warm-up (--warmup-steps {warmup})"
    earlier = "this run's throughput is in its earlier attempts"
    if left == 0:
        return f"no step was left after resuming at step {start_step}; {earlier}"
    return f"the {left} steps left after resuming at step {start_step} were all warm-up; {earlier}"


def build_rank_file(plan: Plan, measured: Measured, run_id: str, attempt: int, status: str, error: str | None,
                    run_throughput: rf.Throughput | None, device: torch.device, device_name: str,
                    started_at: datetime, wall_time_s: float) -> rf.RankFile:
    """Collective when the run completed or stopped (the losses are averaged over ranks)."""
    config, layout, position = plan.config, plan.layout, plan.position
    alive = status in (COMPLETED, STOPPED)  # every rank reached the same step: collectives are safe
    losses = loss_values(measured.losses, ranks_alive=alive)
    start_step = measured.start_step
    return rf.RankFile(
        run_id=run_id, attempt=attempt, status=status, error=error, config=config, config_source=plan.source,
        mode=config.mode, world_size=plan.env.world_size, dp_size=layout.dp_size, tp_size=layout.tp_size,
        rank=plan.env.rank, local_rank=plan.env.local_rank, dp_rank=position.dp_rank, tp_rank=position.tp_rank,
        launcher=plan.env.launcher, hostname=socket.gethostname(), device_type=device.type, device_name=device_name,
        versions=rf.Versions(python=platform.python_version(), torch=torch.__version__, deepspeed=_version("deepspeed"),
                             transformers=_version("transformers"), cuda=torch.version.cuda,
                             torchao=_version("torchao")),
        slurm=_slurm(),
        model=rf.ModelInfo(name=plan.dims.name, n_layer=plan.dims.n_layer, n_head=plan.dims.n_head,
                           n_embd=plan.dims.n_embd, vocab_size=plan.dims.vocab_size, seq_len=config.seq_len,
                           params_total=plan.dims.params_total, params_non_embedding=plan.dims.params_non_embedding,
                           params_matmul=plan.dims.params_matmul),
        batch_size=config.batch_size, global_batch=plan.batches.global_batch, total_steps=plan.total_steps,
        steps_completed=start_step + len(losses), resumed_from_step=start_step if plan.resume_state else None,
        checkpoints_skipped=[rf.SkippedCheckpoint(tag=s.tag, step=s.step, reason=s.reason)
                             for s in (plan.resume_state.skipped if plan.resume_state else ())],
        steps_retrained=plan.resume_state.steps_retrained if plan.resume_state else 0,
        started_at=started_at.isoformat(), finished_at=datetime.now(timezone.utc).isoformat(),
        wall_time_s=wall_time_s,
        throughput=run_throughput,
        throughput_missing_reason=throughput_missing_reason(plan, start_step, status, run_throughput),
        flops=flops_record(plan, device.type, device_name, run_throughput.run_tokens_per_s) if run_throughput else None,
        precision=run_regime(config),
        memory=measured.memory_before_window or measured.memory.record(),  # the window's trace is not the run's
        model_state=model_state_record(plan, measured.model_state)
        if status == COMPLETED and measured.model_state else None,
        prediction=prediction_record(plan, device.type),
        loss=rf.Loss(start_step=start_step, values=losses, averaged_over_dp=alive),
        profile=measured.profile, profile_missing_reason=profile_missing_reason(config, status, measured),
        energy=measured.energy_record, energy_missing_reason=energy_missing_reason(status, measured),
    )


def profile_missing_reason(config: TrainConfig, status: str, measured: Measured) -> str | None:
    """Why a rank file has no profiled window: turned off, cut short, unreadable, or not completed."""
    if measured.profile is not None:
        return None
    if measured.profile_missing_reason:
        return measured.profile_missing_reason
    if config.profile_steps == 0:
        return "--profile-steps 0"
    return f"the attempt did not complete ({status})" if status != COMPLETED else None


def energy_missing_reason(status: str, measured: Measured) -> str | None:
    """Why a rank file has no energy figure: no counter on the device, or no timed step to read it over."""
    if measured.energy_record is not None:
        return None
    return (measured.energy_missing_reason or measured.energy.missing_reason
            or f"no timed step was completed (the attempt: {status})")
