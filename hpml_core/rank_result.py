"""Assemble a rank file from what a run measured: the figures derived from the step times
(FLOPs, MFU), the model-state accounting, and the facts of the environment (versions, Slurm
ids, device). Kept apart from the training loop, which only measures."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
from datetime import datetime, timezone
from pathlib import Path

import torch

from hpml_core import accounting, flops, tensor_parallel
from hpml_core.spec import rank_file as rf
from hpml_core.memory import peak_memory


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


def flops_record(plan, device_type: str, device_name: str, run_tokens_per_s: float) -> rf.Flops:
    per_token = flops.training_flops_per_token(plan.dims, plan.config.seq_len)
    achieved = per_token * run_tokens_per_s / plan.env.world_size / 1e12
    peak = flops.lookup_peak(device_type, device_name, plan.config.precision)
    return rf.Flops(
        formula=flops.FORMULA, n_params=plan.dims.params_matmul, flops_per_token=per_token,
        achieved_tflops_per_s=achieved, peak_tflops_per_s=peak.tflops, peak_source=peak.source,
        mfu=achieved / peak.tflops if peak.tflops else None, mfu_missing_reason=peak.missing_reason,
    )


def model_state_record(plan, measured: dict) -> rf.ModelState:
    replicated = tensor_parallel.replicated_param_count(plan.dims) if plan.tp_size > 1 else 0
    expected, how = accounting.expected_bytes(plan.config, plan.dims.params_total - replicated, replicated,
                                              plan.tp_size, plan.dp_size)
    total = measured["params_bytes"] + measured["grads_bytes"] + measured["optimizer_bytes"]
    return rf.ModelState(**measured, total_bytes=total, expected_bytes=expected, expectation=how)


def build_rank_file(plan, trainer, run_id: str, status: str, error: str | None, throughput: rf.Throughput | None,
                    device: torch.device, device_name: str, started_at: datetime, wall_time_s: float) -> rf.RankFile:
    """``trainer`` is None when the failure came before it was built."""
    config = plan.config
    start_step = trainer.start_step if trainer else 0
    alive = status in ("completed", "stopped")  # every rank reached the same step: collectives are safe
    losses = trainer.loss_values(ranks_alive=alive) if trainer else []
    return rf.RankFile(
        run_id=run_id, status=status, error=error, config=config,
        mode=config.mode, world_size=plan.env.world_size, dp_size=plan.dp_size, tp_size=plan.tp_size,
        rank=plan.env.rank, local_rank=plan.env.local_rank, dp_rank=plan.dp_rank, tp_rank=plan.tp_rank,
        launcher=plan.env.launcher, hostname=socket.gethostname(), device_type=device.type, device_name=device_name,
        versions=rf.Versions(python=platform.python_version(), torch=torch.__version__, deepspeed=_version("deepspeed"),
                             transformers=_version("transformers"), cuda=torch.version.cuda),
        slurm=_slurm(),
        model=rf.ModelInfo(name=plan.dims.name, n_layer=plan.dims.n_layer, n_head=plan.dims.n_head,
                           n_embd=plan.dims.n_embd, vocab_size=plan.dims.vocab_size, seq_len=config.seq_len,
                           params_total=plan.dims.params_total, params_non_embedding=plan.dims.params_non_embedding,
                           params_matmul=plan.dims.params_matmul),
        batch_size=config.batch_size, global_batch=plan.batches.global_batch, total_steps=plan.total_steps,
        steps_completed=start_step + len(losses), resumed_from_step=start_step if plan.resume_state else None,
        started_at=started_at.isoformat(), finished_at=datetime.now(timezone.utc).isoformat(),
        wall_time_s=wall_time_s,
        throughput=throughput,
        flops=flops_record(plan, device.type, device_name, throughput.run_tokens_per_s) if throughput else None,
        memory=rf.Memory(**peak_memory(device)),
        model_state=model_state_record(plan, trainer.model_state) if throughput and trainer.model_state else None,
        loss=rf.Loss(start_step=start_step, values=losses, averaged_over_dp=alive),
    )
