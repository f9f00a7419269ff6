"""Training job entry point: ``python -m hpml_core.train`` (or ``hpml train``).

Runs alone, under torchrun, under the deepspeed launcher, or as srun tasks (see
``hpml_core.launch``). Every bad input is refused before a process group exists, with one
line naming the flag and exit status 2. Otherwise every rank writes ``rank-<k>.json`` into
the run folder at the end, also when training failed (status "failed", exit 1) or ran out of
memory (status "oom", exit 3). The step itself reads like nanoGPT's: get batch, forward under
autocast, backward, clip, update.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import statistics
import sys
import time
from contextlib import nullcontext
from functools import partial
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from hpml_core import accounting, checkpoint, export, flops, launch, tensor_parallel, zero
from hpml_core import rank_file as rf
from hpml_core.config import TrainConfig, check_layout, parse_args
from hpml_core.data import TokenBatches, TokenData
from hpml_core.errors import EXIT_FAILED, EXIT_OOM, EXIT_USAGE, UsageError
from hpml_core.memory import peak_memory
from hpml_core.mesh import Mesh, build_mesh, grid_position
from hpml_core.model import GPT, ModelDims, model_dims, next_token_loss
from hpml_core.parallelize import parallelize
from hpml_core.timing import StepTimer

AUTOCAST_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Plan:
    """Everything decided before training starts; validated, so the rest can trust it."""

    config: TrainConfig
    env: launch.ProcessEnv
    dims: ModelDims
    dp_size: int
    tp_size: int
    batches: TokenBatches
    total_steps: int
    resume_state: checkpoint.Resume | None

    @property
    def dp_rank(self) -> int:
        return grid_position(self.env.rank, self.tp_size)[0]

    @property
    def tp_rank(self) -> int:
        return grid_position(self.env.rank, self.tp_size)[1]


def make_plan(argv: list[str] | None, env: launch.ProcessEnv) -> Plan:
    config = parse_args(argv)
    data = TokenData.open(config.data)
    dims = model_dims(config.model, data.vocab_size)
    if config.seq_len > dims.n_positions:
        raise UsageError("--seq-len", f"{config.seq_len} exceeds the {dims.n_positions} positions of {config.model}")
    dp_size, tp_size = check_layout(config, env.world_size, env.local_world_size, dims.n_head, dims.vocab_size)
    if config.mode == "hybrid" and config.zero_stage is None:
        config = config.model_copy(update={"zero_stage": 3})
    batches = TokenBatches(data, config.seq_len, config.batch_size, dp_size, grid_position(env.rank, tp_size)[0],
                           config.seed, config.grad_accum)
    if batches.steps_per_epoch() == 0:
        raise UsageError("--batch-size", f"the global batch {batches.global_batch} exceeds the "
                         f"{batches.num_samples} samples of {config.data} at --seq-len {config.seq_len}")
    total_steps = config.steps or batches.steps_per_epoch()
    if config.max_samples is not None:
        total_steps = min(total_steps, config.max_samples // batches.global_batch)
        if total_steps <= config.warmup_steps:
            raise UsageError("--max-samples", f"{config.max_samples} samples make {total_steps} steps of "
                             f"{batches.global_batch}, not more than the {config.warmup_steps} warm-up steps")
    resume_state = None
    if config.resume:
        if config.out is None:
            raise UsageError("--resume", "needs --out, the run folder to resume in")
        resume_state = checkpoint.find(checkpoint_dir(config, config.out), checkpoint.fingerprint(config, dp_size),
                                       tp_rank=grid_position(env.rank, tp_size)[1], zero3=config.mode == "hybrid")
        start = resume_state.step if resume_state else 0
        if total_steps - start <= config.warmup_steps:
            raise UsageError("--steps", f"{total_steps} leaves no timed step after resuming at step {start} "
                             f"with {config.warmup_steps} warm-up steps")
    return Plan(config, env, dims, dp_size, tp_size, batches, total_steps, resume_state)


def checkpoint_dir(config: TrainConfig, out: Path) -> Path:
    return config.checkpoint_dir or out / "checkpoints"


def run_identity(config: TrainConfig, env: launch.ProcessEnv) -> tuple[str, Path]:
    """The run id and folder, the same on every rank (rank 0 decides when they are not given)."""
    run_id = config.run_id or (config.out.name if config.out else None)
    if run_id is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_id = f"{config.mode}-{config.model}-w{env.world_size}-tp{config.tp_size}-b{config.batch_size}-{stamp}"
        if dist.is_initialized():
            box = [run_id]
            dist.broadcast_object_list(box, src=0)
            run_id = box[0]
    return run_id, config.out or Path("results") / "runs" / run_id


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Weight decay on matrices only (not biases, LayerNorms), as in GPT-2 and nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)  # the CPU allocator
    )


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _slurm() -> rf.Slurm | None:
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return rf.Slurm(job_id=os.environ.get("SLURM_JOB_ID"), array_job_id=os.environ.get("SLURM_ARRAY_JOB_ID"),
                    array_task_id=os.environ.get("SLURM_ARRAY_TASK_ID"), node_list=os.environ.get("SLURM_JOB_NODELIST"))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _log(plan: Plan, message: str) -> None:
    if plan.env.rank == 0:
        print(f"[hpml] {message}", flush=True)


class Trainer:
    """Builds the parallel model and runs the steps. Three ways to train one model:
    plain PyTorch (single process, DDP, tensor parallelism, DP×TP with DDP over the DP group),
    and DeepSpeed's ZeRO-3 engine (hybrid, with or without TP inside)."""

    def __init__(self, plan: Plan, device: torch.device, mesh: Mesh, run_id: str, out: Path):
        self.plan, self.device, self.mesh, self.run_id, self.out = plan, device, mesh, run_id, out
        config = plan.config
        torch.manual_seed(config.seed)  # every rank builds the same full model, then keeps its shard
        with device:
            self.model = GPT(plan.dims, attn=config.attn)
        self.loss_fn = next_token_loss
        if mesh.tp_size > 1:
            tensor_parallel.apply_tensor_parallel(self.model, mesh)
            self.loss_fn = partial(tensor_parallel.vocab_parallel_cross_entropy, group=mesh.tp_group,
                                   vocab_start=self.model.wte.start)
        self.trained = parallelize(self.model, config, device, mesh)
        self.optimizer = build_optimizer(self.model, config, device)
        self.engine = zero.initialize(self.trained, self.optimizer, config, mesh, out) if config.mode == "hybrid" else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16" and not self.engine)
        dtype = AUTOCAST_DTYPES[config.precision]
        # DeepSpeed casts the model to bf16/fp16 itself; PyTorch runs keep fp32 weights under autocast.
        self.autocast = torch.autocast(device.type, dtype=dtype) if dtype and not self.engine else nullcontext()
        self.start_step = 0
        if plan.resume_state:
            self.start_step = checkpoint.restore(plan.resume_state, self.model, self.optimizer, self.scaler, self.engine)
        self.losses: list[torch.Tensor] = []
        self.timer = StepTimer(device)
        self.model_state: dict | None = None

    def step(self, step: int, measure: bool = False) -> torch.Tensor:
        """One optimizer step over --grad-accum micro-batches; returns their mean loss."""
        accum = self.plan.config.grad_accum
        losses = []
        for micro in range(accum):
            x, y = self.plan.batches.batch(step, micro)
            if self.device.type == "cuda":  # pinned, so the copy overlaps with the previous step's work
                x, y = x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
            if self.engine:  # DeepSpeed scales for accumulation, and clips and updates at the last micro-step
                loss = self.loss_fn(self.engine(x), y)
                self.engine.backward(loss)
                self.engine.step()
            else:
                with self.gradient_sync(micro == accum - 1):
                    with self.autocast:
                        loss = self.loss_fn(self.trained(x), y)
                    self.scaler.scale(loss / accum).backward()
            losses.append(loss.detach())
        if not self.engine:
            if self.plan.config.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                self.clip_gradients()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if measure:  # while the gradients still exist
            self.model_state = (accounting.measure_zero3(self.engine) if self.engine
                                else accounting.measure_torch(self.model, self.optimizer))
        if not self.engine:
            self.optimizer.zero_grad(set_to_none=True)
        return torch.stack(losses).mean()

    def gradient_sync(self, last_micro_step: bool):
        """DDP all-reduces gradients on the last micro-step of an accumulation only."""
        if last_micro_step or not isinstance(self.trained, DistributedDataParallel):
            return nullcontext()
        return self.trained.no_sync()

    def clip_gradients(self) -> None:
        params = list(self.model.parameters())
        if self.mesh.tp_size > 1:
            tensor_parallel.clip_grad_norm_(params, self.plan.config.grad_clip, self.mesh.tp_group)
        else:
            torch.nn.utils.clip_grad_norm_(params, self.plan.config.grad_clip)

    def run(self) -> None:
        plan, config = self.plan, self.plan.config
        first_timed = self.start_step + config.warmup_steps
        report_every = max(1, (plan.total_steps - self.start_step) // 10)
        started = time.perf_counter()
        for step in range(self.start_step, plan.total_steps):
            timed = step >= first_timed
            if timed:
                self.timer.start()
            self.losses.append(self.step(step, measure=step == plan.total_steps - 1))
            if timed:
                self.timer.stop()
            done = step + 1
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                self.save_checkpoint(done)
            if done % report_every == 0 or done == plan.total_steps:
                _log(plan, f"step {done}/{plan.total_steps}  {time.perf_counter() - started:.1f} s")

    def save_checkpoint(self, step: int) -> None:
        plan = self.plan
        checkpoint.save(checkpoint_dir(plan.config, self.out), step, self.model, self.optimizer, self.scaler,
                        self.engine, self.mesh, plan.env.rank, checkpoint.fingerprint(plan.config, plan.dp_size))

    def loss_values(self, completed: bool) -> list[float]:
        """Per-step losses, read from the device once; averaged over data-parallel ranks (one
        collective for the whole run) when every rank is known to be alive."""
        if not completed:  # one scalar at a time: after an out-of-memory error even a stack may fail
            return [loss.item() for loss in self.losses]
        losses = torch.stack(self.losses).float()
        if dist.is_initialized():
            dist.all_reduce(losses)  # tensor-parallel ranks hold equal losses, so the world mean is the DP mean
            losses /= dist.get_world_size()
        return losses.cpu().tolist()

    def throughput(self) -> rf.Throughput:
        plan = self.plan
        times = self.timer.step_times_s()
        median = statistics.median(times)
        run_median = median
        if dist.is_initialized():
            box = torch.tensor([median], dtype=torch.float64, device=self.device)
            dist.all_reduce(box, op=dist.ReduceOp.MAX)
            run_median = box.item()
        replica_samples = plan.config.batch_size * plan.config.grad_accum
        global_batch = plan.batches.global_batch
        return rf.Throughput(
            timing=self.timer.description,
            timed_steps=len(times),
            step_times_s=times,
            step_time_median_s=median,
            step_time_mean_s=statistics.fmean(times),
            run_step_time_median_s=run_median,
            tokens_per_step=global_batch * plan.config.seq_len,
            samples_per_step=global_batch,
            rank_tokens_per_s=replica_samples * plan.config.seq_len / plan.tp_size / median,
            rank_samples_per_s=replica_samples / plan.tp_size / median,
            run_tokens_per_s=global_batch * plan.config.seq_len / run_median,
            run_samples_per_s=global_batch / run_median,
        )


def flops_record(plan: Plan, device_type: str, device_name: str, run_tokens_per_s: float) -> rf.Flops:
    per_token = flops.training_flops_per_token(plan.dims, plan.config.seq_len)
    achieved = per_token * run_tokens_per_s / plan.env.world_size / 1e12
    peak = flops.lookup_peak(device_type, device_name, plan.config.precision)
    return rf.Flops(
        formula=flops.FORMULA, n_params=plan.dims.params_matmul, flops_per_token=per_token,
        achieved_tflops_per_s=achieved, peak_tflops_per_s=peak.tflops, peak_source=peak.source,
        mfu=achieved / peak.tflops if peak.tflops else None, mfu_missing_reason=peak.missing_reason,
    )


def model_state_record(plan: Plan, measured: dict) -> rf.ModelState:
    replicated = tensor_parallel.replicated_param_count(plan.dims) if plan.tp_size > 1 else 0
    expected, how = accounting.expected_bytes(plan.config, plan.dims.params_total - replicated, replicated,
                                              plan.tp_size, plan.dp_size)
    total = measured["params_bytes"] + measured["grads_bytes"] + measured["optimizer_bytes"]
    return rf.ModelState(**measured, total_bytes=total, expected_bytes=expected, expectation=how)


def train(plan: Plan) -> int:
    started_at, t0 = datetime.now(timezone.utc), time.perf_counter()
    device = launch.select_device(plan.env)
    if plan.config.mode != "single":
        launch.init_process_group(plan.env, device)
    mesh = build_mesh(device, plan.env.world_size, plan.env.rank, plan.tp_size)
    run_id, out = run_identity(plan.config, plan.env)
    config = plan.config.model_copy(update={"run_id": run_id, "out": out, "steps": plan.total_steps})
    plan = replace(plan, config=config)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    _log(plan, f"run {run_id}: {config.mode}, {config.model}, world {plan.env.world_size} (dp {plan.dp_size} x tp "
               f"{plan.tp_size}), batch {config.batch_size}/rank, {plan.total_steps} steps, {config.precision}, on {device_name}")

    status, error, throughput, trainer = "completed", None, None, None
    try:
        trainer = Trainer(plan, device, mesh, run_id, out)
        trainer.run()
        throughput = trainer.throughput()
        if config.save_model:
            export.save_full_model(trainer.model, mesh, trainer.engine, out, plan.env.rank)
    except Exception as exc:  # recorded in the rank file; the exit status says it failed
        status = "oom" if is_out_of_memory(exc) else "failed"
        error = f"{type(exc).__name__}: {exc}".strip()
        if status == "oom":
            error = f"out of memory at batch size {config.batch_size} per rank: {error}"
        print(f"[hpml] rank {plan.env.rank}: {status}: {error}", file=sys.stderr, flush=True)

    start_step = trainer.start_step if trainer else 0
    losses = trainer.loss_values(completed=status == "completed") if trainer else []
    record = rf.RankFile(
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
        wall_time_s=time.perf_counter() - t0,
        throughput=throughput,
        flops=flops_record(plan, device.type, device_name, throughput.run_tokens_per_s) if throughput else None,
        memory=rf.Memory(**peak_memory(device)),
        model_state=model_state_record(plan, trainer.model_state) if throughput and trainer.model_state else None,
        loss=rf.Loss(start_step=start_step, values=losses, averaged_over_dp=status == "completed"),
    )
    path = rf.write(out, record)
    if status != "completed":
        return EXIT_OOM if status == "oom" else EXIT_FAILED
    if plan.env.rank == 0:
        f = record.flops
        mfu = f"{f.mfu:.1%}" if f.mfu is not None else f"n/a ({f.mfu_missing_reason})"
        _log(plan, f"final loss {losses[-1]:.4f}; {throughput.run_tokens_per_s:,.0f} tokens/s, "
                   f"{f.achieved_tflops_per_s:.3g} TFLOP/s per device, MFU {mfu}")
        _log(plan, f"results: {path.parent}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    env = launch.detect()
    try:
        plan = make_plan(argv, env)
    except UsageError as exc:
        if env.rank == 0:
            print(f"hpml train: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return train(plan)


if __name__ == "__main__":
    sys.exit(main())
