"""Measure the model state a rank holds, from its tensors: the bytes of its parameters,
gradients and optimizer state (master weights included). Each stepper (``hpml_core.stepper``)
calls the function for its backend at the last step; the rank file sets the figure against the
analytic expectation for the run's mode (``hpml_core.contract.model_state``), and the memory
model (``hpml_core.contract.memory_model``) predicts the same bytes.

Measured bytes count each storage once, so views into DeepSpeed's flat buffers are not added
twice. With ``--zero-persistence-threshold`` above 0, ZeRO-3 keeps small parameters whole on
every rank: that shows in the measurement (``full_params_resident``), not in the expectation.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor


def _bytes_by_category(categories: dict[str, Iterable[torch.Tensor]], empty_views_count: bool = False) -> dict[str, int]:
    """Bytes of the storages behind each category; a storage counts once, in the first category
    that holds it (in fp32, DeepSpeed's master weights are the parameter partitions themselves).
    An empty tensor counts only with ``empty_views_count``: an FSDP2 rank past dim 0's last chunk
    holds an empty shard whose padded storage is real memory, while DeepSpeed's released
    parameters are empty tensors that hold nothing of their own."""
    seen: set[int] = set()
    totals = {}
    for name, tensors in categories.items():
        totals[name] = 0
        for t in tensors:
            if t is None or (t.numel() == 0 and not empty_views_count):
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                totals[name] += storage.nbytes()
    return totals


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values()
            if isinstance(v, torch.Tensor) and v.dim() > 0]  # not the scalar step counters


def torch_model(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """For a model trained by plain PyTorch; call while gradients exist (before zero_grad)."""
    params = list(model.parameters())
    measured = _bytes_by_category({
        "params_bytes": params, "grads_bytes": [p.grad for p in params], "optimizer_bytes": _state_tensors(optimizer),
    })
    return {"param_elements_local": sum(p.numel() for p in params), "full_params_resident": len(params), **measured}


def zero3_engine(engine) -> dict:
    """For a DeepSpeed ZeRO-3 engine, outside forward and backward."""
    params = list(engine.module.parameters())
    zero = engine.optimizer  # DeepSpeedZeroOptimizer_Stage3
    measured = _bytes_by_category({
        "params_bytes": [p.ds_tensor for p in params],
        "grads_bytes": [zero.grad_partitions_flat_buffer],
        "optimizer_bytes": [*zero.fp32_partitioned_groups_flat, *_state_tensors(zero.optimizer)],
    })
    return {
        "param_elements_local": sum(p.ds_tensor.numel() for p in params),
        # ZeRO-3 releases a gathered parameter after use: a non-empty .data here stayed resident
        "full_params_resident": sum(1 for p in params if p.data.numel() > 0),
        **measured,
    }


def zero12_engine(engine) -> dict:
    """For a DeepSpeed ZeRO-1/2 engine (``DeepSpeedZeroOptimizer``), at the accumulation boundary
    between ``engine.backward`` and ``engine.step``: the gradients exist only then, reduced, and the
    optimizer step frees them all (``DeepSpeedZeroOptimizer.step``: ``free_grad_in_param_list``,
    ``averaged_gradients[i] = None``).

    - parameters: the whole 16-bit (in fp32: fp32) parameters, views into one flat buffer per param
      group (``bit16_groups_flat``, padded to a multiple of 2·dp);
    - gradients: what ``averaged_gradients`` keeps of this rank's partition: views into ZeRO-2's
      contiguous ``grads_in_partition`` or ZeRO-1's per-parameter gradients (whole parameters, those
      the partition touches), and the zeros that pad the partition; any gradient still on a
      parameter counts too (none at this moment);
    - optimizer: the fp32 master partitions (``single_partition_of_fp32_groups``, a copy even in
      fp32) and the optimizer's state on them.
    """
    params = list(engine.module.parameters())
    zero = engine.optimizer  # DeepSpeedZeroOptimizer
    grads = [t for group in zero.averaged_gradients.values() if group is not None for t in group]
    grads += [p.grad for p in params] + [getattr(p, "grad_accum", None) for p in params]
    grads += [p.grad for p in zero.single_partition_of_fp32_groups]
    measured = _bytes_by_category({
        "params_bytes": list(zero.bit16_groups_flat),
        "grads_bytes": grads,
        "optimizer_bytes": [*zero.single_partition_of_fp32_groups, *_state_tensors(zero.optimizer)],
    })
    return {"param_elements_local": sum(p.numel() for p in params), "full_params_resident": len(params), **measured}


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (a view of its storage); a plain tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def fsdp2_model(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """For a model FSDP2 sharded (``hpml_core.fsdp``); call while the gradients exist (before
    ``zero_grad``). Parameters and gradients are FSDP2's padded shard storages (the gradients of
    a group are views into its one reduce-scatter output); the optimizer's moments are made like
    the unpadded shards. A parameter counts as resident when FSDP2 has left it unsharded
    (registered as a plain tensor, not its DTensor shard)."""
    params = list(model.parameters())
    shards = [local_part(p) for p in params]
    measured = _bytes_by_category({
        "params_bytes": shards,
        "grads_bytes": [local_part(p.grad) for p in params if p.grad is not None],
        "optimizer_bytes": [local_part(t) for t in _state_tensors(optimizer)],
    }, empty_views_count=True)
    return {"param_elements_local": sum(t.untyped_storage().nbytes() // t.element_size() for t in shards),
            "full_params_resident": sum(1 for p in params if not isinstance(p, DTensor)), **measured}
