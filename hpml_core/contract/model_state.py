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
- ZeRO-1 and ZeRO-2 (DeepSpeed 0.19.8's ``DeepSpeedZeroOptimizer``, ``stage_1_and_2.py``), over
  the dp ranks of the DP group (the mpu's under TP), per param group g of the optimizer (matrices,
  then vectors, ``optimizer_groups``), its N_g elements in the model's order:
  - parameters: every rank holds the whole model, cast to the weights' dtype (a = 2 in bf16/fp16,
    4 in fp32), flattened into one buffer per group (``bit16_groups_flat``; the parameters are views
    into it), padded at its end to A_g = ceil(N_g / (2·dp))·2·dp elements: the alignment is
    ``nccl_start_alignment_factor`` (2) × dp, whatever the dtype (``parameter_alignment`` and
    ``round_robin_gradients`` stay off, so no padding between tensors, and no reordering);
  - each rank owns partition r of every flat, S_g = A_g / dp elements from r·S_g
    (``get_data_parallel_partitions``; A_g divides by dp, so all partitions are equal and the
    padding lies in the last ones); the optimizer holds an fp32 master copy of it
    (``single_partition_of_fp32_groups``, ``.clone()``: a separate copy even in fp32) and AdamW's two
    moments on it (S_g × 4 + S_g × 8 per group; SGD none);
  - gradients, once the backward of the accumulation boundary has been reduced (from the end of
    ``engine.backward`` to the start of ``engine.step``, which frees them all: hence the stepper
    measures them then): the whole gradients, in a, of the parameters that the rank's partition
    touches (``params_in_partition``: those starting inside [r·S_g, (r+1)·S_g), and the one that
    straddles r·S_g), kept by ``averaged_gradients`` as views, plus the zeros that complete the
    partition where the parameters end before it does (``get_flat_partition``: S_g − the
    partition's parameter elements, on the last ranks). Stage 2 copies those gradients into one
    buffer (``grads_in_partition``, every group's together, ``contiguous_gradients``); stage 1 keeps
    autograd's own tensors, one per parameter. So ranks differ here (``dp_rank``): a parameter
    split between two partitions is held whole by both. The other parameters' gradients are freed
    by then (``_clear_param_grad_only``); stage 1 holds them all until the reduction after the
    backward, and stage 2's reduce buckets are communication buffers: the memory model's lines.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from hpml_core.contract.config import ZERO_STAGES, TrainConfig
from hpml_core.contract.models import ModelDims

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def replicated_param_count(dims: ModelDims) -> int:
    """Parameters every tensor-parallel rank holds whole: LayerNorms, row-parallel biases, positions."""
    d = dims.n_embd
    return dims.n_layer * (4 * d + 2 * d) + 2 * d + dims.n_positions * d


@functools.cache  # a plan asks for the same model's list thousands of times
def param_numels(dims: ModelDims, tp_size: int) -> tuple[tuple[str, int], ...]:
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
    return (*numels, ("ln_f.weight", d), ("ln_f.bias", d))


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

    # how the bytes were counted, when not as per_element x elements (ZeRO-1/2, whose parts differ in size)
    counted: str = ""

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer

    def how(self, tp_size: int, dp_size: int, zero3: bool) -> str:
        shard = f"of the TP-{tp_size} shard: sharded/{tp_size} + replicated"
        if self.counted:
            return f"{self.counted} ({shard})"
        where = f"its ZeRO-3 partitions, ceil(n / {dp_size}) per tensor," if zero3 else "its parameters,"
        return f"{self.per_element} x {self.elements:,} elements ({where} {shard})"


def _torch_path(config: TrainConfig, numels: list[int]) -> ModelStateBytes:
    n = sum(numels)
    moments = 2 if config.optimizer == "adamw" else 0
    return ModelStateBytes(
        params=4 * n, grads=4 * n, optimizer=4 * moments * n, persistent=0, persistent_count=0, elements=n,
        per_element=f"{8 + 4 * moments} B (fp32 param 4 + grad 4 + moments {4 * moments})",
        tensor_bytes=tuple(4 * k for k in numels for _ in range(2 + moments)))


def optimizer_groups(names: list[str], numels: list[int]) -> tuple[list[int], list[int]]:
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
    for group in optimizer_groups(names, numels):  # an fp32 master flat per param group, and its moments
        group_p = sum(partition_numel(k, dp_size) for k in group)
        flats += (4 * group_p,) * (3 if moments else 1)
    return ModelStateBytes(
        params=low * p, grads=low * p, optimizer=(4 + moments) * p,
        # gathered whole into a buffer padded to a multiple of dp; with dp 1 the whole parameter is its partition
        persistent=low * sum(partition_numel(k, dp_size) * dp_size for k in persistent) if dp_size > 1 else 0,
        persistent_count=len(persistent), elements=p,
        per_element=f"{2 * low + 4 + moments} B (param {low} + grad {low} + fp32 master 4 + moments {moments})",
        tensor_bytes=flats)


# DeepSpeed's nccl_start_alignment_factor: ZeRO-1/2 pad each flat group to a multiple of it times dp.
ZERO12_ALIGNMENT = 2


@dataclass(frozen=True)
class Zero12Group:
    """One optimizer param group as ZeRO-1/2 lays it out, seen from one DP rank."""

    numels: tuple[int, ...]  # its parameters' elements, in order
    flat: int  # A_g: the flat buffer's elements, padded to a multiple of 2·dp
    partition: int  # S_g = A_g / dp: each rank's partition
    held: tuple[int, ...]  # the parameters (whole) whose gradients this rank keeps: those its partition touches
    zeros: int  # the zeros that complete the partition's gradient where the parameters end first


@functools.cache
def zero12_groups(dims: ModelDims, tp_size: int, dp_size: int, dp_rank: int) -> tuple[Zero12Group, ...]:
    """The param groups' flats and partitions (``DeepSpeedZeroOptimizer.__init__``) and which
    gradients rank ``dp_rank`` keeps (``get_partition_info``, ``get_flat_partition``)."""
    names, numels = zip(*param_numels(dims, tp_size))
    alignment = ZERO12_ALIGNMENT * dp_size
    groups = []
    for group in optimizer_groups(list(names), list(numels)):
        total = sum(group)
        flat = -(-total // alignment) * alignment
        partition = flat // dp_size
        start, end = dp_rank * partition, (dp_rank + 1) * partition
        held, offset = [], 0
        for n in group:
            if start <= offset < end or offset < start < offset + n:
                held.append(n)
            offset += n
        zeros = partition - max(0, min(total, end) - start)
        groups.append(Zero12Group(tuple(group), flat, partition, tuple(held), zeros))
    return tuple(groups)


def _zero12(config: TrainConfig, dims: ModelDims, tp_size: int, dp_size: int, dp_rank: int) -> ModelStateBytes:
    low = DTYPE_BYTES[config.precision]
    moments = 8 if config.optimizer == "adamw" else 0
    groups = zero12_groups(dims, tp_size, dp_size, dp_rank)
    flat, partition = sum(g.flat for g in groups), sum(g.partition for g in groups)
    held, zeros = sum(sum(g.held) for g in groups), sum(g.zeros for g in groups)
    if ZERO_STAGES[config.mode] == 2:  # one contiguous buffer of the held gradients (grads_in_partition)
        grad_tensors = (low * held,) if held else ()
    else:  # autograd's own gradient tensors
        grad_tensors = tuple(low * n for g in groups for n in g.held)
    optimizer_tensors = tuple(4 * g.partition for g in groups for _ in range(3 if moments else 1))
    return ModelStateBytes(
        params=low * flat, grads=low * (held + zeros), optimizer=(4 + moments) * partition, persistent=0,
        persistent_count=0, elements=sum(sum(g.numels) for g in groups),
        per_element=f"param {low} + grad {low} + fp32 master 4 + moments {moments} B",
        tensor_bytes=(*(low * g.flat for g in groups), *grad_tensors, *(low * g.zeros for g in groups if g.zeros),
                      *optimizer_tensors),
        counted=(f"params {low} B x {flat:,} (whole, flat per group, padded to a multiple of 2 x {dp_size}) + grads "
                 f"{low} B x ({held:,} whole, of the parameters DP rank {dp_rank}'s partitions touch, + {zeros:,} "
                 f"zeros) + optimizer {4 + moments} B (fp32 master 4 + moments {moments}) x {partition:,} "
                 f"(its partitions, 1/{dp_size} of each flat)"))


def fsdp2_rows(name: str, numel: int, dims: ModelDims, tp_size: int) -> int:
    """Dim 0 of a parameter of this rank's TP shard (FSDP2 shards along it): nn.Linear keeps
    [out, in], so a row-parallel weight (attn.proj, mlp.proj) keeps its d rows and splits its columns."""
    d = dims.n_embd
    if name == "wte.weight":
        return dims.vocab_size // tp_size
    if name == "wpe.weight":
        return dims.n_positions
    if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
        return d
    return numel // d if name.endswith(".weight") and numel > d and ".ln_" not in name else numel


def fsdp2_group_elements(dims: ModelDims, tp_size: int, dp_size: int) -> tuple[int, int]:
    """(root, one block): elements of the two kinds of FSDP2 group, whole, each tensor padded to
    ceil(rows / dp)·dp rows: what an all-gather of the group produces (the root: the embeddings
    and the last LayerNorm)."""
    root = block = 0
    for name, numel in param_numels(dims, tp_size):
        rows = fsdp2_rows(name, numel, dims, tp_size)
        padded = partition_numel(rows, dp_size) * dp_size * (numel // rows)
        if name.startswith("blocks.0."):
            block += padded
        elif not name.startswith("blocks."):
            root += padded
    return root, block


def _fsdp2(config: TrainConfig, dims: ModelDims, tp_size: int, dp_size: int, dp_rank: int) -> ModelStateBytes:
    """FSDP2 (``fully_shard``): every parameter of the TP shard is split along dim 0 in chunks of
    c = ceil(rows / dp) rows (``torch.chunk``); each rank's parameter and gradient storage is
    padded to c rows, even a rank past the last row, and both are fp32 in every precision (the
    16-bit copies exist only while a block is gathered). AdamW's moments are made like the
    unpadded shard, so a rank holds min(c, max(0, rows - r·c)) rows of them: the last ranks fewer."""
    padded = moments_elements = 0
    tensors: list[int] = []
    adamw = config.optimizer == "adamw"
    for name, numel in param_numels(dims, tp_size):
        rows = fsdp2_rows(name, numel, dims, tp_size)
        rest, c = numel // rows, partition_numel(rows, dp_size)
        mine = min(c, max(0, rows - dp_rank * c)) * rest
        padded += c * rest
        moments_elements += mine
        tensors += [4 * c * rest] * 2 + ([4 * mine] * 2 if adamw else [])
    moments = 8 * moments_elements if adamw else 0
    return ModelStateBytes(
        params=4 * padded, grads=4 * padded, optimizer=moments, persistent=0, persistent_count=0, elements=padded,
        per_element="8 B (fp32 shard 4 + grad 4)", tensor_bytes=tuple(tensors),
        counted=(f"8 B x {padded:,} elements (its FSDP2 shards, ceil(rows / {dp_size}) rows per tensor, padded) + "
                 f"{'8 B x ' + format(moments_elements, ',') + ' unpadded elements of AdamW moments' if adamw else 'no optimizer state (SGD)'}"
                 f" on DP rank {dp_rank}"))


def rank_model_state(config: TrainConfig, dims: ModelDims, tp_size: int, dp_size: int,
                     dp_rank: int | None = None) -> ModelStateBytes:
    """The model state of DP rank ``dp_rank`` (every TP rank holds the same). Only ZeRO-1/2 ranks
    and FSDP2 ranks differ (gradients; AdamW moments); None: the DP rank holding the most. ZeRO-3 pads partitions, so
    its ranks hold the same."""
    if config.mode in ("zero1", "zero2"):
        if dp_rank is None:
            return max((_zero12(config, dims, tp_size, dp_size, r) for r in range(dp_size)), key=lambda s: s.total)
        return _zero12(config, dims, tp_size, dp_size, dp_rank)
    if config.mode == "fsdp2":  # the first rank holds the most (the moments of the last rows are not padded)
        return _fsdp2(config, dims, tp_size, dp_size, 0 if dp_rank is None else dp_rank)
    names, numels = zip(*param_numels(dims, tp_size))
    return _zero3(config, list(names), list(numels), dp_size) if config.mode == "zero3" \
        else _torch_path(config, list(numels))


def expected_bytes(config: TrainConfig, dims: ModelDims, tp_size: int, dp_size: int,
                   dp_rank: int | None = None) -> tuple[int, str]:
    """(bytes, how they were counted) of DP rank ``dp_rank``'s model state (None: the rank holding the most)."""
    state = rank_model_state(config, dims, tp_size, dp_size, dp_rank)
    return state.total, state.how(tp_size, dp_size, config.mode == "zero3")
