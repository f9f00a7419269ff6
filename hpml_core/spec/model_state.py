"""The model-state memory a rank should hold (parameters, gradients, optimizer state), from the
run's config and the model's dimensions alone: what the engine's measurement
(``hpml_core.model_state_memory``) is checked against.

Per parameter element the rank is responsible for:

- PyTorch AMP (single, DDP, TP, DP×TP with all-reduce): fp32 parameter 4 + fp32 gradient 4
  + AdamW's two fp32 moments 8 (plain SGD keeps none) = 16 bytes with AdamW;
- ZeRO-3: parameter and gradient partitions in the run's precision (2 + 2 bytes in bf16/fp16,
  4 + 4 in fp32), a separate fp32 master partition 4 (DeepSpeed 0.19 keeps one even in fp32),
  and the moments 8 = 16 bytes in bf16 with AdamW, as in the ZeRO paper;

and a rank is responsible for (sharded parameters / tp + replicated parameters), divided by
dp under ZeRO-3. Activations and buffers are not model state and are not counted.
"""

from __future__ import annotations

from hpml_core.spec.config import TrainConfig
from hpml_core.spec.models import ModelDims


def replicated_param_count(dims: ModelDims) -> int:
    """Parameters every tensor-parallel rank holds whole: LayerNorms, row-parallel biases, positions."""
    d = dims.n_embd
    return dims.n_layer * (4 * d + 2 * d) + 2 * d + dims.n_positions * d


def expected_bytes(config: TrainConfig, dims: ModelDims, tp_size: int, dp_size: int) -> tuple[int, str]:
    """(bytes, how they were counted) of one rank's model state."""
    replicated = replicated_param_count(dims) if tp_size > 1 else 0
    elements = (dims.params_total - replicated) // tp_size + replicated
    moments = 8 if config.optimizer == "adamw" else 0
    zero3 = config.mode == "zero3"
    if zero3:
        low = 4 if config.precision == "fp32" else 2
        per_element, parts = 2 * low + 4 + moments, f"param {low} + grad {low} + fp32 master 4 + moments {moments}"
        elements = -(-elements // dp_size)
    else:
        per_element, parts = 4 + 4 + moments, f"fp32 param 4 + grad 4 + moments {moments}"
    how = (f"{per_element} B ({parts}) x {elements:,} elements (sharded/{tp_size} + replicated"
           f"{f', /{dp_size} for ZeRO-3' if zero3 else ''})")
    return per_element * elements, how
