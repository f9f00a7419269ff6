"""The model-state memory a rank holds (parameters, gradients, optimizer state), from the run's
config and the model's dimensions alone, to the byte: what the engine's measurement
(``hpml_core.measure_model_state``, each storage counted once) is checked against, and the
model-state lines of the memory model (``hpml_core.contract.memory_model``).

The rank's parameters (``param_numels``) are the GPT's tensors, the tied embedding/LM head
once; under tensor parallelism the column-parallel weights and biases, the row-parallel weights
and the vocabulary-parallel embedding are divided by tp, and the LayerNorms, the row-parallel
biases and the position embedding stay whole (``replicated_param_count``).

- PyTorch path (single, DDP, TP, DP×TP with all-reduce): every parameter of the rank is an fp32
  tensor, in every precision (autocast keeps fp32 weights): parameter 4 + gradient 4 + AdamW's
  two fp32 moments 8 (plain SGD keeps no tensor state) bytes per element.
- ZeRO-3 (DeepSpeed 0.19.8): each parameter of n elements is partitioned over the dp ranks of
  its DP group; every rank's partition has ceil(n / dp) elements (``_partition_param``: the
  tensor is padded to a multiple of dp, the padding sits in the last rank's partition, so all
  ranks hold the same). Parameters of at most ``stage3_param_persistence_threshold`` elements
  are *persistent* but are partitioned all the same: their ``ds_tensor`` is the same size, and
  the whole copy DeepSpeed keeps of them after the first gather is not model state in the
  engine's accounting (it counts ``ds_tensor``), so ``persistent`` reports it apart: ceil(n / dp)·dp
  elements each (the all-gather's padded buffer), none with dp 1 (the partition is the whole). With
  P = the sum of the partitions, the rank holds the partitions flattened into one buffer
  (``lp_param_buffer``, P elements in the weights' dtype: 2 bytes in bf16/fp16, 4 in fp32), the
  gradient partitions in one flat buffer (``grad_partitions_flat_buffer``, P elements in the
  ``grad_accum_dtype``, which hpml sets to the run's precision), and in the optimizer the fp32
  master partitions (P × 4: a separate copy even in fp32, because ``_create_fp32_partitions``
  shares the buffer only when its ``torch.device`` equals the device *name* string, which it
  never does) plus AdamW's two moments on them (P × 8; SGD none).
"""

from __future__ import annotations

from dataclasses import dataclass

from hpml_core.contract.config import TrainConfig
from hpml_core.contract.models import ModelDims

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def replicated_param_count(dims: ModelDims) -> int:
    """Parameters every tensor-parallel rank holds whole: LayerNorms, row-parallel biases, positions."""
    d = dims.n_embd
    return dims.n_layer * (4 * d + 2 * d) + 2 * d + dims.n_positions * d


def param_numels(dims: ModelDims, tp_size: int) -> list[tuple[str, int]]:
    """(name, elements) of every parameter tensor one rank holds, in the model's order (the tied
    LM head once, as the token embedding), each divided by ``tp_size`` where TP shards it."""
    d, tp = dims.n_embd, tp_size
    numels = [("wte.weight", dims.vocab_size * d // tp), ("wpe.weight", dims.n_positions * d)]
    for i in range(dims.n_layer):
        numels += [(f"blocks.{i}.{name}", n) for name, n in [
            ("ln_1.weight", d), ("ln_1.bias", d),
            ("attn.qkv.weight", 3 * d * d // tp), ("attn.qkv.bias", 3 * d // tp),
            ("attn.proj.weight", d * d // tp), ("attn.proj.bias", d),
            ("ln_2.weight", d), ("ln_2.bias", d),
            ("mlp.fc.weight", 4 * d * d // tp), ("mlp.fc.bias", 4 * d // tp),
            ("mlp.proj.weight", 4 * d * d // tp), ("mlp.proj.bias", d)]]
    return numels + [("ln_f.weight", d), ("ln_f.bias", d)]


def is_persistent(numel: int, config: TrainConfig) -> bool:
    """DeepSpeed keeps a parameter whole on every rank when it has at most the threshold's elements."""
    return config.mode == "zero3" and numel <= config.zero_persistence_threshold


def partition_numel(numel: int, dp_size: int) -> int:
    """Elements of one rank's ZeRO-3 partition of a parameter: the tensor padded to a multiple of dp, split in dp."""
    return -(-numel // dp_size)


@dataclass(frozen=True)
class ModelStateBytes:
    """One rank's model state, as the engine measures it, and the tensors it is made of."""

    params: int
    grads: int
    optimizer: int
    # ZeRO-3's whole copies of its persistent parameters (outside the engine's model state; none with dp 1,
    # where DeepSpeed's "gather" makes the parameter a view of its partition)
    persistent: int
    persistent_count: int
    elements: int  # parameter elements the rank holds: its TP shard, or its ZeRO-3 partitions
    per_element: str  # the bytes per element, part by part
    # bytes of each tensor that holds model state (for the allocator's rounding)
    tensor_bytes: tuple[int, ...]

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer

    def how(self, tp_size: int, dp_size: int, zero3: bool) -> str:
        where = f"its ZeRO-3 partitions, ceil(n / {dp_size}) per tensor," if zero3 else "its parameters,"
        return (f"{self.per_element} x {self.elements:,} elements ({where} of the TP-{tp_size} shard: sharded/"
                f"{tp_size} + replicated)")


def _torch_path(config: TrainConfig, numels: list[int]) -> ModelStateBytes:
    n = sum(numels)
    moments = 2 if config.optimizer == "adamw" else 0
    return ModelStateBytes(
        params=4 * n, grads=4 * n, optimizer=4 * moments * n, persistent=0, persistent_count=0, elements=n,
        per_element=f"{8 + 4 * moments} B (fp32 param 4 + grad 4 + moments {4 * moments})",
        tensor_bytes=tuple(4 * k for k in numels for _ in range(2 + moments)))


def _optimizer_groups(names: list[str], numels: list[int]) -> tuple[list[int], list[int]]:
    """The optimizer's two param groups (``hpml_core.stepper.build_optimizer``): matrices, which
    decay, and vectors (biases, LayerNorms), which do not."""
    matrix = [not (name.endswith(".bias") or ".ln_" in name or name.startswith("ln_")) for name in names]
    return ([k for k, m in zip(numels, matrix) if m], [k for k, m in zip(numels, matrix) if not m])


def _zero3(config: TrainConfig, names: list[str], numels: list[int], dp_size: int) -> ModelStateBytes:
    low = DTYPE_BYTES[config.precision]
    p = sum(partition_numel(k, dp_size) for k in numels)
    moments = 8 if config.optimizer == "adamw" else 0
    persistent = [k for k in numels if is_persistent(k, config)]
    flats = (low * p, low * p)  # the parameter and gradient partitions, one flat buffer each
    for group in _optimizer_groups(names, numels):  # an fp32 master flat per param group, and its moments
        group_p = sum(partition_numel(k, dp_size) for k in group)
        flats += (4 * group_p,) * (3 if moments else 1)
    return ModelStateBytes(
        params=low * p, grads=low * p, optimizer=(4 + moments) * p,
        # gathered whole into a buffer padded to a multiple of dp; with dp 1 the whole parameter is its partition
        persistent=low * sum(partition_numel(k, dp_size) * dp_size for k in persistent) if dp_size > 1 else 0,
        persistent_count=len(persistent), elements=p,
        per_element=f"{2 * low + 4 + moments} B (param {low} + grad {low} + fp32 master 4 + moments {moments})",
        tensor_bytes=flats)


def rank_model_state(config: TrainConfig, dims: ModelDims, tp_size: int, dp_size: int) -> ModelStateBytes:
    """The model state of every rank of the run (all ranks hold the same: ZeRO-3 pads partitions)."""
    names, numels = zip(*param_numels(dims, tp_size))
    return _zero3(config, list(names), list(numels), dp_size) if config.mode == "zero3" \
        else _torch_path(config, list(numels))


def expected_bytes(config: TrainConfig, dims: ModelDims, tp_size: int, dp_size: int) -> tuple[int, str]:
    """(bytes, how they were counted) of one rank's model state."""
    state = rank_model_state(config, dims, tp_size, dp_size)
    return state.total, state.how(tp_size, dp_size, config.mode == "zero3")
