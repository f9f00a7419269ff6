"""Turn the plain GPT into what trains: passes applied from outside, in torchtitan's order
(tensor parallelism, then activation checkpointing, then compilation, then data parallelism).
The model file stays unaware of all of them. Tensor parallelism is applied by the trainer
(it also chooses the loss), and ZeRO-3's data parallelism by DeepSpeed (``hpml_core.zero``),
which needs the optimizer."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from hpml_core.spec.config import TrainConfig
from hpml_core.mesh import Mesh
from hpml_core.model import GPT


def apply_activation_checkpointing(model: GPT) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them.

    The block's forward is wrapped in place, so parameter names (and so checkpoints) are the
    same with and without it.
    """
    for block in model.blocks:
        block.forward = partial(checkpoint, block.forward, use_reentrant=False)


def parallelize(model: GPT, config: TrainConfig, device: torch.device, mesh: Mesh) -> nn.Module:
    """The module the training step calls; ``model`` itself stays the one to save and count."""
    if config.grad_ckpt:
        apply_activation_checkpointing(model)
    # Under ZeRO-3, DeepSpeed's hooks must see the plain modules: the engine compiles instead (hpml_core.zero).
    trained: nn.Module = torch.compile(model) if config.compile and config.mode != "hybrid" else model
    if config.mode == "baseline" and mesh.dp_size > 1:  # gradients all-reduced over the DP group only
        trained = DistributedDataParallel(trained, device_ids=[device.index] if device.type == "cuda" else None,
                                          process_group=mesh.dp_group)
    return trained
