"""The collectives one rank issues in one optimizer step, per layout and precision regime, to the
byte: what a profiled step's measurement (``hpml_core.contract.step_parts``) is checked against,
and what the planner's communication time is made of (``hpml_core.contract.step_time``).

A collective's bytes are its whole buffer's (an all-gather's output, a reduce-scatter's input):
elements × element size. With B the batch per micro-step, S the sequence, E the width, L the
blocks and A the micro-steps of accumulation, the engine issues:

- **DDP** (over the DP group): the gradients of the rank's parameters (its TP shard), all-reduced
  once per optimizer step in the regime's reduction dtype, in DDP's buckets (so the count is not
  stated); accumulation's other micro-steps skip it.
- **TP** (over the TP group), per micro-step: in the forward, the vocabulary-parallel embedding's
  output (B·S·E, in the weights' dtype) and each block's two row-parallel outputs (in the matmul
  dtype); the vocabulary-parallel loss's max, sum of exponentials and target logit (B·S each,
  fp32); in the backward, the gradient at the input of each column-parallel layer, two per block
  and the LM head's (B·S·E, in the weights' dtype, the residual stream's); with activation
  checkpointing, one block output more per block: the recomputation stops once it has what the
  backward needs, before the MLP's all-reduce. The PyTorch path's clipping adds one fp32 scalar.
- **ZeRO-3** (DeepSpeed 0.19.8, over the DP group), per micro-step: every parameter's partitions
  all-gathered for the forward (each parameter padded to a multiple of dp, in the weights'
  dtype, persistent ones too) and the gradients reduce-scattered (the same elements, in the
  reduction dtype). DeepSpeed keeps a gathered parameter until the backward uses it again when
  the parameters fetched in between stay within ``stage3_max_reuse_distance`` (10⁹ elements):
  a block is gathered again for the backward only when twice the parameters of the blocks after
  it exceed that (GPT-2 Large's first ten blocks, by this reading of DeepSpeed's
  ``__params_to_release``; not yet measured at that size). Its optimizer step all-reduces two
  fp64 scalars per group it spans (gradient norm, overflow), and fp16 one byte more (the
  overflow flag). With one DP rank nothing is gathered, but the reduce-scatter (over a group of
  one) and the scalars are still issued.
- **ZeRO-1 and ZeRO-2** (DeepSpeed 0.19.8's ``DeepSpeedZeroOptimizer``, over the DP group), per
  optimizer step: the gradients of the rank's parameters (its TP shard, unpadded) all-reduced once,
  in the reduction dtype, in buckets of at most ``reduce_bucket_size`` elements
  (``buckets.ZERO12_BUCKET``): ``reduce_scatter`` is on, but with DeepSpeed's default
  ``use_multi_rank_bucket_allreduce`` ``average_tensor`` all-reduces each bucket whole and keeps
  the rank's slices (``allreduce_and_scatter``). Stage 1 reduces after the boundary's backward,
  parameter by parameter in the param groups' order (``reduce_gradients``), so its buckets are
  packed greedily in that order; stage 2 reduces each bucket as the backward fills it
  (``reduce_independent_p_g_buckets_and_remove_grads``, in the order autograd finishes the
  gradients, so the count is stated only when one bucket holds them all), and with accumulation
  at every micro-step. Then the optimizer step: one fp32 scalar all-reduced per param group for
  the gradient norm (``get_grad_norm_direct``; computed with clipping off too), in bf16/fp16 a
  one-byte overflow flag before it (``has_overflow``, ``check_grad_overflow``: fp32 leaves it
  off), each also over the TP group when the model is tensor-parallel
  (``_model_parallel_all_reduce``), and the updated partitions all-gathered into each group's
  flat buffer (``all_gather_into_tensor``, A_g elements in the weights' dtype, padding included:
  ``hpml_core.contract.model_state``), none with one DP rank.
- **fp16 on the PyTorch path**: the loss scaler's overflow flag, one fp32 all-reduce over all ranks.
- **A group of one** (one DP rank: a 1-process ZeRO run, or ZeRO under TP alone) moves nothing.
  gloo still runs each collective issued over it, as a copy in host memory that a CPU profile
  shows; NCCL launches no collective kernel for it (``ncclLaunchOneRank``: nothing in place, a
  device-to-device copy out of place, a local kernel for an average), so over NCCL the contract
  states none. This is read from NCCL's source and checked on a GPU by the gpu tests
  (``tests/test_gpu.py``), which hold every 1-process run's profile to it.

These were read off the profiled steps of every layout on CPU ranks with gloo, and a test keeps
them exact (``tests/test_parallel_equivalence.py``), with a formula missing any one of them
as its negative control.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from hpml_core.contract.buckets import ZERO12_BUCKET
from hpml_core.contract.config import ZERO_STAGES, TrainConfig
from hpml_core.contract.layout import Layout
from hpml_core.contract import model_state
from hpml_core.contract.model_state import (DTYPE_BYTES, optimizer_groups, param_numels, partition_numel,
                                           zero12_groups)
from hpml_core.contract.models import ModelDims
from hpml_core.contract.precision import run_regime

BYTES = {**DTYPE_BYTES, "fp64": 8, "uint8": 1}  # the optimizer's scalars and flags too
ZERO3_MAX_REUSE_DISTANCE = 1_000_000_000  # DeepSpeed's stage3_max_reuse_distance default


@dataclass(frozen=True)
class Collectives:
    """Collectives of one kind over one group that one part of the step issues."""

    kind: str  # hpml_core.contract.step_parts.COLLECTIVE_KINDS
    group: str  # "dp", "tp" or "world"
    count: int | None  # None: in buckets whose number the contract does not state
    elements: int  # all of them together
    dtype: str
    what: str

    @property
    def bytes(self) -> int:
        return self.elements * BYTES[self.dtype]


def _tp(config: TrainConfig, dims: ModelDims, accum: int) -> list[Collectives]:
    precision = run_regime(config)
    activation = config.batch_size * config.seq_len * dims.n_embd
    tokens = config.batch_size * config.seq_len
    L = dims.n_layer
    found = [
        Collectives("all-reduce", "tp", accum, accum * activation, precision.weights_dtype, "embedding output"),
        Collectives("all-reduce", "tp", accum * 2 * L, accum * 2 * L * activation, precision.matmul_dtype,
                    "blocks' row-parallel outputs, forward"),
        Collectives("all-reduce", "tp", accum * 3, accum * 3 * tokens, "fp32", "vocabulary-parallel loss"),
        Collectives("all-reduce", "tp", accum * (2 * L + 1), accum * (2 * L + 1) * activation, precision.weights_dtype,
                    "column-parallel inputs' gradients, backward"),
    ]
    if config.grad_ckpt:
        found.append(Collectives("all-reduce", "tp", accum * L, accum * L * activation, precision.matmul_dtype,
                                 "recomputed attention outputs"))
    if config.mode not in ZERO_STAGES and config.grad_clip > 0:
        found.append(Collectives("all-reduce", "tp", 1, 1, "fp32", "gradient norm for clipping"))
    return found


def _regathered_blocks(dims: ModelDims, block_elements: int) -> int:
    """Blocks DeepSpeed releases after the forward and gathers again for the backward."""
    return sum(1 for i in range(dims.n_layer)
               if 2 * (dims.n_layer - 1 - i) * block_elements > ZERO3_MAX_REUSE_DISTANCE)


def _zero3(config: TrainConfig, dims: ModelDims, layout: Layout) -> list[Collectives]:
    precision = run_regime(config)
    dp, accum = layout.dp_size, config.grad_accum
    padded = {name: partition_numel(n, dp) * dp for name, n in param_numels(dims, layout.tp_size)}
    gathered = sum(padded.values())
    block = sum(n for name, n in padded.items() if name.startswith("blocks.0."))
    regathered = _regathered_blocks(dims, block) * block
    found = [] if dp == 1 else [  # one rank holds whole partitions: nothing to gather
        Collectives("all-gather", "dp", None, accum * gathered, precision.weights_dtype, "parameters for the forward")]
    if regathered and dp > 1:
        found.append(Collectives("all-gather", "dp", None, accum * regathered, precision.weights_dtype,
                                 "parameters released after the forward, again for the backward"))
    found.append(Collectives("reduce-scatter", "dp", None, accum * gathered, precision.grad_reduce_dtype, "gradients"))
    groups = 2 if layout.tp_size > 1 else 1
    found.append(Collectives("all-reduce", "dp", 2 * groups, 2 * groups, "fp64", "gradient norm and overflow check"))
    if config.precision == "fp16":
        found.append(Collectives("all-reduce", "dp", 1, 1, "uint8", "fp16 overflow flag"))
    return found


def zero1_buckets(numels: list[int], bucket: int = ZERO12_BUCKET) -> int:
    """How many all-reduces ZeRO-1's reduction issues: gradients taken in order, a bucket reduced
    (when it holds any) before the one that would take it over ``bucket`` elements, and the last
    at the end (``reduce_independent_p_g_buckets_and_remove_grads``, then the epilogue's ``reduce_ipg_grads``)."""
    count, held = 0, 0
    for n in numels:
        if held + n > bucket and held:
            count, held = count + 1, 0
        held += n
    return count + (1 if held else 0)


def _zero12(config: TrainConfig, dims: ModelDims, layout: Layout) -> list[Collectives]:
    precision = run_regime(config)
    dp, stage = layout.dp_size, ZERO_STAGES[config.mode]
    names, numels = zip(*param_numels(dims, layout.tp_size))
    in_group_order = [n for group in optimizer_groups(list(names), list(numels)) for n in group]
    grads = sum(in_group_order)
    if stage == 1:
        count = zero1_buckets(in_group_order)
        found = [Collectives("all-reduce", "dp", count, grads, precision.grad_reduce_dtype,
                             "gradients, in reduce buckets after the backward")]
    else:  # at every micro-step, as the backward fills the buckets
        count = config.grad_accum if grads <= ZERO12_BUCKET else None
        found = [Collectives("all-reduce", "dp", count, config.grad_accum * grads, precision.grad_reduce_dtype,
                             "gradients, in reduce buckets during the backward")]
    groups = zero12_groups(dims, layout.tp_size, dp, 0)
    scalar_groups = ["dp", "tp"] if layout.tp_size > 1 else ["dp"]
    if config.precision != "fp32":  # check_grad_overflow (bf16's default, always with fp16)
        found += [Collectives("all-reduce", group, 1, 1, "uint8", "overflow flag") for group in scalar_groups]
    found += [Collectives("all-reduce", group, len(groups), len(groups), "fp32", "gradient norm, one per param group")
              for group in scalar_groups]
    if dp > 1:
        found.append(Collectives("all-gather", "dp", len(groups), sum(g.flat for g in groups), precision.weights_dtype,
                                 "updated partitions into each param group's flat buffer"))
    return found


def _fsdp2(config: TrainConfig, dims: ModelDims, layout: Layout) -> list[Collectives]:
    """FSDP2 over the DP group (``hpml_core.fsdp``), per micro-step: each FSDP group (the root:
    embeddings and the last LayerNorm; each block) all-gathered in the weights' dtype, padded to
    ceil(rows / dp)·dp rows per tensor: the root once (it never reshards), each block for its
    forward and, resharded after it, again for its backward; each group's fp32 gradients
    reduce-scattered once, padded alike. Clipping adds one all-reduce of the norm's two fp32
    partial sums over DP; fp16, the overflow flag DTensor agrees over DP. Probed on gloo (tiny
    GPT-2, 2 ranks, fp32: 5 all-gathers of 996,864 B, 3 reduce-scatters of 596,992 B)."""
    dp = layout.dp_size
    if dp == 1:
        return []
    root, block = model_state.fsdp2_group_elements(dims, layout.tp_size, dp)
    accum, layers = config.grad_accum, dims.n_layer
    gathers = 2 if config.fsdp_reshard_after_forward else 1
    low = run_regime(config).matmul_dtype  # FSDP2 gathers its fp32 shards cast to it
    found = [Collectives("all-gather", "dp", accum * (1 + gathers * layers), accum * (root + gathers * layers * block),
                         low, "parameters of each FSDP group, gathered for its forward (and its backward)"),
             Collectives("reduce-scatter", "dp", accum * (1 + layers), accum * (root + layers * block), "fp32",
                         "gradients of each FSDP group")]
    if config.grad_clip > 0:
        found.append(Collectives("all-reduce", "dp", 1, 2, "fp32", "gradient norm's partial sums, for clipping"))
    if config.precision == "fp16":
        found.append(Collectives("all-reduce", "dp", 1, 1, "fp32", "DTensor's overflow check of the sharded gradients"))
    return found


def per_step(config: TrainConfig, dims: ModelDims, layout: Layout, backend: str) -> list[Collectives]:
    """Every collective one rank issues in one optimizer step over ``backend`` (``TrainConfig.backend_on``)."""
    found: list[Collectives] = []
    if layout.tp_size > 1:
        found += _tp(config, dims, config.grad_accum)
    if config.mode == "ddp" and layout.dp_size > 1:
        grads = sum(n for _, n in param_numels(dims, layout.tp_size))
        reduce_dtype = run_regime(config).grad_reduce_dtype
        found.append(Collectives("all-reduce", "dp", None, grads, reduce_dtype, "gradients, in DDP's buckets"))
    if config.mode == "zero3":
        found += _zero3(config, dims, layout)
    if config.mode in ("zero1", "zero2"):
        found += _zero12(config, dims, layout)
    if config.mode == "fsdp2":
        found += _fsdp2(config, dims, layout)
    if config.mode not in ZERO_STAGES and config.precision == "fp16" and layout.world_size > 1:
        found.append(Collectives("all-reduce", "world", 1, 1, "fp32", "loss scaler's overflow flag"))
    if backend == "nccl":  # a group of one: NCCL launches no collective kernel (the module's doc)
        size = {"dp": layout.dp_size, "tp": layout.tp_size, "world": layout.world_size}
        found = [c for c in found if size[c.group] > 1]
    return found


@dataclass(frozen=True)
class KindTotal:
    count: int | None  # None when some of them come in buckets
    bytes: int


def by_kind(collectives: list[Collectives]) -> dict[str, KindTotal]:
    """Count and bytes per kind, as a profiled step measures them."""
    counts: dict[str, int | None] = defaultdict(int)
    sizes: dict[str, int] = defaultdict(int)
    for c in collectives:
        counts[c.kind] = None if c.count is None or counts[c.kind] is None else counts[c.kind] + c.count
        sizes[c.kind] += c.bytes
    return {kind: KindTotal(counts[kind], sizes[kind]) for kind in sizes}


def mismatches(expected: dict[str, KindTotal], measured: dict[str, KindTotal]) -> list[str]:
    """Where a profiled step's collectives differ from the contract's, one line each; none when
    every kind has exactly the expected bytes (and count, where the contract states one)."""
    lines = []
    for kind in sorted(set(expected) | set(measured)):
        want, got = expected.get(kind), measured.get(kind)
        if want is None or got is None:
            lines.append(f"{kind}: expected {want.bytes if want else 0:,} B, measured {got.bytes if got else 0:,} B")
        elif want.bytes != got.bytes or (want.count is not None and want.count != got.count):
            lines.append(f"{kind}: expected {want.count if want.count is not None else 'some'} moving {want.bytes:,} B, "
                         f"measured {got.count} moving {got.bytes:,} B")
    return lines
