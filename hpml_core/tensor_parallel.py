"""Megatron-style tensor parallelism, applied to the plain GPT from outside.

Each block's attention QKV and MLP up-projection become ``ColumnParallelLinear`` (each rank
keeps a slice of the output features: whole heads of q, k and v, a quarter of the MLP...),
and the attention output and MLP down-projection become ``RowParallelLinear`` (each rank
multiplies its slice of the input features and the partial sums are all-reduced). So a block
costs two all-reduces forward and two backward, through two conjugate autograd functions:

- ``copy_to_tp``: identity forward, all-reduce of the gradient backward (where a replicated
  activation enters a column-parallel layer, each rank holds only its part of the gradient);
- ``reduce_from_tp``: all-reduce forward, identity backward (partial sums of a row-parallel
  layer).

The token embedding and the LM head tied to it are vocabulary-parallel: each rank holds
vocab_size / tp rows, looks up the ids in its range, and computes the cross-entropy over the
full vocabulary from its slice of the logits without ever gathering them
(``vocab_parallel_cross_entropy``). LayerNorms, the position embedding and the biases of
row-parallel layers stay replicated; their gradients come out equal on every TP rank.

``apply_tensor_parallel`` replaces the layers of a GPT by this rank's shards. It is applied to a
model on the meta device (shapes, no memory); each sharded layer knows how to take its shard out
of a whole tensor (``shard``), so that ``hpml_core.materialize`` can then give it its part of the
run's initial weights one parameter at a time: a TP run starts from exactly the weights of the
unsharded one, and no rank ever holds them all. (Applied to a model with weights, it shards them
the same way.) Sharded parameters are marked ``tensor_model_parallel = True`` so gradient-norm
clipping (ours and DeepSpeed's) counts each of their elements once and each replicated parameter
once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from hpml_core.mesh import Mesh
from hpml_core.model import GPT
# What this file leaves whole on every TP rank, counted from the dimensions (the contract's rule).
from hpml_core.contract.model_state import replicated_param_count  # noqa: F401


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_tp(x: torch.Tensor, group) -> torch.Tensor:
    return _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group) -> torch.Tensor:
    return _ReduceFromTP.apply(x, group)


def _mark_sharded(param: nn.Parameter) -> nn.Parameter:
    param.tensor_model_parallel = True
    return param


def _rows(weight: torch.Tensor, mesh: Mesh, parts: int = 1) -> torch.Tensor:
    """This rank's slice of dim 0, taken from each of ``parts`` equal blocks (q, k and v)."""
    return torch.cat([block.chunk(mesh.tp_size)[mesh.tp_rank] for block in weight.chunk(parts)]).clone()


class ColumnParallelLinear(nn.Module):
    """y_local = x @ W_local^T + b_local: this rank's slice of the output features."""

    def __init__(self, full: nn.Linear, mesh: Mesh, parts: int = 1):
        super().__init__()
        self.mesh, self.group, self.parts = mesh, mesh.tp_group, parts
        self.weight = _mark_sharded(nn.Parameter(self.shard("weight", full.weight.detach())))
        self.bias = _mark_sharded(nn.Parameter(self.shard("bias", full.bias.detach())))

    def shard(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's part of the whole ``weight`` or ``bias``: its output rows, within q, k and v."""
        return _rows(full, self.mesh, self.parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(copy_to_tp(x, self.group), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = all-reduce(x_local @ W_local^T) + b: this rank's slice of the input features."""

    def __init__(self, full: nn.Linear, mesh: Mesh):
        super().__init__()
        self.mesh, self.group = mesh, mesh.tp_group
        self.weight = _mark_sharded(nn.Parameter(self.shard("weight", full.weight.detach())))
        self.bias = nn.Parameter(self.shard("bias", full.bias.detach()))  # replicated: added once, after the reduction

    def shard(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's part of the whole ``weight`` (its input columns) or ``bias`` (all of it)."""
        if name == "bias":
            return full.clone()
        return full.chunk(self.mesh.tp_size, dim=1)[self.mesh.tp_rank].clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reduce_from_tp(F.linear(x, self.weight), self.group) + self.bias


class VocabParallelEmbedding(nn.Module):
    """Rows [start, start + vocab/tp) of the embedding; other ids contribute zeros to the sum."""

    def __init__(self, full: nn.Embedding, mesh: Mesh):
        super().__init__()
        self.mesh, self.group = mesh, mesh.tp_group
        self.weight = _mark_sharded(nn.Parameter(self.shard("weight", full.weight.detach())))
        self.start = mesh.tp_rank * self.weight.shape[0]

    def shard(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of the whole embedding."""
        return _rows(full, self.mesh)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        local = idx - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return reduce_from_tp(out.masked_fill(outside.unsqueeze(-1), 0.0), self.group)


class VocabParallelLMHead(nn.Module):
    """Logits for this rank's vocabulary slice, from the embedding slice it is tied to."""

    def __init__(self, embedding: VocabParallelEmbedding):
        super().__init__()
        self.group = embedding.group
        self.weight = embedding.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(copy_to_tp(x, self.group), self.weight)


def vocab_parallel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, group, vocab_start: int) -> torch.Tensor:
    """Mean cross-entropy over the full vocabulary, from each rank's slice of the logits.

    log-sum-exp and the target's logit are each assembled with one all-reduce; the max used
    for numerical stability is a constant to autograd, which leaves the gradient exact.
    """
    logits = logits.float().view(-1, logits.shape[-1])
    targets = targets.view(-1)
    with torch.no_grad():
        shift = logits.max(dim=-1).values
        dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=group)
    shifted = logits - shift.unsqueeze(-1)
    sum_exp = reduce_from_tp(shifted.exp().sum(dim=-1), group)
    local = targets - vocab_start
    inside = (local >= 0) & (local < logits.shape[-1])
    target_logit = shifted.gather(1, local.clamp(0, logits.shape[-1] - 1).unsqueeze(1)).squeeze(1)
    target_logit = reduce_from_tp(target_logit * inside, group)
    return (sum_exp.log() - target_logit).mean()


def apply_tensor_parallel(model: GPT, mesh: Mesh) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Replace the layers of a GPT, in place, by this rank's shards (on the meta device: shards
    to be filled later; otherwise shards of its weights); return the loss that goes with them
    (the logits are now this rank's vocabulary slice)."""
    for block in model.blocks:
        block.attn.qkv = ColumnParallelLinear(block.attn.qkv, mesh, parts=3)
        block.attn.proj = RowParallelLinear(block.attn.proj, mesh)
        block.mlp.fc = ColumnParallelLinear(block.mlp.fc, mesh)
        block.mlp.proj = RowParallelLinear(block.mlp.proj, mesh)
    model.wte = VocabParallelEmbedding(model.wte, mesh)
    model.lm_head = VocabParallelLMHead(model.wte)
    return partial(vocab_parallel_cross_entropy, group=mesh.tp_group, vocab_start=model.wte.start)


def _gather(shard: torch.Tensor, mesh: Mesh, dim: int = 0, parts: int = 1) -> torch.Tensor:
    """Inverse of the sharding: every rank's slice, put back in place (within each of ``parts``)."""
    shards = [torch.empty_like(shard) for _ in range(mesh.tp_size)]
    dist.all_gather(shards, shard.contiguous(), group=mesh.tp_group)
    blocks = [torch.cat([s.chunk(parts, dim=dim)[i] for s in shards], dim=dim) for i in range(parts)]
    return torch.cat(blocks, dim=dim)


def full_state_dict(model: GPT, mesh: Mesh, local: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The unsharded model's state dict (same keys as a plain GPT), assembled on every TP rank.

    ``local``: this TP rank's shard of each parameter, by name (default: the model's own
    parameters; FSDP2, whose registered parameters are further split over DP, passes its shards
    gathered over the DP group)."""
    local = local if local is not None else {name: param.data for name, param in model.named_parameters()}
    state = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, ColumnParallelLinear):
            state[prefix + "weight"] = _gather(local[prefix + "weight"], mesh, parts=module.parts)
            state[prefix + "bias"] = _gather(local[prefix + "bias"], mesh, parts=module.parts)
        elif isinstance(module, RowParallelLinear):
            state[prefix + "weight"] = _gather(local[prefix + "weight"], mesh, dim=1)
            state[prefix + "bias"] = local[prefix + "bias"]
        elif isinstance(module, VocabParallelEmbedding):
            state[prefix + "weight"] = _gather(local[prefix + "weight"], mesh)
    for name, tensor in local.items():
        state.setdefault(name, tensor)
    state["lm_head.weight"] = state["wte.weight"]
    return state


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float, group) -> torch.Tensor:
    """Clip by the norm of the whole (unsharded) model's gradient.

    Sharded parameters contribute their local squares, summed over the TP group; replicated
    ones are equal on every TP rank and count once. Without this, each rank would clip by a
    different, wrong norm and the replicas would drift apart.
    """
    with_grad = [p for p in params if p.grad is not None]
    device = with_grad[0].grad.device

    def sum_of_squares(tensors: list[nn.Parameter]) -> torch.Tensor:
        return torch.stack([p.grad.float().pow(2).sum() for p in tensors]).sum() if tensors \
            else torch.zeros((), device=device)

    sharded_sq = sum_of_squares([p for p in with_grad if getattr(p, "tensor_model_parallel", False)])
    dist.all_reduce(sharded_sq, group=group)
    replicated_sq = sum_of_squares([p for p in with_grad if not getattr(p, "tensor_model_parallel", False)])
    total = (sharded_sq + replicated_sq).sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)  # as torch.nn.utils.clip_grad_norm_
    torch._foreach_mul_([p.grad for p in with_grad], scale)
    return total
