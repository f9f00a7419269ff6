"""PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``, ``--mode fsdp2``), alone and with hpml's
own tensor parallelism.

FSDP2 shards over the data-parallel group only: its mesh is a 1-D ``DeviceMesh`` made from the
rank's DP group (``mesh.dp_group``, ranks [tp_rank, tp_rank + tp, ...] as the ``Layout`` says),
so with TP each rank's parameters are its TP shards (plain tensors) and FSDP2 splits those
further over the DP group. Each block is one FSDP group (one all-gather forward, one backward
when resharded, one reduce-scatter of its gradients); the root group holds the rest (the
embeddings, the tied LM head and the last LayerNorm).

Precision (``hpml_core.contract.precision``, torchtitan's default): the sharded parameters are
fp32 and the optimizer updates them (no separate master); in bf16/fp16 each group is
all-gathered in 16 bits for its forward and backward and its gradients are reduce-scattered in
fp32 (``MixedPrecisionPolicy(param_dtype, reduce_dtype=float32)``), with no autocast. fp16 adds
hpml's dynamic loss scaler, whose overflow decision every rank agrees on.

No rank holds the whole model: ``fully_shard`` is applied on the meta device, ``to_empty``
allocates each rank's (padded) shards only, and ``fill_shards`` copies each parameter's part of
the run's initial value into them, drawing one whole parameter at a time
(``hpml_core.model.initial_value`` -> the TP shard, the layer's ``shard`` -> this DP rank's
dim-0 chunk, cut as FSDP2 cuts it: ``torch.chunk`` into dp parts, so every chunk but the last
non-empty one has ceil(d0 / dp) rows, the rest fewer or none; FSDP2 pads each rank's storage
to ceil(d0 / dp) rows). ``distribute_tensor`` would scatter from one rank holding it all.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from hpml_core import measure_model_state, tensor_parallel
from hpml_core.checkpoint import Resume
from hpml_core.measure_model_state import local_part
from hpml_core.mesh import Mesh, Position
from hpml_core.model import GPT, initial_value
from hpml_core.contract.atomic import atomic_write
from hpml_core.contract.config import TrainConfig
from hpml_core.stepper import TORCH_DTYPES, LossFn, TorchStepper


def tp_sharded_names(model: nn.Module) -> frozenset[str]:
    """The parameters tensor parallelism split (marked ``tensor_model_parallel``), by name: taken
    before ``fully_shard``, whose new sharded parameters do not carry the mark."""
    return frozenset(name for name, p in model.named_parameters() if getattr(p, "tensor_model_parallel", False))


def mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """fp32 throughout, or gathered in 16 bits with gradients reduced in fp32 (the regime's)."""
    if precision == "fp32":
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=TORCH_DTYPES[precision], reduce_dtype=torch.float32)


def shard(model: GPT, mesh: Mesh, config: TrainConfig, device: torch.device) -> None:
    """``fully_shard`` each block, then the root, over the DP group (on the meta device).

    The blocks reshard after their forward as ``--fsdp-reshard-after-forward`` says (gathered
    again for the backward, ZeRO-3's way, or kept until then). The root group never reshards
    after the forward, whatever the flag (FSDP2's own default for the root, and torchtitan's
    choice): its tied embedding and LM head are the last thing the forward uses and the first
    the backward needs, so resharding them would only gather them again at once.
    """
    dp_mesh = DeviceMesh.from_group(mesh.dp_group, device.type, mesh_dim_names=("dp",))
    policy = mixed_precision(config.precision)
    for block in model.blocks:
        fully_shard(block, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=config.fsdp_reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=False)


def dp_chunk(tensor: torch.Tensor, mesh: Mesh) -> torch.Tensor:
    """This DP rank's rows of ``tensor`` as FSDP2 splits dim 0 (``torch.chunk``; empty past the last chunk)."""
    chunks = torch.chunk(tensor, mesh.dp_size, dim=0)
    return chunks[mesh.dp_rank] if mesh.dp_rank < len(chunks) else tensor[:0]


@torch.no_grad()
def fill_shards(model: GPT, shapes: dict[str, torch.Size], seed: int, mesh: Mesh, device: torch.device) -> None:
    """Allocate this rank's fp32 shards (``to_empty``: FSDP2 pads them) and copy into each its
    part of the parameter's initial value, drawn whole one parameter at a time; the tied LM
    head is filled once, as the token embedding."""
    model.to_empty(device=device)
    filled: set[int] = set()
    for owner_name, owner in model.named_modules():
        for leaf, param in owner.named_parameters(recurse=False):
            if id(param) in filled:
                continue
            filled.add(id(param))
            name = f"{owner_name}.{leaf}"
            whole = initial_value(name, shapes[name], model.dims.n_layer, seed)
            tp_part = owner.shard(leaf, whole) if hasattr(owner, "shard") else whole
            value, mine = dp_chunk(tp_part, mesh), local_part(param)
            if value.shape != mine.shape:  # FSDP2 cut dim 0 otherwise than torch.chunk
                raise RuntimeError(f"{name}: FSDP2's shard is {tuple(mine.shape)}, hpml's {tuple(value.shape)}")
            mine.copy_(value)
            del whole, tp_part, value  # before the next parameter is drawn


@torch.no_grad()
def clip_grad_norm_(model: nn.Module, max_norm: float, mesh: Mesh, tp_sharded: frozenset[str]) -> torch.Tensor:
    """Clip by the norm of the whole (unsharded) model's gradient.

    Each FSDP2 shard holds its rows of a gradient once over the DP group, so local sums of
    squares are summed over it; those of TP-sharded parameters are then summed over the TP
    group too, while replicated ones (equal on every TP rank) count once, as in
    ``tensor_parallel.clip_grad_norm_``.
    """
    named = [(name, local_part(p.grad)) for name, p in model.named_parameters() if p.grad is not None]
    device = named[0][1].device

    def sum_of_squares(grads: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([g.float().pow(2).sum() for g in grads]).sum() if grads else torch.zeros((), device=device)

    sums = torch.stack([sum_of_squares([g for n, g in named if n in tp_sharded]),
                        sum_of_squares([g for n, g in named if n not in tp_sharded])])
    dist.all_reduce(sums, group=mesh.dp_group)
    sharded_sq, replicated_sq = sums[0].clone(), sums[1]
    if mesh.tp_size > 1:
        dist.all_reduce(sharded_sq, group=mesh.tp_group)
    total = (sharded_sq + replicated_sq).sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)  # as torch.nn.utils.clip_grad_norm_
    torch._foreach_mul_([g for _, g in named], scale)
    return total


def _state_file(folder: Path, tag: str, dp_rank: int, tp_rank: int) -> Path:
    return folder / tag / f"state-dp{dp_rank}-tp{tp_rank}.pt"


class FSDPStepper(TorchStepper):
    """Trains a model ``shard`` and ``fill_shards`` prepared: ``TorchStepper``'s step, with
    clipping and measurement over shards, no autocast, and per-rank state files.

    Accumulation reduce-scatters the gradients at every micro-step, into the sharded gradient
    (FSDP2's default; ``set_requires_gradient_sync(False)`` is not used): skipping the sync
    would keep every block's whole fp32 gradient on every rank between micro-steps, the whole
    model's gradient, which is the memory FSDP exists to save; the price is one reduce-scatter
    per block per micro-step instead of per step. Both are exact (the average over DP of each
    micro-step's mean loss divided by the accumulation); this way also keeps the memory of a
    step independent of ``--grad-accum``.
    """

    def __init__(self, model: GPT, loss_fn: LossFn, config: TrainConfig, mesh: Mesh, device: torch.device,
                 tp_sharded: frozenset[str]):
        super().__init__(model, model, loss_fn, config, mesh, device)  # FSDP2's hooks are on the model itself
        self.autocast = nullcontext()  # FSDP2 casts each group as it gathers it (``mixed_precision``)
        self.tp_sharded = tp_sharded

    def _clip_gradients(self) -> None:
        clip_grad_norm_(self.model, self.config.grad_clip, self.mesh, self.tp_sharded)

    def _measure_model_state(self) -> dict:
        return measure_model_state.fsdp2_model(self.model, self.optimizer)

    def save_state(self, folder: Path, tag: str) -> None:
        """Every rank writes its own shards: the parameters' and the optimizer's local tensors
        (by name and by the optimizer's index) and the loss scaler. A resumed run has the same
        DP and TP sizes (the fingerprint holds both), hence the same shards."""
        optimizer = self.optimizer.state_dict()
        optimizer["state"] = {i: {k: local_part(v) for k, v in s.items()} for i, s in optimizer["state"].items()}
        state = {"model": {name: local_part(p.detach()) for name, p in self.model.named_parameters()},
                 "optimizer": optimizer, "scaler": self.scaler.state_dict()}
        atomic_write(_state_file(folder, tag, self.mesh.dp_rank, self.mesh.tp_rank), lambda f: torch.save(state, f))

    @staticmethod
    def read_state(folder: Path, tag: str, position: Position) -> dict:
        """This rank's file, memory-mapped; raises if it is unreadable or lacks a part (every rank
        has checked every rank's file against the checkpoint's manifest before)."""
        state = torch.load(_state_file(folder, tag, position.dp_rank, position.tp_rank), map_location="cpu",
                           weights_only=True, mmap=True)
        state["model"], state["optimizer"], state["scaler"]  # noqa: B018 - all three must be there
        return state

    @torch.no_grad()
    def load_state(self, resume: Resume) -> None:
        """Copy the saved shards into this rank's, and give the optimizer its moments back as
        DTensors laid out like the parameters they belong to."""
        saved = resume.state
        for name, param in self.model.named_parameters():
            local_part(param).copy_(saved["model"][name])
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        optimizer = dict(saved["optimizer"])
        optimizer["state"] = {i: {k: self._like(params[i], v) for k, v in s.items()}
                              for i, s in optimizer["state"].items()}
        self.optimizer.load_state_dict(optimizer)
        self.scaler.load_state_dict(saved["scaler"])

    @staticmethod
    def _like(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """A saved local tensor as a DTensor laid out like ``param``; a scalar (the step) as it is."""
        if not isinstance(param, DTensor) or value.dim() == 0:
            return value
        return DTensor.from_local(value.to(local_part(param).device), param.device_mesh, param.placements,
                                  run_check=False, shape=param.shape, stride=param.stride())

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Collective: each parameter gathered over the DP group in fp32 (its TP shard), one at
        a time, then the TP shards joined (``tensor_parallel.full_state_dict``)."""
        whole = {name: p.full_tensor() if isinstance(p, DTensor) else p for name, p in self.model.named_parameters()}
        if self.mesh.tp_size > 1:
            state = tensor_parallel.full_state_dict(self.model, self.mesh, whole)
        else:
            state = {**whole, "lm_head.weight": whole["wte.weight"]}  # tied, as in GPT's own state dict
        return {name: tensor.float().cpu().clone() for name, tensor in state.items()}
