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
- **fp16 on the PyTorch path**: the loss scaler's overflow flag, one fp32 all-reduce over all ranks.

These were read off the profiled steps of every layout on CPU ranks with gloo, and a test keeps
them exact (``tests/test_parallel_equivalence.py``), with a formula missing any one of them
as its negative control.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from hpml_core.contract.config import TrainConfig
from hpml_core.contract.layout import Layout
from hpml_core.contract.model_state import DTYPE_BYTES, param_numels, partition_numel
from hpml_core.contract.models import ModelDims
from hpml_core.contract.precision import regime

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
    precision = regime(config.mode, config.precision)
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
    if config.mode != "zero3" and config.grad_clip > 0:
        found.append(Collectives("all-reduce", "tp", 1, 1, "fp32", "gradient norm for clipping"))
    return found


def _regathered_blocks(dims: ModelDims, block_elements: int) -> int:
    """Blocks DeepSpeed releases after the forward and gathers again for the backward."""
    return sum(1 for i in range(dims.n_layer)
               if 2 * (dims.n_layer - 1 - i) * block_elements > ZERO3_MAX_REUSE_DISTANCE)


def _zero3(config: TrainConfig, dims: ModelDims, layout: Layout) -> list[Collectives]:
    precision = regime(config.mode, config.precision)
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


def per_step(config: TrainConfig, dims: ModelDims, layout: Layout) -> list[Collectives]:
    """Every collective one rank issues in one optimizer step."""
    found: list[Collectives] = []
    if layout.tp_size > 1:
        found += _tp(config, dims, config.grad_accum)
    if config.mode == "ddp" and layout.dp_size > 1:
        grads = sum(n for _, n in param_numels(dims, layout.tp_size))
        found.append(Collectives("all-reduce", "dp", None, grads, regime(config.mode, config.precision).grad_reduce_dtype,
                                 "gradients, in DDP's buckets"))
    if config.mode == "zero3":
        found += _zero3(config, dims, layout)
    if config.mode != "zero3" and config.precision == "fp16" and layout.world_size > 1:
        found.append(Collectives("all-reduce", "world", 1, 1, "fp32", "loss scaler's overflow flag"))
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
