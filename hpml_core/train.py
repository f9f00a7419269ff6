"""Training job entry point: ``python -m hpml_core.train`` (or ``hpml train``).

Runs alone, under torchrun, under the deepspeed launcher, or as srun tasks (see
``hpml_core.launch``). Every bad input is refused before a process group exists, with one
line naming the flag and exit status 2. Otherwise every rank writes ``rank-<k>.json`` into
the run folder at the end, also when training failed (status "failed", exit 1) or ran out of
memory (status "oom", exit 3). The step itself reads like nanoGPT's: get batch, forward under
autocast, backward, clip, update.
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from hpml_core import accounting, checkpoint, export, launch, tensor_parallel, zero
from hpml_core.spec import rank_file as rf
from hpml_core.spec.config import TrainConfig, check_layout, parse_args, resolve_steps
from hpml_core.batches import TokenBatches, TokenData
from hpml_core.spec.errors import EXIT_FAILED, EXIT_OOM, EXIT_STOPPED, EXIT_USAGE, UsageError
from hpml_core.mesh import Mesh, build_mesh, grid_position
from hpml_core.model import GPT, ModelDims, model_dims, next_token_loss
from hpml_core.parallelize import parallelize
from hpml_core.spec.status_file import Progress
from hpml_core.rank_result import build_rank_file, cpu_name
from hpml_core.stopping import StopRequest
from hpml_core.timing import StepTimer

AUTOCAST_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# A progress line (and status.json) every tenth of the run, and at least this often.
REPORT_SECONDS = 30


@dataclass(frozen=True)
class Plan:
    """Everything decided before training starts; validated, so the rest can trust it."""

    config: TrainConfig
    source: ConfigSource
    env: launch.ProcessEnv
    dims: ModelDims
    layout: Layout
    batches: TokenBatches
    total_steps: int
    resume_state: checkpoint.Resume | None

    @property
    def dp_rank(self) -> int:
        return self.layout.position(self.env.rank)[0]

    @property
    def tp_rank(self) -> int:
        return self.layout.position(self.env.rank)[1]


def make_plan(argv: list[str] | None, env: launch.ProcessEnv) -> Plan:
    """The run this process is part of, or a ``UsageError``: the contract's checks (the same
    ``hpml plan`` makes), then what only the job can know (a GPU for NCCL, a checkpoint)."""
    config, source = parse_args(argv)
    data = TokenData.open(config.data)
    run = resolve(config, env.world_size, env.local_world_size, data.meta)
    config, layout = run.config, run.layout
    if config.dist_backend == "nccl" and not torch.cuda.is_available():
        raise UsageError("--dist-backend", "nccl needs GPUs, and this machine has none (allowed here: gloo)")
    dp_rank, tp_rank = layout.position(env.rank)
    batches = TokenBatches(data, config.seq_len, config.batch_size, layout, dp_rank, config.seed, config.grad_accum)
    resume_state = None
    if config.resume:
        if config.out is None:
            raise UsageError("--resume", "needs --out, the run folder to resume in")
        resume_state = checkpoint.find(checkpoint_dir(config, config.out), checkpoint.fingerprint(config, layout.dp_size),
                                       tp_rank=tp_rank, zero3=config.mode == "zero3")
        start = resume_state.step if resume_state else 0
        if run.total_steps - start <= config.warmup_steps:
            raise UsageError("--steps", f"{run.total_steps} leaves no timed step after resuming at step {start} "
                             f"with {config.warmup_steps} warm-up steps")
    return Plan(config, source, env, run.dims, layout, batches, run.total_steps, resume_state)


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


def _log(plan: Plan, message: str) -> None:
    if plan.env.rank == 0:
        print(f"[hpml] {message}", flush=True)


class Trainer:
    """Builds the parallel model and runs the steps. Three ways to train one model:
    plain PyTorch (single process, DDP, tensor parallelism, DP×TP with DDP over the DP group),
    and DeepSpeed's ZeRO-3 engine (hybrid, with or without TP inside)."""

    def __init__(self, plan: Plan, device: torch.device, mesh: Mesh, out: Path, stop: StopRequest,
                 progress: Progress):
        self.plan, self.device, self.mesh, self.out, self.stop, self.progress = plan, device, mesh, out, stop, progress
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

    def run(self) -> bool:
        """Train to the last step; False if a stop signal ended it early, after a checkpoint."""
        plan, config = self.plan, self.plan.config
        first_timed = self.start_step + config.warmup_steps
        report_every = max(1, (plan.total_steps - self.start_step) // 10)
        started = last_report = time.perf_counter()
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
            now = time.perf_counter()  # the host's clock: no wait for the device
            if done % report_every == 0 or done == plan.total_steps or now - last_report >= REPORT_SECONDS:
                _log(plan, f"step {done}/{plan.total_steps}  {now - started:.1f} s")
                self.progress.update("running", done)
                last_report = now
            if done < plan.total_steps and self.stop.agreed():
                if not (config.checkpoint_every and done % config.checkpoint_every == 0):
                    self.save_checkpoint(done)
                _log(plan, f"stopped by {self.stop.signal_name} after step {done}; checkpoint saved, resume with --resume")
                return False
        return True

    def save_checkpoint(self, step: int) -> None:
        plan = self.plan
        checkpoint.save(checkpoint_dir(plan.config, self.out), step, self.model, self.optimizer, self.scaler,
                        self.engine, self.mesh, plan.env.rank, checkpoint.fingerprint(plan.config, plan.dp_size))

    def loss_values(self, ranks_alive: bool) -> list[float]:
        """Per-step losses, read from the device once; averaged over data-parallel ranks (one
        collective for the whole run) when every rank is known to be alive."""
        if not ranks_alive:  # one scalar at a time: after an out-of-memory error even a stack may fail
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


def train(plan: Plan) -> int:
    started_at, t0 = datetime.now(timezone.utc), time.perf_counter()
    stop = StopRequest()
    device = launch.select_device(plan.env)
    if plan.config.mode != "single":
        launch.init_process_group(plan.env, device, plan.config.dist_backend)
    mesh = build_mesh(device, plan.env.world_size, plan.env.rank, plan.tp_size)
    run_id, out = run_identity(plan.config, plan.env)
    config = plan.config.model_copy(update={"run_id": run_id, "out": out, "steps": plan.total_steps})
    plan = replace(plan, config=config)
    progress = Progress(out, plan.total_steps, enabled=plan.env.rank == 0)
    progress.update("starting", plan.resume_state.step if plan.resume_state else 0)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    _log(plan, f"run {run_id}: {config.mode}, {config.model}, world {plan.env.world_size} (dp {plan.dp_size} x tp "
               f"{plan.tp_size}), batch {config.batch_size}/rank, {plan.total_steps} steps, {config.precision}, on {device_name}")

    status, error, throughput, trainer = "completed", None, None, None
    try:
        trainer = Trainer(plan, device, mesh, out, stop, progress)
        if not trainer.run():
            status, error = "stopped", f"stopped by {trainer.stop.signal_name}; checkpoint saved"
        throughput = trainer.throughput() if trainer.timer.timed_steps else None
        if config.save_model and status == "completed":
            export.save_full_model(trainer.model, mesh, trainer.engine, out, plan.env.rank)
    except Exception as exc:  # recorded in the rank file; the exit status says it failed
        status = "oom" if is_out_of_memory(exc) else "failed"
        error = f"{type(exc).__name__}: {exc}".strip()
        if status == "oom":
            error = f"out of memory at batch size {config.batch_size} per rank: {error}"
        print(f"[hpml] rank {plan.env.rank}: {status}: {error}", file=sys.stderr, flush=True)

    record = build_rank_file(plan, trainer, run_id, status, error, throughput, device, device_name, started_at,
                             time.perf_counter() - t0)
    path = rf.write(out, record)
    progress.update(status, record.steps_completed, error)
    if status == "stopped" and dist.is_initialized():
        # Every rank stopped at the agreed step and is healthy: wait until all have written their
        # checkpoint and rank file, so that the first rank to exit (which makes srun or torchrun
        # end the others) cannot cut another's files short.
        dist.barrier()
        dist.destroy_process_group()
    if status != "completed":
        return {"oom": EXIT_OOM, "stopped": EXIT_STOPPED}.get(status, EXIT_FAILED)
    if plan.env.rank == 0:
        f = record.flops
        mfu = f"{f.mfu:.1%}" if f.mfu is not None else f"n/a ({f.mfu_missing_reason})"
        _log(plan, f"final loss {record.loss.values[-1]:.4f}; {throughput.run_tokens_per_s:,.0f} tokens/s, "
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
