"""The memory model: per GPU, the peak memory of any hpml run, line by line, from the run's
config, the model's dimensions and the layout alone (no torch).

Why: a run that does not fit should be refused by ``hpml plan`` and ``hpml submit`` on the login
node, before it spends GPU hours, and the report should be able to say how far each measured peak
is from what was expected. So every line (model state, activations, buffers, CUDA framework) is
a formula with its numbers, and ``predict`` returns the lines of the rank holding the most, or of
the DP rank it is given (ranks differ only under ZeRO-1/2, in the gradients their partitions
keep; TP shards are equal and ZeRO-3 pads every partition to the same size).

The manual, with every line's formula, its source and what the model cannot know, is
docs/memory-model.md (its notation, B, T, d, H, V, L, tp, dp, a and r, is the one the code below
uses); where it was measured and how far off it is, docs/studies.md.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

from hpml_core.contract.buckets import (DDP_BUCKET_BYTES, ZERO3_MAX_REUSE_DISTANCE, ZERO3_REDUCE_BUCKET,
                                        ZERO12_BUCKET)
from hpml_core.contract.config import ZERO_STAGES, TrainConfig
from hpml_core.contract.layout import Layout
from hpml_core.contract.model_state import (DTYPE_BYTES, fsdp2_group_elements, is_persistent, param_numels,
                                           rank_model_state, zero12_groups)
from hpml_core.contract.precision import run_regime
from hpml_core.contract.models import ModelDims
from hpml_core.contract.units import MIB

ALLOCATOR_BLOCK = 512  # the CUDA caching allocator's smallest unit (kMinBlockSize)
CUDA_CONTEXT_BYTES = 500 * MIB
CUBLAS_WORKSPACE_BYTES = 4096 * 1024 * 8  # PyTorch's default CUBLAS_WORKSPACE_CONFIG on sm90


# The lines of the model state (parameters, gradients, optimizer states), in that order.
MODEL_STATE_LINES = ("parameters", "gradients", "optimizer states")


@dataclass(frozen=True)
class Line:
    name: str
    bytes: int
    formula: str  # how it was computed, with the numbers
    in_allocated: bool = True  # counted by torch.cuda.max_memory_allocated (the CUDA context is not)


@dataclass(frozen=True)
class Prediction:
    lines: tuple[Line, ...]  # what the rank holds at the moment of its peak
    state: tuple[Line, ...]  # its model state (MODEL_STATE_LINES), all of it, whether or not held at the peak
    made_later: tuple[Line, ...] = ()  # lines the peak holds none of yet (0 bytes there), as they are once made

    @property
    def total_bytes(self) -> int:
        return sum(line.bytes for line in self.lines)

    @property
    def allocated_bytes(self) -> int:
        """What ``torch.cuda.max_memory_allocated`` should show: the lines inside PyTorch's allocator."""
        return sum(line.bytes for line in self.lines if line.in_allocated)

    @property
    def model_state_bytes(self) -> int:
        """Parameters, gradients and optimizer states: what the engine measures as the rank file's
        model_state.total_bytes, at the last step's update."""
        return sum(line.bytes for line in self.state)

    def line(self, name: str) -> Line:
        """A line of the peak."""
        for line in self.lines:
            if line.name == name:
                return line
        raise KeyError(f"no line {name!r}; the lines are {[line.name for line in self.lines]}")

    def state_line(self, name: str) -> Line:
        """A line of the model state (one of MODEL_STATE_LINES)."""
        return next(line for line in self.state if line.name == name)

    def whole_line(self, name: str) -> Line:
        """A line as it is once made: the peak's, unless the peak came before it was made."""
        return next((line for line in self.made_later if line.name == name), None) or self.line(name)


@dataclass(frozen=True)
class _Shape:
    """What the activation formulas read: sizes, layout and the dtypes' bytes."""

    B: int
    T: int
    d: int
    H: int
    V: int
    L: int
    tp: int
    a: int  # matmul dtype
    r: int  # residual stream (LayerNorm inputs)
    stat: int  # LayerNorm mean and rstd
    autocast: bool
    fp8: bool  # the blocks' linear layers are torchao float8 layers: they save no 16-bit weight copies
    eager: bool
    cuda: bool

    @property
    def BTd(self) -> int:
        return self.B * self.T * self.d


def _shape(config: TrainConfig, dims: ModelDims, layout: Layout, device_type: str) -> _Shape:
    low = DTYPE_BYTES[config.precision]
    # DeepSpeed casts the model itself; FSDP2 gathers it in 16 bits: no autocast copies either way
    cast_model = (config.mode in ZERO_STAGES or config.mode == "fsdp2") and config.precision != "fp32"
    cuda = device_type == "cuda"
    return _Shape(B=config.batch_size, T=config.seq_len, d=dims.n_embd, H=dims.n_head, V=dims.vocab_size,
                  L=dims.n_layer, tp=layout.tp_size, a=low, r=low if cast_model else 4,
                  stat=low if cast_model and not cuda else 4,
                  autocast=not cast_model and config.precision != "fp32", fp8=config.fp8,
                  eager=config.attn == "eager", cuda=cuda)


# A tensor group: (what, bytes of one tensor, how many).
Tensors = tuple[str, int, int]


def _attention(s: _Shape) -> list[Tensors]:
    """What the attention core saves: SDPA's output and log-sum-exp, or eager's mask and probabilities."""
    heads = s.H // s.tp
    if not s.eager:
        lse_T = -(-s.T // 32) * 32 if s.cuda and s.a == 4 else s.T
        return [("q, k, v (one storage)", 3 * s.a * s.BTd // s.tp, 1),
                ("attention output = projection input", s.a * s.BTd // s.tp, 1),
                ("SDPA log-sum-exp (fp32)", 4 * s.B * heads * lse_T, 1)]
    probs = s.B * heads * s.T * s.T
    softmax = [("attention probabilities (fp32, autocast)", 4 * probs, 1)] if s.cuda and s.autocast else []
    return [("q, k, v (contiguous copies for the matmuls)", s.a * s.BTd // s.tp, 3),
            ("projection input (contiguous copy)", s.a * s.BTd // s.tp, 1),
            ("causal mask (bool)", s.T * s.T, 1),
            *softmax, ("attention probabilities", s.a * probs, 1)]


def _block(s: _Shape, recomputed: bool = False) -> list[Tensors]:
    """What one transformer block saves for its backward (without checkpointing); ``recomputed``:
    when checkpointing recomputes it, whose first LayerNorm input is the kept block input."""
    norm_inputs = [("second LayerNorm input", s.r * s.BTd, 1)] if recomputed else [("LayerNorm inputs", s.r * s.BTd, 2)]
    return [*norm_inputs, ("LayerNorm mean and rstd", s.stat * s.B * s.T, 4),
            ("normed inputs of QKV and MLP up", s.a * s.BTd, 2), *_attention(s),
            ("MLP up output (GELU input)", 4 * s.a * s.BTd // s.tp, 1),
            ("GELU output (MLP down input)", 4 * s.a * s.BTd // s.tp, 1)]


def _outside_blocks(s: _Shape) -> list[Tensors]:
    """The embedding's indices, the final LayerNorm and the LM head's input."""
    ids = [("token ids (int64)", 8 * s.B * s.T, 1)] if s.tp == 1 else \
        [("local token ids (int64)", 8 * s.B * s.T, 1), ("out-of-shard mask (bool)", s.B * s.T, 1)]
    return [*ids, ("positions (int64)", 8 * s.T, 1), ("final LayerNorm input", s.r * s.BTd, 1),
            ("final LayerNorm mean and rstd", s.stat * s.B * s.T, 2), ("LM head input", s.a * s.BTd, 1)]


def _loss(s: _Shape) -> list[Tensors]:
    BT, V = s.B * s.T, s.V // s.tp
    if s.tp == 1:
        return [("log-probabilities (fp32)", 4 * BT * V, 1), ("targets (int64)", 8 * BT, 1), ("total weight", 4, 1)]
    return [("shifted logit slice (fp32, kept by the gather)", 4 * BT * V, 1), ("its exp", 4 * BT * V, 1),
            ("gather index (int64)", 8 * BT, 1), ("in-shard mask (bool)", BT, 1), ("sum of exps", 4 * BT, 1)]


def _block_weight_copies(s: _Shape, blocks: int) -> list[Tensors]:
    """Autocast's cached 16-bit casts of ``blocks`` blocks' fp32 weights, saved by their matmuls.
    A float8 layer saves its weight itself and casts it to FP8 again in the backward."""
    if not s.autocast or s.fp8 or not blocks:
        return []
    return [("block weight copies", s.a * 12 * s.d * s.d // s.tp, blocks)]


def _weight_copies(s: _Shape, blocks: bool) -> list[Tensors]:
    """Autocast's cached 16-bit casts of the fp32 weights: the blocks' (without checkpointing)
    and the LM head's."""
    if not s.autocast:
        return []
    return [*_block_weight_copies(s, s.L if blocks else 0), ("LM head weight copy", s.a * s.V * s.d // s.tp, 1)]


def _sum(tensors: list[Tensors]) -> int:
    return sum(size * count for _, size, count in tensors)


def _describe(tensors: list[Tensors]) -> str:
    """"what bytes + what count x bytes ...": the formula's numbers, tensor by tensor."""
    return " + ".join(f"{what} {count} x {size:,}" if count > 1 else f"{what} {size:,}" for what, size, count in tensors)


def _saved(config: TrainConfig, s: _Shape) -> tuple[list[Line], list[Tensors]]:
    """The lines of what the forward pass saves for backward, and the tensors they count."""
    block, outside, loss = _block(s), _outside_blocks(s), _loss(s)
    if config.grad_ckpt:
        kept = [("checkpointed block inputs", s.r * s.BTd, s.L)]
        held = kept + outside
        act = Line("activations", _sum(held), f"{_describe(kept)} + {_describe(outside)} (B={s.B}, T={s.T}, "
                                              f"d={s.d}, tp={s.tp})")
    else:
        held = [(what, size, count * s.L) for what, size, count in block] + outside
        act = Line("activations", _sum(held), f"{s.L} layers x {_sum(block):,} ({_describe(block)}) + "
                                              f"{_describe(outside)} (B={s.B}, T={s.T}, d={s.d}, tp={s.tp})")
    lines = [act, Line("logits and loss", _sum(loss), f"{_describe(loss)} (V/tp={s.V // s.tp})")]
    copies = _weight_copies(s, blocks=not config.grad_ckpt)
    if copies:
        lines.append(Line("autocast weight copies", _sum(copies), f"{_describe(copies)} (a={s.a})"))
    return lines, held + loss + copies


def _activation_lines(config: TrainConfig, s: _Shape) -> tuple[list[Line], list[Tensors]]:
    """The activation lines at the backward's peak, and every tensor they count.

    Two moments can be the peak: the start of the backward (everything saved, plus the logits'
    gradients), or, with checkpointing, the recomputation of a block, by when the loss's saved
    tensors and the logits' gradients are gone. The lines are those of the larger."""
    lines, tensors = _saved(config, s)
    grads = [("logits gradients (fp32)", 4 * s.B * s.T * s.V // s.tp, 2)]
    at_logits = Line("logits gradients", _sum(grads), f"2 x 4 x B·T·V/tp = 2 x {grads[0][1]:,}")
    if config.grad_ckpt:
        again = _block(s, recomputed=True) + _block_weight_copies(s, 1)
        missed = ("; eager attention's backward then adds gradients of the T² probabilities, not counted "
                  "(docs/studies.md)" if s.eager else "")
        recompute = Line("recomputed block", _sum(again),
                         f"one block again in the backward: {_describe(again)}{missed}")
        loss = next(line for line in lines if line.name == "logits and loss")
        if recompute.bytes > loss.bytes + at_logits.bytes:
            freed = _loss(s)
            return ([line for line in lines if line is not loss] + [recompute],
                    [t for t in tensors if t not in freed] + again)
    return lines + [at_logits], tensors + grads


def saved_for_backward(config: TrainConfig, dims: ModelDims, layout: Layout, device_type: str = "cuda") -> int:
    """Bytes the forward pass and loss save for backward on the rank holding the most (each storage
    once, parameters left out): what a saved-tensors hook sees, and what the tests hold the
    activation lines to."""
    lines, _ = _saved(config, _shape(config, dims, layout, device_type))
    return sum(line.bytes for line in lines)


def _zero1_other_gradients(dims: ModelDims, layout: Layout, dp_rank: int) -> tuple[int, int]:
    """(elements of all the rank's gradients, of those its partitions keep): ZeRO-1 holds them all
    from the backward to the reduction after it."""
    whole = sum(n for _, n in param_numels(dims, layout.tp_size))
    return whole, sum(sum(g.held) for g in zero12_groups(dims, layout.tp_size, layout.dp_size, dp_rank))


def _zero12_dp_rank(config: TrainConfig, dims: ModelDims, layout: Layout, dp_rank: int | None) -> int:
    """The DP rank whose ZeRO-1/2 lines are given: ``dp_rank``, or the one holding the most in the
    lines that differ (the kept gradients, and stage 1's other gradients)."""
    if dp_rank is not None:
        return dp_rank

    def held(r: int) -> int:
        state = rank_model_state(config, dims, layout.tp_size, layout.dp_size, r).total
        whole, kept = _zero1_other_gradients(dims, layout, r)
        if config.mode == "zero1":
            state += DTYPE_BYTES[config.precision] * (whole - kept)
        elif config.grad_accum > 1:
            state += DTYPE_BYTES[config.precision] * kept
        return state

    return max(range(layout.dp_size), key=held)


def _zero12_state_lines(config: TrainConfig, dims: ModelDims, layout: Layout,
                        dp_rank: int) -> tuple[list[Line], list[int]]:
    state = rank_model_state(config, dims, layout.tp_size, layout.dp_size, dp_rank)
    groups = zero12_groups(dims, layout.tp_size, layout.dp_size, dp_rank)
    low, dp = DTYPE_BYTES[config.precision], layout.dp_size
    moments = 8 if config.optimizer == "adamw" else 0
    flat, partition = sum(g.flat for g in groups), sum(g.partition for g in groups)
    held, zeros = sum(sum(g.held) for g in groups), sum(g.zeros for g in groups)
    where = "one contiguous buffer" if ZERO_STAGES[config.mode] == 2 else "autograd's tensors"
    params, grads, optimizer_states = MODEL_STATE_LINES
    return [Line(params, state.params, f"{low} B x {flat:,} elements (Σ A_g: every parameter whole, one flat buffer "
                                       f"per param group padded to a multiple of 2 x dp = {2 * dp})"),
            Line(grads, state.grads, f"{low} B x ({held:,} + {zeros:,}) elements (the whole gradients of the "
                                     f"parameters DP rank {dp_rank}'s partitions touch, in {where}, + the zeros "
                                     "completing its partitions)"),
            Line(optimizer_states, state.optimizer,
                 f"{4 + moments} B (fp32 master 4 + moments {moments}) x {partition:,} elements (Σ A_g / {dp}: "
                 "its partitions)")], list(state.tensor_bytes)


def _fsdp2_state_lines(config: TrainConfig, dims: ModelDims, layout: Layout,
                       dp_rank: int | None) -> tuple[list[Line], list[int]]:
    """FSDP2's padded fp32 shards and gradients, and AdamW's moments on the unpadded rows of DP
    rank ``dp_rank`` (None: the first, which holds the most)."""
    state = rank_model_state(config, dims, layout.tp_size, layout.dp_size, dp_rank)
    rank, dp = dp_rank or 0, layout.dp_size
    shard = f"{state.elements:,} elements (each tensor's ceil(rows / {dp}) rows, padded)"
    params, grads, optimizer_states = MODEL_STATE_LINES
    moments = (f"8 B (AdamW's two fp32 moments) x {state.optimizer // 8:,} elements (the rows DP rank {rank} "
               "holds, unpadded)" if config.optimizer == "adamw" else "none (SGD)")
    return [Line(params, state.params, f"4 B (fp32 shard) x {shard}"),
            Line(grads, state.grads, f"4 B (fp32) x {shard}"),
            Line(optimizer_states, state.optimizer, moments)], list(state.tensor_bytes)


def _model_state_lines(config: TrainConfig, dims: ModelDims, layout: Layout,
                       dp_rank: int | None = None) -> tuple[list[Line], list[int]]:
    if config.mode in ("zero1", "zero2"):
        return _zero12_state_lines(config, dims, layout, _zero12_dp_rank(config, dims, layout, dp_rank))
    if config.mode == "fsdp2":
        return _fsdp2_state_lines(config, dims, layout, dp_rank)
    state = rank_model_state(config, dims, layout.tp_size, layout.dp_size)
    zero3 = config.mode == "zero3"
    per = f"{state.elements:,} elements" + (f" (Σ ceil(n_i / {layout.dp_size}))" if zero3 else " (Σ n_i)")
    low = DTYPE_BYTES[config.precision] if zero3 else 4
    moments = 8 if config.optimizer == "adamw" else 0
    optimizer = f"{4 + moments if zero3 else moments} B" + (" (fp32 master 4 + moments)" if zero3 else " (moments)")
    params, grads, optimizer_states = MODEL_STATE_LINES
    lines = [Line(params, state.params, f"{low} B x {per}"),
             Line(grads, state.grads, f"{low} B x {per}"),
             Line(optimizer_states, state.optimizer, f"{optimizer} x {per}")]
    tensors = list(state.tensor_bytes)
    if state.persistent:
        lines.append(Line("ZeRO-3 persistent parameters", state.persistent,
                          f"{low} B x {state.persistent // low:,} elements (padded to a multiple of dp) of the "
                          f"{state.persistent_count} parameters of at most {config.zero_persistence_threshold:,} "
                          "elements, kept whole"))
        tensors.append(state.persistent)
    return lines, tensors


def _buffer_lines(config: TrainConfig, dims: ModelDims, layout: Layout, dp_rank: int | None = None) -> list[Line]:
    numels = [n for _, n in param_numels(dims, layout.tp_size)]
    if config.mode == "ddp" and layout.dp_size > 1:
        return [Line("DDP gradient buckets", 4 * sum(numels),
                     f"4 B x {sum(numels):,} elements: every fp32 gradient copied into "
                     f"{DDP_BUCKET_BYTES // MIB} MiB buckets")]
    low = DTYPE_BYTES[config.precision]
    if config.mode == "zero2":  # allocated at the backward's first gradient, released at its end
        lines = [Line("ZeRO-2 reduce buckets", 2 * low * ZERO12_BUCKET,
                      f"2 x {low} B x {ZERO12_BUCKET:,} elements (reduce_bucket_size, double-buffered with "
                      "overlap_comm, through the backward)")]
        if config.grad_accum > 1:  # a new grads_in_partition per micro-step, added into the kept one at its end
            rank = _zero12_dp_rank(config, dims, layout, dp_rank)
            kept = sum(sum(g.held) for g in zero12_groups(dims, layout.tp_size, layout.dp_size, rank))
            lines.append(Line("ZeRO-2 micro-step's gradient partition", low * kept,
                              f"{low} B x {kept:,} elements: from the second micro-step on, each backward's "
                              "reduced gradients in a buffer of their own until they are added to the kept ones"))
        return lines
    if config.mode == "zero1":  # no gradient hooks: autograd's gradients all stay until the reduction
        whole, kept = _zero1_other_gradients(dims, layout, _zero12_dp_rank(config, dims, layout, dp_rank))
        return [Line("ZeRO-1 gradients until reduced", low * (whole - kept),
                     f"{low} B x ({whole:,} - {kept:,}) elements: the whole gradients of the parameters only other "
                     "partitions touch, held from the backward to the reduction after it")] if whole > kept else []
    if config.mode == "fsdp2":
        return _fsdp2_buffer_lines(config, dims, layout)
    if config.mode != "zero3":
        return []
    lines = [Line("ZeRO-3 reduce bucket", low * ZERO3_REDUCE_BUCKET,
                  f"{low} B x {ZERO3_REDUCE_BUCKET:,} elements (reduce_bucket_size)")]
    if layout.dp_size > 1:  # with dp 1 a gathered parameter is a view of its partition
        kept, released = zero3_gathered_elements(config, dims, layout)
        lines.append(Line("ZeRO-3 gathered parameters", low * (kept + released),
                          f"{low} B x ({kept:,} whole elements kept for their reuse within "
                          f"{ZERO3_MAX_REUSE_DISTANCE:,} + {released:,} released, which the backward's prefetch "
                          "gathers again: at most)"))
    return lines


def _fsdp2_buffer_lines(config: TrainConfig, dims: ModelDims, layout: Layout) -> list[Line]:
    """FSDP2's gathered groups, at most: the root (gathered for the whole step: it never reshards
    after its forward) and two blocks (the one computing and the one prefetched) in the weights'
    16-bit dtype, and one block's fp32 gradients waiting for their reduce-scatter. With one rank in
    fp32 nothing is gathered: the shard is the parameter. Not yet compared with a GPU's peak."""
    low = DTYPE_BYTES[run_regime(config).matmul_dtype]  # fp32 shards gathered cast to it
    root, block = fsdp2_group_elements(dims, layout.tp_size, layout.dp_size)
    lines = []
    if layout.dp_size > 1 or config.precision != "fp32":
        lines.append(Line("FSDP2 gathered parameters", low * (root + 2 * block),
                          f"{low} B x ({root:,} root + 2 x {block:,} block) elements, padded to dp rows"))
    if layout.dp_size > 1:
        lines.append(Line("FSDP2 gradients before their reduce-scatter", 4 * block,
                          f"4 B x {block:,} elements: one block's whole fp32 gradients"))
    return lines


def _forward_modules(dims: ModelDims, tp_size: int) -> list[tuple[str, list[str]]]:
    """The modules that own parameters, in the order the forward calls them (the LM head reuses
    the token embedding's weight), each with the names of its parameters."""
    modules: dict[str, list[str]] = {}
    for name, _ in param_numels(dims, tp_size):
        modules.setdefault(name.rsplit(".", 1)[0], []).append(name)
    return [*modules.items(), ("lm_head", ["wte.weight"])]


@functools.lru_cache(maxsize=64)
def _kept_after_forward(dims: ModelDims, tp_size: int, reuse_distance: int) -> frozenset[str]:
    """The parameters ZeRO-3 keeps gathered after their forward (see ``zero3_gathered_elements``);
    the same for every batch, so ``batch_size: max``'s search computes it once per layout."""
    numel = dict(param_numels(dims, tp_size))
    forward = _forward_modules(dims, tp_size)
    trace = forward + forward[::-1]
    kept: set[str] = set()
    for i, (_, params) in enumerate(forward):
        traversed = 0
        for _, later in trace[i + 1:]:
            if traversed >= reuse_distance:
                break
            kept |= set(params) & set(later)
            traversed += sum(numel[name] for name in later)
    return frozenset(kept)


def zero3_gathered_elements(config: TrainConfig, dims: ModelDims, layout: Layout,
                            reuse_distance: int = ZERO3_MAX_REUSE_DISTANCE) -> tuple[int, int]:
    """(elements kept gathered when the backward starts, elements released in the forward) of
    the non-persistent parameters, whole (padded to a multiple of dp).

    DeepSpeed's ``PartitionedParameterCoordinator.__params_to_release``: once a step's trace is
    known, a module's parameters are not released after its forward if they are used again
    before ``stage3_max_reuse_distance`` elements of parameters (modules' own parameters, in
    the trace's order) have gone by. The trace is the forward, then the backward in reverse.
    """
    numel = dict(param_numels(dims, layout.tp_size))
    kept = _kept_after_forward(dims, layout.tp_size, reuse_distance)
    dp = layout.dp_size
    whole = {name: -(-n // dp) * dp for name, n in numel.items() if not is_persistent(n, config)}
    return (sum(n for name, n in whole.items() if name in kept),
            sum(n for name, n in whole.items() if name not in kept))


def _framework_lines(tensors: list[int]) -> list[Line]:
    rounding = sum(-(-b // ALLOCATOR_BLOCK) * ALLOCATOR_BLOCK - b for b in tensors)
    return [Line("CUDA context", CUDA_CONTEXT_BYTES, "about 500 MiB: driver context, kernels, libraries "
                                                     "(outside PyTorch's allocator)", in_allocated=False),
            Line("cuBLAS workspace", CUBLAS_WORKSPACE_BYTES, "4096 KiB x 8 (CUBLAS_WORKSPACE_CONFIG default on sm90)"),
            Line("allocator rounding", rounding, f"Σ (ceil(b / 512) x 512 - b) over {len(tensors)} tensors")]


def _optimizer_step_line(config: TrainConfig, dims: ModelDims, layout: Layout, device_type: str) -> list[Line]:
    """What PyTorch's optimizer allocates beside the model state while it updates: on a GPU AdamW
    is fused (in place) and SGD runs over all tensors at once (its weight decay a new copy of
    every gradient); on a CPU both go tensor by tensor (AdamW's sqrt and division of one moment,
    SGD's decayed gradient, for the largest tensor)."""
    numels = [n for _, n in param_numels(dims, layout.tp_size)]
    if device_type == "cuda":
        if config.optimizer == "adamw" or config.weight_decay == 0:
            return []
        return [Line("optimizer step", 4 * sum(numels), f"4 B x {sum(numels):,} elements: SGD's weight decay, "
                                                         "a new copy of every gradient (foreach)")]
    copies = 2 if config.optimizer == "adamw" else int(config.weight_decay != 0)
    return [Line("optimizer step", copies * 4 * max(numels),
                 f"{copies} x 4 B x {max(numels):,} elements (the largest tensor): "
                 + ("AdamW's sqrt of a moment and its quotient" if copies == 2 else "SGD's decayed gradient"))
            ] if copies else []


# The lines of gradients a layout's backward makes, after its start: its stepper freed them at
# the last update (PyTorch's ``zero_grad(set_to_none=True)``, DeepSpeed's stage 1 likewise;
# FSDP2's sharded gradients and the block's unsharded ones before their reduce-scatter). Measured
# on the CPU (tests/test_memory_model.py, docs/studies.md). DeepSpeed's ZeRO-2 and ZeRO-3 reduce
# into buffers of their own, and their lines are kept whole (ZeRO-3 within 1.3 % on the H200).
MADE_IN_THE_BACKWARD = {"single": ("gradients",), "ddp": ("gradients",),
                        "zero1": ("gradients", "ZeRO-1 gradients until reduced"),
                        "fsdp2": ("gradients", "FSDP2 gradients before their reduce-scatter")}


def _gradients_made_after_the_peak(config: TrainConfig, act_lines: list[Line]) -> bool:
    """Without accumulation (whose later micro-steps find the earlier ones' gradients), a peak at
    the start of the backward (the logits' gradients) holds none of them."""
    return (config.mode in MADE_IN_THE_BACKWARD and config.grad_accum == 1
            and any(line.name == "logits gradients" for line in act_lines))


def _framework(lines: list[Line], tensors: list[int], device_type: str) -> tuple[Line, ...]:
    return tuple(lines + (_framework_lines(tensors) if device_type == "cuda" else []))


def predict(config: TrainConfig, dims: ModelDims, layout: Layout, device_type: str = "cuda",
            dp_rank: int | None = None) -> Prediction:
    """Predicted training-peak bytes (per GPU) of DP rank ``dp_rank``, or of the rank holding the
    most (None); only ZeRO-1/2's and FSDP2's ranks differ.

    The peak is one of a step's moments: the start of the backward (what the forward saved, the
    logits' gradients), the recomputation of a block under checkpointing, or, for the layouts
    whose backward makes their gradients (``MADE_IN_THE_BACKWARD``), the optimizer's update (the
    whole model state, and no activations), whichever holds the most; the lines are those of that
    moment."""
    state_lines, state_tensors = _model_state_lines(config, dims, layout, dp_rank)
    state = tuple(line for line in state_lines if line.name in MODEL_STATE_LINES)  # as the engine measures it
    act_lines, act_tensors = _activation_lines(config, _shape(config, dims, layout, device_type))
    buffers = _buffer_lines(config, dims, layout, dp_rank)
    activations = [size for _, size, count in act_tensors for _ in range(count)]
    if config.mode not in MADE_IN_THE_BACKWARD:  # ZeRO-2 and ZeRO-3: held as their lines say
        return Prediction(_framework(state_lines + act_lines + buffers, state_tensors + activations, device_type),
                          state)
    at_backward = _framework(state_lines + act_lines + buffers, state_tensors + activations, device_type)
    made_later: tuple[Line, ...] = ()
    if _gradients_made_after_the_peak(config, act_lines):
        made = MADE_IN_THE_BACKWARD[config.mode]
        made_later = tuple(line for line in state_lines + buffers if line.name in made)
        without = list(state_tensors)
        if config.mode in ("single", "ddp"):  # the allocator's rounding: each parameter's fp32 gradient gone
            for _, numel in param_numels(dims, layout.tp_size):
                without.remove(4 * numel)
        at_backward = _framework([Line(line.name, 0, f"none yet: the backward makes them ({line.formula}) after "
                                                     "its start, the peak") if line.name in made else line
                                  for line in state_lines + act_lines + buffers], without + activations, device_type)
    # the update: the whole model state, the activations freed, the buffers as in the backward (a
    # bound for ZeRO-1's and FSDP2's, which the update has released), and PyTorch's optimizer's
    # temporaries where it is PyTorch's (DeepSpeed's own are not known to this model)
    update = _optimizer_step_line(config, dims, layout, device_type) if config.mode != "zero1" else []
    at_update = _framework(state_lines + buffers + update, state_tensors + [line.bytes for line in update],
                           device_type)
    peak = max(at_backward, at_update, key=lambda lines: sum(line.bytes for line in lines))
    return Prediction(peak, state, made_later if peak is at_backward else ())
