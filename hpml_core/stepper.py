"""Everything that depends on how a model is trained, behind one interface (``Stepper``), so the
training loop (``hpml_core.train``), the checkpoints (``hpml_core.checkpoint``) and the export
(``hpml_core.export``) never ask which backend a run has. There are two here, and a third,
``FSDPStepper`` (PyTorch's FSDP2), in ``hpml_core.fsdp``:

- ``TorchStepper``: plain PyTorch (one process, DDP, tensor parallelism, DP×TP with DDP over
  the DP group; FSDP2 is one too, with its own clipping, measurement and state files). Weights
  stay fp32 under autocast; fp16 adds a dynamic loss scaler whose
  overflow decision every rank agrees on (``hpml_core.loss_scaling``), so no TP rank skips a
  step its peer applies; accumulation skips DDP's all-reduce until the last micro-step;
  clipping knows the TP shards and sees unscaled gradients.
- ``DeepSpeedStepper``: DeepSpeed's ZeRO-3 engine, which casts the model to bf16/fp16 itself,
  keeps fp32 master weights, scales the loss for accumulation, clips and updates.

Each also writes its checkpointed state and loads it again, gathers the whole model for export,
and measures the model state it holds (``hpml_core.measure_model_state``, while the gradients
still exist). What a step folder of a checkpoint holds is therefore the stepper's:

- PyTorch: ``state-tp<r>.pt`` per tensor-parallel rank (model shard, optimizer and loss scaler),
  written by the first data-parallel replica (the others hold the same), and read back before
  training starts (``state_reader``), so a corrupt one is refused before any process group exists;
- ZeRO (stages 1 to 3): DeepSpeed's own checkpoint of the partitioned state, every rank writing
  its partition, each file atomically (``hpml_core.zero``), the step folder's name as its tag;
  checked against the manifest like the others, read by the engine once it exists;
- FSDP2: ``state-dp<d>-tp<r>.pt`` per rank (its shards of the model and the optimizer, and the
  loss scaler), read back before training like PyTorch's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn
from torch.autograd.profiler import record_function
from torch.nn.parallel import DistributedDataParallel

from hpml_core import measure_model_state, tensor_parallel
from hpml_core.checkpoint import Resume, StateReader
from hpml_core.loss_scaling import DynamicLossScaler
from hpml_core.mesh import Mesh, Position
from hpml_core.model import GPT
from hpml_core.contract.atomic import atomic_write
from hpml_core.contract.config import ZERO_STAGES, TrainConfig
from hpml_core.contract.errors import UsageError
from hpml_core.contract.step_parts import range_name

# hpml's precision names as torch dtypes, for the weights (parallelize) and for autocast (here).
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MicroBatches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class Stepper(Protocol):
    """What the training loop, the checkpoints and the export ask of a backend."""

    model_state: dict | None  # the model state held at the last step measured (``step(measure=True)``)

    def step(self, micro_batches: MicroBatches, measure: bool = False) -> torch.Tensor:
        """One optimizer step over the accumulation's micro-batches; returns their mean loss. With
        ``measure``, also measures the model state this rank holds, while the gradients exist."""
        ...

    def save_state(self, folder: Path, tag: str) -> None:
        """Collective: the state a resumed run needs (model, optimizer, loss scaler) under ``folder/tag``."""
        ...

    def load_state(self, resume: Resume) -> None:
        """Continue from the checkpoint ``resume``: the state as ``save_state`` wrote it."""
        ...

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Collective: the whole model, gathered from its shards and partitions, as a plain GPT's
        state dict in fp32 on the CPU, on every rank."""
        ...


def state_reader(mode: str, position: Position) -> StateReader:
    """What reads this rank's checkpointed state before the stepper exists (and before any
    process group): a PyTorch run's own file (under FSDP2 each rank's own shards); nothing for
    ZeRO, whose engine reads DeepSpeed's files itself once it exists."""
    if mode in ZERO_STAGES:
        return lambda folder, tag: None
    if mode == "fsdp2":
        from hpml_core.fsdp import FSDPStepper  # fsdp builds on this module: imported when asked for

        return partial(FSDPStepper.read_state, position=position)
    return partial(TorchStepper.read_state, position=position)


def _state_file(folder: Path, tag: str, tp_rank: int) -> Path:
    return folder / tag / f"state-tp{tp_rank}.pt"


def _whole_cpu_state(model: GPT, mesh: Mesh) -> dict[str, torch.Tensor]:
    """The plain GPT's state dict from this rank's (TP-sharded) model, in fp32 on the CPU."""
    state = tensor_parallel.full_state_dict(model, mesh) if mesh.tp_size > 1 else model.state_dict()
    return {name: tensor.detach().float().cpu().clone() for name, tensor in state.items()}


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


class TorchStepper:
    def __init__(self, model: GPT, trained: nn.Module, loss_fn: LossFn, config: TrainConfig, mesh: Mesh,
                 device: torch.device):
        self.model = model  # the plain (TP-sharded) module: saved, counted, exported
        self.trained = trained  # what the step calls: compiled and/or DDP-wrapped
        self.loss_fn, self.config, self.mesh = loss_fn, config, mesh
        self.optimizer = build_optimizer(model, config, device)
        self.scaler = DynamicLossScaler(enabled=config.precision == "fp16")
        self.autocast = (nullcontext() if config.precision == "fp32"
                         else torch.autocast(device.type, dtype=TORCH_DTYPES[config.precision]))
        self.model_state: dict | None = None

    def step(self, micro_batches: MicroBatches, measure: bool = False) -> torch.Tensor:
        """One optimizer step over the accumulation's micro-batches; returns their mean loss."""
        accum, losses = self.config.grad_accum, []
        for micro, (x, y) in enumerate(micro_batches):
            with self._gradient_sync(last_micro_step=micro == accum - 1):
                with record_function(range_name("forward")), self.autocast:
                    loss = self.loss_fn(self.trained(x), y)
                with record_function(range_name("backward")):
                    self.scaler.scale(loss / accum).backward()
            losses.append(loss.detach())
        with record_function(range_name("optimizer")):
            self.scaler.unscale_(self.optimizer)  # fp16: collective, every rank learns of any overflow
            if self.config.grad_clip > 0:
                self._clip_gradients()
            self.scaler.step(self.optimizer)  # skipped on every rank, or on none
            self.scaler.update()
        if measure:  # while the gradients still exist
            self.model_state = self._measure_model_state()
        with record_function(range_name("optimizer")):
            self.optimizer.zero_grad(set_to_none=True)
        return torch.stack(losses).mean()

    def _measure_model_state(self) -> dict:
        return measure_model_state.torch_model(self.model, self.optimizer)

    def _gradient_sync(self, last_micro_step: bool):
        """DDP all-reduces gradients on the last micro-step of an accumulation only."""
        if last_micro_step or not isinstance(self.trained, DistributedDataParallel):
            return nullcontext()
        return self.trained.no_sync()

    def _clip_gradients(self) -> None:
        params = list(self.model.parameters())
        if self.mesh.tp_size > 1:
            tensor_parallel.clip_grad_norm_(params, self.config.grad_clip, self.mesh.tp_group)
        else:
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)

    def save_state(self, folder: Path, tag: str) -> None:
        """Collective. The first data-parallel replica writes one file per TP rank (the others hold the same)."""
        if self.mesh.dp_rank == 0:
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict()}
            atomic_write(_state_file(folder, tag, self.mesh.tp_rank), lambda f: torch.save(state, f))

    @staticmethod
    def read_state(folder: Path, tag: str, position: Position) -> dict:
        """This TP rank's file, memory-mapped; raises if it is unreadable or lacks a part (every
        rank has checked every rank's file against the checkpoint's manifest before)."""
        state = torch.load(_state_file(folder, tag, position.tp_rank), map_location="cpu", weights_only=True,
                           mmap=True)
        state["model"], state["optimizer"], state["scaler"]  # noqa: B018 - all three must be there
        return state

    def load_state(self, resume: Resume) -> None:
        self.model.load_state_dict(resume.state["model"])
        self.optimizer.load_state_dict(resume.state["optimizer"])
        self.scaler.load_state_dict(resume.state["scaler"])

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter is already whole on its rank (or its TP shard)."""
        return _whole_cpu_state(self.model, self.mesh)


class DeepSpeedStepper:
    def __init__(self, model: GPT, engine, loss_fn: LossFn, mesh: Mesh):
        self.model = model  # the plain module inside the engine; its parameters are ZeRO-3 partitions
        self.engine, self.loss_fn, self.mesh = engine, loss_fn, mesh
        self.model_state: dict | None = None

    def step(self, micro_batches: MicroBatches, measure: bool = False) -> torch.Tensor:
        """DeepSpeed scales for accumulation itself, and clips and updates at the last micro-step."""
        losses, zero3 = [], self.engine.zero_optimization_stage() == 3
        for x, y in micro_batches:
            with record_function(range_name("forward")):
                loss = self.loss_fn(self.engine(x), y)
            with record_function(range_name("backward")):
                self.engine.backward(loss)
            if measure and not zero3 and self.engine.is_gradient_accumulation_boundary():
                # ZeRO-1/2 hold their reduced gradients only until the step frees them
                self.model_state = measure_model_state.zero12_engine(self.engine)
            with record_function(range_name("optimizer")):  # the update itself at the last micro-step only
                self.engine.step()
            losses.append(loss.detach())
        if measure and zero3:
            self.model_state = measure_model_state.zero3_engine(self.engine)
        return torch.stack(losses).mean()

    def save_state(self, folder: Path, tag: str) -> None:
        """Collective: every rank writes its own partition, in DeepSpeed's format, each file
        atomically (``hpml_core.zero``); a write that failed is raised once DeepSpeed's save returned."""
        writer = self.engine.checkpoint_engine
        writer.failure = None
        self.engine.save_checkpoint(str(folder), tag=tag, save_latest=False)
        if writer.failure is not None:
            raise writer.failure

    def load_state(self, resume: Resume) -> None:
        path, _ = self.engine.load_checkpoint(str(resume.folder), tag=resume.tag)
        if path is None:
            raise UsageError("--resume", f"DeepSpeed found no checkpoint {resume.tag} in {resume.folder}")

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters gathered whole from their partitions while their copy is taken."""
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.model.parameters())):
            return _whole_cpu_state(self.model, self.mesh)
