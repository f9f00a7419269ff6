"""Turn the plain GPT, built on the meta device, into what trains: passes applied from outside,
in torchtitan's order, all in this one file, so the model file stays unaware of all of them:

1. tensor parallelism (``hpml_core.tensor_parallel``), still on the meta device, which also
   decides the loss: a sharded LM head gives each rank a slice of the vocabulary's logits; or,
   with ``--fp8``, the blocks' linear layers swapped for float8 ones (``hpml_core.fp8``);
2. the weights: each rank fills only its own part of the run's initial weights, one parameter
   at a time (``hpml_core.materialize``); under ZeRO-3 each part of the model is partitioned as
   soon as it is filled, so no rank ever holds the whole model;
3. activation checkpointing of every block;
4. ``torch.compile`` of each block (``compile_blocks``: one compilation that every block
   reuses) and, without TP, of the loss: its fp32 upcast, log-softmax and gather over the
   vocabulary then fuse into a few passes over the logits instead of writing fp32 copies of
   them (measured on an H200: hpml_core/bench/RESULTS.md);
5. data parallelism: PyTorch DDP over the data-parallel group, DeepSpeed's ZeRO stage 1, 2
   or 3 (``hpml_core.zero``), which owns the optimizer, or PyTorch's FSDP2 (``hpml_core.fsdp``).
   Because this last pass decides how gradients are synchronised and the update applied, it
   returns the ``Stepper`` that trains the result (``hpml_core.stepper``).

Under DeepSpeed (ZeRO-1, 2 or 3), compilation happens inside its engine (``engine.compile()``)
after the wrap, since ZeRO-3's hooks must see the plain modules. Under FSDP2 (``parallelize_fsdp2``)
the weights come last: ``fully_shard`` is applied on the meta device and each rank then fills
only its shards; the compiled blocks' forwards are surrounded by FSDP2's hooks, so its gathers
and reduce-scatters stay eager around the compiled graphs.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from torch.autograd.profiler import record_function
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from hpml_core import fp8, fsdp, tensor_parallel, zero
from hpml_core.materialize import materialize, parameter_shapes
from hpml_core.mesh import Mesh
from hpml_core.model import GPT, next_token_loss
from hpml_core.contract.config import ZERO_STAGES, TrainConfig
from hpml_core.contract.precision import run_regime
from hpml_core.contract.step_parts import range_name
from hpml_core.stepper import TORCH_DTYPES, DeepSpeedStepper, Stepper, TorchStepper, build_optimizer


def _named_when_recomputed(forward):
    """The block's forward, opening a ``hpml.recompute`` range when the backward pass runs it
    again, so a profiled step tells recomputation from the first forward."""
    def run(*args, **kwargs):
        if torch._C._current_graph_task_id() == -1:  # not inside a backward pass: the first forward
            return forward(*args, **kwargs)
        with record_function(range_name("recompute")):
            return forward(*args, **kwargs)
    return run


def apply_activation_checkpointing(model: GPT, name_recomputation: bool) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them.

    The block's forward is wrapped in place, so parameter names (and so checkpoints) are the
    same with and without it. Under ``torch.compile`` the recomputation is not named (the
    compiled graph would break at the range) and a profile counts it in the backward.
    """
    for block in model.blocks:
        forward = _named_when_recomputed(block.forward) if name_recomputation else block.forward
        block.forward = partial(checkpoint, forward, use_reentrant=False)


def parallelize(model: GPT, mesh: Mesh, config: TrainConfig, device: torch.device, record_dir: Path) -> Stepper:
    """Apply the passes to ``model``, a GPT on the meta device (in place), and return what steps
    it; ZeRO-3 records its DeepSpeed configuration in ``record_dir`` (the attempt's folder)."""
    shapes = parameter_shapes(model)  # whole shapes, before TP replaces layers by shards
    loss_fn = next_token_loss
    if mesh.tp_size > 1:
        loss_fn = tensor_parallel.apply_tensor_parallel(model, mesh)
    if config.fp8:  # never with TP (the contract refuses it), always before compile and sharding
        fp8.apply_fp8(model)
    if config.mode == "fsdp2":
        return parallelize_fsdp2(model, shapes, loss_fn, mesh, config, device)
    by_deepspeed = config.mode in ZERO_STAGES
    zero3 = config.mode == "zero3"
    # ZeRO's optimizer is made while the parameters still have their shapes (build_optimizer
    # reads them for weight decay; a ZeRO-3 partitioned parameter is an empty tensor).
    optimizer = build_optimizer(model, config, device) if by_deepspeed else None
    materialize(model, shapes, model.dims.n_layer, config.seed, device,
                TORCH_DTYPES[run_regime(config).weights_dtype],  # the regime's weights
                then=zero.partitioner(config, mesh) if zero3 else None)
    if config.grad_ckpt:
        apply_activation_checkpointing(model, name_recomputation=not config.compile)
    if config.compile and mesh.tp_size == 1:  # the vocabulary-parallel loss has collectives: left eager
        loss_fn = torch.compile(loss_fn)
    if by_deepspeed:  # compiled by DeepSpeed's engine, if at all
        return DeepSpeedStepper(model, zero.initialize(model, optimizer, config, mesh, record_dir), loss_fn, mesh)
    if config.compile:
        compile_blocks(model)
    trained: nn.Module = model
    if config.mode == "ddp" and mesh.dp_size > 1:  # gradients all-reduced over the DP group only
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          process_group=mesh.dp_group)
    return TorchStepper(model, trained, loss_fn, config, mesh, device)


def compile_blocks(model: GPT) -> None:
    """``torch.compile`` of each block's own forward (checkpointed or not), torchtitan's way.

    The blocks share one forward, so it is traced and compiled once and every block reuses the
    result (their parameters are the graph's inputs, not constants: no recompilation per
    block); compiling the whole model traced every block into one graph, so its compile time
    grew with the depth: GPT-2 Large (36 blocks) on this project's CPU machine took 78 s to
    compile whole and 15 s by block (docs/speed.md). The embeddings and the final LayerNorm stay
    eager (a few elementwise passes a step). Under DDP, dynamo still splits each block's graph
    at DDP's gradient buckets (its DDPOptimizer), as it split the whole model's; FSDP2's
    gathers and reduce-scatters, hooked around each block, stay outside the compiled graphs."""
    for block in model.blocks:
        block.forward = torch.compile(block.forward)


def parallelize_fsdp2(model: GPT, shapes: dict[str, torch.Size], loss_fn, mesh: Mesh, config: TrainConfig,
                      device: torch.device) -> Stepper:
    """FSDP2 after TP, in torchtitan's order: activation checkpointing, compile per block, then
    ``fully_shard`` (each block, then the root) on the meta device; only then does each rank
    fill its shards, in fp32 whatever the precision (the regime's sharded parameters)."""
    tp_sharded = fsdp.tp_sharded_names(model)  # before fully_shard replaces the marked parameters
    if config.grad_ckpt:
        apply_activation_checkpointing(model, name_recomputation=not config.compile)
    if config.compile:
        compile_blocks(model)
        if mesh.tp_size == 1:  # the vocabulary-parallel loss has collectives: left eager
            loss_fn = torch.compile(loss_fn)
    fsdp.shard(model, mesh, config, device)
    fsdp.fill_shards(model, shapes, config.seed, mesh, device)
    return fsdp.FSDPStepper(model, loss_fn, config, mesh, device, tp_sharded)
