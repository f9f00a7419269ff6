"""A run's step time, tokens/s and GPU-hours, predicted before it runs from the FLOP formula and
the bytes its layout moves, at the efficiency and bandwidths its site states.

**Compute** = the FLOPs one rank does in a step ÷ (the GPU's peak × the site's efficiency):

- the model FLOPs per token of PaLM's formula (``hpml_core.contract.metrics``, what MFU is measured
  against) × the tokens of the rank's replica in a step (batch × sequence × accumulation) ÷ the
  TP size, since TP ranks split each matrix product;
- × 4/3 with activation checkpointing: each block's forward runs again in the backward pass
  (the formula's 6N is 2N forward and 4N backward);
- the peak is the GPU's dense peak at the run's matrix precision (``hpml_core.contract.gpus``); the
  efficiency is an MFU the site states (``compute_efficiency``; hpml measured 0.38 to 0.50 for
  GPT-2 Large on one H200, ``hpml_core/bench/RESULTS.md``). A device with no peak (a CPU) is
  given the site's ``device_tflops`` (model TFLOP/s per rank) instead, or has no prediction.

**Communication** = the bytes one rank sends in a step ÷ the site's bandwidth, for ring
collectives (NCCL's and gloo's): an all-reduce sends 2(n−1)/n of its buffer, an all-gather or a
reduce-scatter (n−1)/n, n being the group's ranks:

- DDP: the gradients (in the regime's reduction dtype) all-reduced over the DP group once per
  optimizer step (accumulation's other micro-steps skip it);
- ZeRO-3: in every micro-step, the parameters all-gathered for the forward and again for the
  backward (in the weights' dtype) and the gradients reduce-scattered, over the DP group; the
  parameters DeepSpeed keeps whole (the persistence threshold) move with the gradients only, in
  an all-reduce;
- TP: in every micro-step, each block's output activations (batch × sequence × width, in the
  matrix dtype) all-reduced twice in the forward and twice in the backward over the TP group
  (twice more with checkpointing's second forward);
- the bandwidth is the site's ``intra_node_gb_per_s`` when the group's ranks share a node (TP
  groups always do), else its ``inter_node_gb_per_s``: a bus bandwidth, as nccl-tests reports it.

**Step** = compute + communication: no overlap is assumed. DDP and ZeRO-3 overlap part of their
communication with the backward pass, so where communication matters the prediction errs long.
Tokens/s = global batch × sequence ÷ step. GPU-hours = step × steps × ranks ÷ 3600: the training
steps only; setup, compilation and time in the queue are not predicted.

What this cannot know: kernel efficiency away from the stated MFU (small models and small batches
reach less), host overheads, a congested network, and stragglers; ``hpml report`` sets each
prediction beside what the run measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpml_core.contract import metrics
from hpml_core.contract.config import TrainConfig
from hpml_core.contract.metrics import training_flops_per_token
from hpml_core.contract.gpus import Gpu
from hpml_core.contract.layout import Layout
from hpml_core.contract.model_state import is_persistent, param_numels
from hpml_core.contract.models import ModelDims
from hpml_core.contract.precision import regime

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class Performance:
    """What a site states about its hardware's speed (``jobs.site.Site.performance``)."""

    compute_efficiency: float  # MFU the engine is assumed to reach on the site's GPUs
    intra_node_gb_per_s: float  # bus bandwidth between GPUs of one node, GB/s (1e9 bytes)
    inter_node_gb_per_s: float  # bus bandwidth between nodes, GB/s
    device_tflops: float | None  # model TFLOP/s per rank on a device with no peak on record (a CPU)
    source: str  # where these come from, for the plan's and the report's notes

    def describe(self) -> str:
        device = f", {self.device_tflops} TFLOP/s per rank without a GPU peak" if self.device_tflops else ""
        return (f"{self.compute_efficiency:.0%} of the GPU's dense peak, {self.intra_node_gb_per_s:g} GB/s within a "
                f"node, {self.inter_node_gb_per_s:g} GB/s between nodes{device} ({self.source})")


@dataclass(frozen=True)
class StepPrediction:
    compute_s: float | None
    communication_s: float | None
    tokens_per_step: int
    how: str  # the numbers behind it, or why there is no prediction
    missing_reason: str | None = None

    @property
    def step_s(self) -> float | None:
        return None if self.compute_s is None else self.compute_s + self.communication_s

    @property
    def tokens_per_s(self) -> float | None:
        return None if self.step_s is None else metrics.tokens_per_s(self.tokens_per_step, self.step_s)

    def gpu_hours(self, steps: int | None, world_size: int) -> float | None:
        """Device-hours of the training steps; None without a prediction or a step count."""
        if self.step_s is None or steps is None:
            return None
        return self.step_s * steps * world_size / 3600


def _ring(collective: str, n: int) -> float:
    """The share of its buffer one rank sends in a ring collective of n ranks."""
    if n <= 1:
        return 0.0
    return (2 if collective == "all-reduce" else 1) * (n - 1) / n


def rank_flops_per_step(config: TrainConfig, dims: ModelDims, layout: Layout) -> float:
    tokens = config.batch_size * config.seq_len * config.grad_accum
    recompute = 4 / 3 if config.grad_ckpt else 1.0
    return training_flops_per_token(dims, config.seq_len) * tokens / layout.tp_size * recompute


def rank_bytes_sent(config: TrainConfig, dims: ModelDims, layout: Layout) -> tuple[float, float, str]:
    """(bytes over the DP group, bytes over the TP group, how) one rank sends in a step."""
    precision = regime(config.mode, config.precision)
    grad, weight, matmul = (BYTES[precision.grad_reduce_dtype], BYTES[precision.weights_dtype],
                            BYTES[precision.matmul_dtype])
    numels = [n for _, n in param_numels(dims, layout.tp_size)]
    dp, tp, accum = layout.dp_size, layout.tp_size, config.grad_accum
    dp_bytes, how = 0.0, []
    if config.mode == "ddp" and dp > 1:
        dp_bytes = _ring("all-reduce", dp) * sum(numels) * grad
        how.append(f"DDP all-reduce of {sum(numels):,} gradients × {grad} B")
    elif config.mode == "zero3" and dp > 1:
        partitioned = sum(n for n in numels if not is_persistent(n, config))
        persistent = sum(numels) - partitioned
        dp_bytes = accum * (2 * _ring("all-gather", dp) * partitioned * weight
                            + _ring("reduce-scatter", dp) * partitioned * grad
                            + _ring("all-reduce", dp) * persistent * grad)
        how.append(f"ZeRO-3, per micro-step: 2 all-gathers of {partitioned:,} parameters × {weight} B, "
                   f"a reduce-scatter of their gradients × {grad} B" + (f", an all-reduce of {persistent:,} kept whole"
                                                                       if persistent else ""))
    tp_bytes = 0.0
    if tp > 1:
        all_reduces = dims.n_layer * (2 + 2 + (2 if config.grad_ckpt else 0))
        activation = config.batch_size * config.seq_len * dims.n_embd * matmul
        tp_bytes = accum * all_reduces * _ring("all-reduce", tp) * activation
        how.append(f"TP, per micro-step: {all_reduces} all-reduces of {activation:,} B of activations")
    return dp_bytes, tp_bytes, "; ".join(how) or "no communication"


def predict_step(config: TrainConfig, dims: ModelDims, layout: Layout, ranks_per_node: int, gpu: Gpu | None,
                 performance: Performance) -> StepPrediction:
    """The step of one run on ``gpu`` (None: a device with no peak on record, such as a CPU)."""
    tokens = layout.global_batch(config.batch_size, config.grad_accum) * config.seq_len
    flops = rank_flops_per_step(config, dims, layout)
    if gpu is not None:
        fp32 = regime(config.mode, config.precision).matmul_dtype == "fp32"
        peak = gpu.fp32_tflops if fp32 else gpu.tensor_16bit_tflops
        rate = peak * performance.compute_efficiency
        rate_how = f"{performance.compute_efficiency:.0%} of {gpu.label}'s {peak:g}"
    elif performance.device_tflops is not None:
        rate, rate_how = performance.device_tflops, "the site's device_tflops"
    else:
        reason = "no GPU peak on record and no device_tflops in the site profile"
        return StepPrediction(None, None, tokens, reason, reason)
    compute = flops / (rate * 1e12)
    dp_bytes, tp_bytes, sent = rank_bytes_sent(config, dims, layout)
    dp_span_nodes = layout.world_size > ranks_per_node and layout.dp_size > 1
    dp_bandwidth = performance.inter_node_gb_per_s if dp_span_nodes else performance.intra_node_gb_per_s
    communication = dp_bytes / (dp_bandwidth * 1e9) + tp_bytes / (performance.intra_node_gb_per_s * 1e9)
    how = (f"compute {flops / 1e12:.3g} TFLOP per rank at {rate:.3g} TFLOP/s ({rate_how}) = {compute * 1e3:.1f} ms; "
           f"communication {(dp_bytes + tp_bytes) / 1e9:.3g} GB per rank ({sent}) = {communication * 1e3:.1f} ms")
    return StepPrediction(compute, communication, tokens, how)
