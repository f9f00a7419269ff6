"""Model-state memory a rank holds, measured from its tensors and set against the analytic
expectation for its mode: parameters, gradients and optimizer state (master weights included).

Measured bytes count each storage once, so views into DeepSpeed's flat buffers are not added
twice. The expectation, per parameter element the rank is responsible for:

- PyTorch AMP (single, DDP, TP, DP×TP with all-reduce): fp32 parameter 4 + fp32 gradient 4
  + AdamW's two fp32 moments 8 (plain SGD keeps none) = 16 bytes with AdamW;
- ZeRO-3: parameter and gradient partitions in the run's precision (2 + 2 bytes in bf16/fp16,
  4 + 4 in fp32), a separate fp32 master partition 4 (DeepSpeed 0.19 keeps one even in fp32),
  and the moments 8 = 16 bytes in bf16 with AdamW, as in the ZeRO paper;

and a rank is responsible for (sharded parameters / tp + replicated parameters), divided by
dp under ZeRO-3. Activations and buffers are not model state and are not counted. With
``--zero-persistence-threshold`` above 0, ZeRO-3 also keeps small parameters whole on every
rank: that shows in the measurement (``full_params_resident``), not in the expectation.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from hpml_core.config import TrainConfig


def _bytes_by_category(categories: dict[str, Iterable[torch.Tensor]]) -> dict[str, int]:
    """Bytes of the storages behind each category; a storage counts once, in the first category
    that holds it (in fp32, DeepSpeed's master weights are the parameter partitions themselves)."""
    seen: set[int] = set()
    totals = {}
    for name, tensors in categories.items():
        totals[name] = 0
        for t in tensors:
            if t is None or t.numel() == 0:
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                totals[name] += storage.nbytes()
    return totals


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values()
            if isinstance(v, torch.Tensor) and v.dim() > 0]  # not the scalar step counters


def measure_torch(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """For a model trained by plain PyTorch; call while gradients exist (before zero_grad)."""
    params = list(model.parameters())
    measured = _bytes_by_category({
        "params_bytes": params, "grads_bytes": [p.grad for p in params], "optimizer_bytes": _state_tensors(optimizer),
    })
    return {"param_elements_local": sum(p.numel() for p in params), "full_params_resident": len(params), **measured}


def measure_zero3(engine) -> dict:
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


def expected_bytes(config: TrainConfig, full_sharded: int, full_replicated: int, tp_size: int, dp_size: int) -> tuple[int, str]:
    elements = full_sharded // tp_size + full_replicated
    moments = 8 if config.optimizer == "adamw" else 0
    if config.mode == "hybrid":
        low = 4 if config.precision == "fp32" else 2
        per_element, parts = 2 * low + 4 + moments, f"param {low} + grad {low} + fp32 master 4 + moments {moments}"
        elements = -(-elements // dp_size)
    else:
        per_element, parts = 4 + 4 + moments, f"fp32 param 4 + grad 4 + moments {moments}"
    how = (f"{per_element} B ({parts}) x {elements:,} elements (sharded/{tp_size} + replicated"
           f"{f', /{dp_size} for ZeRO-3' if config.mode == 'hybrid' else ''})")
    return per_element * elements, how
