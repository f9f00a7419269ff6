"""The memory model: per GPU, the peak memory of any hpml run, line by line, from the run's
config, the model's dimensions and the layout alone (no torch).

Why: a run that does not fit should be refused by ``hpml plan`` and ``hpml submit`` on the login
node, before it spends GPU hours, and the report should be able to say how far each measured peak
is from what was expected. So every line (model state, activations, buffers, CUDA framework) is
a formula with its numbers, and ``predict`` returns the lines of the rank holding the most
(every rank of an hpml run holds the same: TP shards are equal and ZeRO-3 pads every partition
to the same size).

The manual, with every line's formula, its source and what the model cannot know, is
docs/memory-model.md (its notation, B, T, d, H, V, L, tp, dp, a and r, is the one the code below
uses); where it was measured and how far off it is, docs/studies.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpml_core.contract.buckets import DDP_BUCKET_BYTES, ZERO3_MAX_REUSE_DISTANCE, ZERO3_PREFETCH_BUCKET, ZERO3_REDUCE_BUCKET
from hpml_core.contract.config import TrainConfig
from hpml_core.contract.layout import Layout
from hpml_core.contract.model_state import DTYPE_BYTES, is_persistent, param_numels, rank_model_state
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
    lines: tuple[Line, ...]

    @property
    def total_bytes(self) -> int:
        return sum(line.bytes for line in self.lines)

    @property
    def allocated_bytes(self) -> int:
        """What ``torch.cuda.max_memory_allocated`` should show: the lines inside PyTorch's allocator."""
        return sum(line.bytes for line in self.lines if line.in_allocated)

    @property
    def model_state_bytes(self) -> int:
        """The model state's lines: what the engine measures as the rank file's model_state.total_bytes."""
        return sum(line.bytes for line in self.lines if line.name in MODEL_STATE_LINES)

    def line(self, name: str) -> Line:
        for line in self.lines:
            if line.name == name:
                return line
        raise KeyError(f"no line {name!r}; the lines are {[line.name for line in self.lines]}")


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
    eager: bool
    cuda: bool

    @property
    def BTd(self) -> int:
        return self.B * self.T * self.d


def _shape(config: TrainConfig, dims: ModelDims, layout: Layout, device_type: str) -> _Shape:
    low = DTYPE_BYTES[config.precision]
    cast_model = config.mode == "zero3" and config.precision != "fp32"
    cuda = device_type == "cuda"
    return _Shape(B=config.batch_size, T=config.seq_len, d=dims.n_embd, H=dims.n_head, V=dims.vocab_size,
                  L=dims.n_layer, tp=layout.tp_size, a=low, r=low if cast_model else 4,
                  stat=low if cast_model and not cuda else 4,
                  autocast=config.mode != "zero3" and config.precision != "fp32",
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


def _weight_copies(s: _Shape, blocks: bool) -> list[Tensors]:
    """Autocast's cached 16-bit casts of the fp32 weights, saved by the matmuls."""
    if not s.autocast:
        return []
    block = [("block weight copies", s.a * 12 * s.d * s.d // s.tp, s.L)] if blocks else []
    return [*block, ("LM head weight copy", s.a * s.V * s.d // s.tp, 1)]


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
        again = _block(s, recomputed=True) + [(what, size, 1) for what, size, _ in _weight_copies(s, blocks=True)[:1]]
        recompute = Line("recomputed block", _sum(again), f"one block again in the backward: {_describe(again)}")
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


def _model_state_lines(config: TrainConfig, dims: ModelDims, layout: Layout) -> tuple[list[Line], list[int]]:
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


def _buffer_lines(config: TrainConfig, dims: ModelDims, layout: Layout) -> list[Line]:
    numels = [n for _, n in param_numels(dims, layout.tp_size)]
    if config.mode == "ddp" and layout.dp_size > 1:
        return [Line("DDP gradient buckets", 4 * sum(numels),
                     f"4 B x {sum(numels):,} elements: every fp32 gradient copied into "
                     f"{DDP_BUCKET_BYTES // MIB} MiB buckets")]
    if config.mode != "zero3":
        return []
    low = DTYPE_BYTES[config.precision]
    lines = [Line("ZeRO-3 reduce bucket", low * ZERO3_REDUCE_BUCKET,
                  f"{low} B x {ZERO3_REDUCE_BUCKET:,} elements (reduce_bucket_size)")]
    if layout.dp_size > 1:  # with dp 1 a gathered parameter is a view of its partition
        kept, released = zero3_gathered_elements(config, dims, layout)
        lines.append(Line("ZeRO-3 gathered parameters", low * (kept + released),
                          f"{low} B x ({kept:,} whole elements kept for their reuse within "
                          f"{ZERO3_MAX_REUSE_DISTANCE:,} + {released:,} released, which the backward's prefetch "
                          "gathers again: at most)"))
    return lines


def _forward_modules(dims: ModelDims, tp_size: int) -> list[tuple[str, list[str]]]:
    """The modules that own parameters, in the order the forward calls them (the LM head reuses
    the token embedding's weight), each with the names of its parameters."""
    modules: dict[str, list[str]] = {}
    for name, _ in param_numels(dims, tp_size):
        modules.setdefault(name.rsplit(".", 1)[0], []).append(name)
    return [*modules.items(), ("lm_head", ["wte.weight"])]


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
    forward = _forward_modules(dims, layout.tp_size)
    trace = forward + forward[::-1]
    kept: set[str] = set()
    for i, (_, params) in enumerate(forward):
        traversed = 0
        for _, later in trace[i + 1:]:
            if traversed >= reuse_distance:
                break
            kept |= set(params) & set(later)
            traversed += sum(numel[name] for name in later)
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


def predict(config: TrainConfig, dims: ModelDims, layout: Layout, device_type: str = "cuda") -> Prediction:
    """Predicted training-peak bytes of the rank holding the most (per GPU)."""
    state_lines, state_tensors = _model_state_lines(config, dims, layout)
    act_lines, act_tensors = _activation_lines(config, _shape(config, dims, layout, device_type))
    lines = state_lines + act_lines + _buffer_lines(config, dims, layout)
    if device_type == "cuda":
        tensors = state_tensors + [size for _, size, count in act_tensors for _ in range(count)]
        lines += _framework_lines(tensors)
    return Prediction(tuple(lines))
