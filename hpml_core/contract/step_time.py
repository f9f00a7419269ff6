"""A run's step, cut into the parts a profiled step measures (``hpml_core.contract.step_parts``),
its tokens/s and GPU-hours, predicted before it runs from the FLOP formula, the bytes its layout
moves (``hpml_core.contract.collectives``) and the rates and bandwidths its site states.

**Compute** = the FLOPs one rank does ÷ (the GPU's peak × the site's efficiency):

- the model FLOPs per token of PaLM's formula (``hpml_core.contract.metrics``, what MFU is measured
  against) × the tokens of the rank's replica in a step (batch × sequence × accumulation) ÷ the
  TP size, since TP ranks split each matrix product; the formula's 6N is 2N **forward** and 4N
  **backward**, and activation checkpointing adds a **recompute** of 2N (each block's forward again);
- the peak is the GPU's dense peak at the run's matrix precision (``hpml_core.contract.gpus``; the
  16-bit one for ``--fp8`` runs too, until a calibration measures their rate); the
  efficiency is an MFU the site states (``compute_efficiency``; hpml measured 0.38 to 0.50 for
  GPT-2 Large on one H200, ``hpml_core/bench/RESULTS.md``). A device with no peak (a CPU) is
  given the site's ``device_tflops`` (model TFLOP/s per rank) instead, or has no prediction.

**Optimizer** = the bytes the update reads and writes ÷ the device's memory bandwidth (the GPU's
data sheet, or the site's ``device_memory_gb_per_s``): per element of the rank's optimizer state,
AdamW reads the fp32 weight, gradient and two moments and writes three of them back (28 B), SGD
reads two and writes one (12 B); clipping reads the gradients for their norm and scales them
(12 B); ZeRO (every stage) also reads its 16-bit gradient partition and writes the 16-bit weights
(4 B). ZeRO-3's elements are its partitions; ZeRO-1/2's too, 1/dp of each param group's padded
flat buffer (``hpml_core.contract.model_state``), since each rank updates only its partition.

**Communication** = per collective, the bytes one rank sends ÷ the site's bandwidth, for ring
collectives (NCCL's and gloo's): an all-reduce sends 2(n−1)/n of its buffer, an all-gather or a
reduce-scatter (n−1)/n, n being the group's ranks; the bandwidth is ``intra_node_gb_per_s`` when
the group's ranks share a node (TP groups always do), else ``inter_node_gb_per_s``: a bus
bandwidth, as nccl-tests reports it.

**Hidden** = what overlap is expected to take off the step: DDP all-reduces its gradient buckets
while the backward runs (all but the last bucket, at most 25 MiB, up to the backward's length);
ZeRO-3 prefetches the next parameters' all-gathers during the forward (up to its length) and
reduce-scatters gradients during the backward (``overlap_comm``); ZeRO-2 all-reduces each reduce
bucket as the backward fills it (``overlap_comm``), all but the last (at most ``reduce_bucket_size``
elements), at every micro-step, up to the backward's length; ZeRO-1 reduces only after the
boundary's backward and ZeRO-1/2 all-gather the updated partitions after the optimizer step, so
those wait; TP's all-reduces sit between the matrix products that need them, and the
optimizer's scalars wait, so neither hides.

**Step** = forward + backward + recompute + optimizer + the communication left exposed; data
fetching and host overhead are not predicted (a profiled step measures them). Tokens/s = global
batch × sequence ÷ step. GPU-hours = step × steps × ranks ÷ 3600: the training steps only;
setup, compilation and time in the queue are not predicted.

**Calibrated**: where the site has a calibration (``hpml_core.contract.calibration``, fitted by
``hpml calibrate`` from its finished runs), its measured rates replace the stated ones part by
part: each pass's TFLOP/s (recomputation at the forward's when it has none of its own), the
optimizer's GB/s, each collective kind's latency (× its count, where the contract knows the
count) and bandwidth on its link, the share of each kind overlap hid in that layout (instead of
the rules above), and data and other at their measured seconds per step; a rate the calibration
lacks stays the site's, and ``how`` says which were calibrated.

What this cannot know: kernel efficiency away from the stated MFU (small models and small batches
reach less), host overheads, a congested network, and stragglers; ``hpml report`` sets each
predicted part beside what the profiled steps measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpml_core.contract import collectives, metrics
from hpml_core.contract.buckets import DDP_BUCKET_BYTES, ZERO12_BUCKET  # the last bucket waits for the backward's end
from hpml_core.contract.calibration import COMPUTE_FITTED, Calibration, rate_key
from hpml_core.contract.config import ZERO_STAGES, TrainConfig
from hpml_core.contract.gpus import Gpu
from hpml_core.contract.layout import Layout
from hpml_core.contract.metrics import training_flops_per_token
from hpml_core.contract.model_state import param_numels, partition_numel, zero12_groups
from hpml_core.contract.models import ModelDims
from hpml_core.contract.precision import run_regime
from hpml_core.contract.step_parts import COLLECTIVE_KINDS, PARTS



@dataclass(frozen=True)
class Performance:
    """What a site states about its hardware's speed (``jobs.site.Site.performance``)."""

    compute_efficiency: float  # MFU the engine is assumed to reach on the site's GPUs
    intra_node_gb_per_s: float  # bus bandwidth between GPUs of one node, GB/s (1e9 bytes)
    inter_node_gb_per_s: float  # bus bandwidth between nodes, GB/s
    device_tflops: float | None  # model TFLOP/s per rank on a device with no peak on record (a CPU)
    source: str  # where these come from, for the plan's and the report's notes
    device_memory_gb_per_s: float | None = None  # memory bandwidth, where the GPU table's is not the one
    calibration: Calibration | None = None  # the site's measured rates (hpml calibrate), used where they exist

    def describe(self) -> str:
        device = f", {self.device_tflops} TFLOP/s per rank without a GPU peak" if self.device_tflops else ""
        memory = f", {self.device_memory_gb_per_s:g} GB/s device memory" if self.device_memory_gb_per_s else ""
        assumed = (f"{self.compute_efficiency:.0%} of the GPU's dense peak, {self.intra_node_gb_per_s:g} GB/s within "
                   f"a node, {self.inter_node_gb_per_s:g} GB/s between nodes{device}{memory} ({self.source})")
        if self.calibration is None:
            return f"assumed: {assumed}"
        return f"{self.calibration.describe()}; a rate it lacks is assumed: {assumed}"


@dataclass(frozen=True)
class KindPrediction:
    """One collective kind's predicted time in a step, and how much of it overlap hides."""

    kind: str
    bytes: int  # whole buffers, as a profiled step counts them
    bytes_sent: float  # what one rank sends of them in ring collectives
    seconds: float
    hidden_s: float


@dataclass(frozen=True)
class StepPrediction:
    parts: tuple[tuple[str, float], ...] | None  # (part, seconds) in step_parts.PARTS' order; None: no prediction
    tokens_per_step: int
    how: str  # the numbers behind it, or why there is no prediction
    missing_reason: str | None = None
    communication: tuple[KindPrediction, ...] = field(default=())

    @property
    def parts_s(self) -> dict[str, float] | None:
        return None if self.parts is None else dict(self.parts)

    @property
    def compute_s(self) -> float | None:
        return None if self.parts_s is None else sum(self.parts_s[p] for p in ("forward", "backward", "recompute"))

    @property
    def communication_s(self) -> float | None:
        """All communication, hidden or not."""
        return None if self.parts_s is None else sum(k.seconds for k in self.communication)

    @property
    def step_s(self) -> float | None:
        return None if self.parts is None else sum(seconds for _, seconds in self.parts)

    @property
    def tokens_per_s(self) -> float | None:
        return None if self.step_s is None else metrics.tokens_per_s(self.tokens_per_step, self.step_s)

    def gpu_hours(self, steps: int | None, world_size: int) -> float | None:
        """Device-hours of the training steps; None without a prediction or a step count."""
        if self.step_s is None or steps is None:
            return None
        return self.step_s * steps * world_size / 3600


def ring_share(collective: str, n: int) -> float:
    """The share of its buffer one rank sends in a ring collective of n ranks."""
    if n <= 1:
        return 0.0
    return (2 if collective == "all-reduce" else 1) * (n - 1) / n


def rank_flops_per_step(config: TrainConfig, dims: ModelDims, layout: Layout) -> float:
    """Forward, backward and recomputation together: the compute of one rank's step."""
    return sum(compute_flops(config, dims, layout).values())


def compute_flops(config: TrainConfig, dims: ModelDims, layout: Layout) -> dict[str, float]:
    """Model FLOPs of one rank's step, by pass: forward 2N, backward 4N, recompute 2N per token."""
    tokens = config.batch_size * config.seq_len * config.grad_accum
    flops = training_flops_per_token(dims, config.seq_len) * tokens / layout.tp_size
    return {"forward": flops / 3, "backward": 2 * flops / 3, "recompute": flops / 3 if config.grad_ckpt else 0.0}


def optimizer_bytes(config: TrainConfig, dims: ModelDims, layout: Layout) -> tuple[int, str]:
    """Bytes the optimizer step reads and writes on one rank, and how."""
    numels = [n for _, n in param_numels(dims, layout.tp_size)]
    if config.mode == "zero3":
        elements = sum(partition_numel(n, layout.dp_size) for n in numels)
    elif config.mode in ZERO_STAGES:  # ZeRO-1/2: the rank's partition of each param group's flat buffer
        elements = sum(g.partition for g in zero12_groups(dims, layout.tp_size, layout.dp_size, 0))
    else:
        elements = sum(numels)
    zero = 4 if config.mode in ZERO_STAGES else 0
    per_element = (28 if config.optimizer == "adamw" else 12) + (12 if config.grad_clip > 0 else 0) + zero
    return elements * per_element, f"{elements:,} elements × {per_element} B"


def _communication(config: TrainConfig, dims: ModelDims, layout: Layout, ranks_per_node: int, backend: str,
                   performance: Performance, compute: dict[str, float]) -> tuple[list[KindPrediction], str]:
    dp_span_nodes = layout.world_size > ranks_per_node and layout.dp_size > 1
    group_size = {"dp": layout.dp_size, "tp": layout.tp_size, "world": layout.world_size}
    bandwidth = {"dp": performance.inter_node_gb_per_s if dp_span_nodes else performance.intra_node_gb_per_s,
                 "tp": performance.intra_node_gb_per_s,
                 "world": performance.inter_node_gb_per_s if layout.world_size > ranks_per_node
                 else performance.intra_node_gb_per_s}
    scope = {"dp": "inter-node" if dp_span_nodes else "intra-node", "tp": "intra-node",
             "world": "inter-node" if layout.world_size > ranks_per_node else "intra-node"}
    calibration = performance.calibration
    links = calibration.links if calibration else {}
    shares = calibration.hidden_share.get(config.mode, {}) if calibration else {}
    found = collectives.per_step(config, dims, layout, backend)
    seconds = {}
    for c in found:
        sent = ring_share(c.kind, group_size[c.group]) * c.bytes
        link = links.get(scope[c.group], {}).get(c.kind)
        seconds[c] = (sent / (bandwidth[c.group] * 1e9) if link is None
                      else (c.count or 0) * link.latency_s + sent / (link.gb_per_s * 1e9))
    # what overlap can hide, by the pass that hides it
    budget = {"forward": compute["forward"], "backward": compute["backward"] + compute["recompute"]}
    hidden = dict.fromkeys(found, 0.0)
    for c in found:
        if c.kind in shares:  # measured on this site for this layout
            hidden[c] = shares[c.kind].value * seconds[c]
            continue
        if c.what.startswith("gradients, in DDP"):  # during the last micro-step's backward only
            last = min(c.bytes, DDP_BUCKET_BYTES) / c.bytes
            which = "backward"
            hidden[c] = min(seconds[c] * (1 - last), budget[which] / config.grad_accum)
        elif c.what.startswith("gradients, in reduce buckets during"):  # ZeRO-2: all but the last bucket
            grads = c.elements // config.grad_accum
            last = min(grads, ZERO12_BUCKET) / grads
            which = "backward"
            hidden[c] = min(seconds[c] * (1 - last), budget[which])
        elif config.mode == "zero3" and c.kind in ("all-gather", "reduce-scatter"):
            which = "forward" if c.kind == "all-gather" and "backward" not in c.what else "backward"
            hidden[c] = min(seconds[c], budget[which])
        else:
            continue
        budget[which] -= hidden[c]
    kinds = []
    for kind in COLLECTIVE_KINDS:
        of_kind = [c for c in found if c.kind == kind]
        if of_kind:
            kinds.append(KindPrediction(kind, sum(c.bytes for c in of_kind),
                                        sum(ring_share(kind, group_size[c.group]) * c.bytes for c in of_kind),
                                        sum(seconds[c] for c in of_kind), sum(hidden[c] for c in of_kind)))
    how = "; ".join(f"{c.kind} of {c.what} over {c.group} ({c.bytes:,} B)" for c in found) or "no communication"
    calibrated = sorted({f"{c.kind} {scope[c.group]}" for c in found if c.kind in links.get(scope[c.group], {})})
    if calibrated:
        how += f"; calibrated: {', '.join(calibrated)}"
        uncounted = [c for c in found if c.count is None and c.kind in links.get(scope[c.group], {})]
        if uncounted:
            how += (f" (no latency for the {', '.join(c.what for c in uncounted)}: the contract leaves their "
                    "number open)")
    if shares and any(c.kind in shares for c in found):
        how += f"; hidden share calibrated for {config.mode}"
    return kinds, how


def predict_step(config: TrainConfig, dims: ModelDims, layout: Layout, ranks_per_node: int, gpu: Gpu | None,
                 performance: Performance) -> StepPrediction:
    """The step of one run on ``gpu`` (None: a device with no peak on record, such as a CPU)."""
    tokens = layout.global_batch(config.batch_size, config.grad_accum) * config.seq_len
    precision = run_regime(config)
    matmul_dtype = precision.matmul_dtype
    calibration = performance.calibration
    device_type = calibration.device_type if calibration else "cuda"
    key = rate_key(config.mode, precision, device_type, ranks_per_node, config.compile)
    fitted = calibration.compute_tflops.get(key, {}) if calibration else {}
    if gpu is not None:
        peak = gpu.fp32_tflops if matmul_dtype == "fp32" else gpu.tensor_16bit_tflops
        rate = peak * performance.compute_efficiency
        rate_how = f"{performance.compute_efficiency:.0%} of {gpu.label}'s {peak:g}"
        if precision.fp8_linears:  # what FP8 gains, after its casts, is measured, not assumed
            rate_how += " (its 16-bit peak: no FP8 gain assumed before a calibration)"
    elif performance.device_tflops is not None:
        rate, rate_how = performance.device_tflops, "the site's device_tflops"
    elif "forward" in fitted and "backward" in fitted:  # the calibration gives every pass its rate
        rate, rate_how = None, ""
    else:
        reason = "no GPU peak on record and no device_tflops in the site profile"
        return StepPrediction(None, tokens, reason, reason)
    # each pass at its calibrated rate; recomputation, a forward again, at the forward's if not its own
    rates = {part: (fitted[part].value if part in fitted else fitted["forward"].value if
                    part == "recompute" and "forward" in fitted else rate) for part in COMPUTE_FITTED}
    if None in rates.values():
        reason = f"no calibrated compute rate for {key} and no device_tflops in the site profile"
        return StepPrediction(None, tokens, reason, reason)
    optimizer_fit = calibration.optimizer_gb_per_s.get(key) if calibration else None
    memory_gb_per_s = (optimizer_fit.value if optimizer_fit else
                       performance.device_memory_gb_per_s or (gpu.memory_gb_per_s if gpu else None))
    if memory_gb_per_s is None:
        reason = "no GPU memory bandwidth on record and no device_memory_gb_per_s in the site profile"
        return StepPrediction(None, tokens, reason, reason)
    flops = compute_flops(config, dims, layout)
    compute = {part: f / (rates[part] * 1e12) for part, f in flops.items()}
    moved, moved_how = optimizer_bytes(config, dims, layout)
    backend = config.backend_on("cuda" if gpu is not None else "cpu")  # a device without a peak on record: a CPU
    kinds, sent = _communication(config, dims, layout, ranks_per_node, backend, performance, compute)
    overhead = calibration.overhead_s.get(key, {}) if calibration else {}
    parts = (dict.fromkeys(PARTS, 0.0) | compute | {"optimizer": moved / (memory_gb_per_s * 1e9)}
             | {part: fit.value for part, fit in overhead.items()})
    for k in kinds:
        parts[k.kind] = k.seconds - k.hidden_s
    total_flops = sum(flops.values())
    if fitted:
        rate_how = (f"calibrated for {key}: " + ", ".join(f"{part} {rates[part]:.3g}" for part in COMPUTE_FITTED)
                    + (f"; {', '.join(p for p in COMPUTE_FITTED if p not in fitted)} not calibrated"
                       if len(fitted) < len(COMPUTE_FITTED) else ""))
    else:
        rate_how = f"{rate:.3g} TFLOP/s ({rate_how})"
    memory_how = f"{memory_gb_per_s:g} GB/s" + (" calibrated" if optimizer_fit else "")
    overhead_how = (f"; data and other {sum(parts[p] for p in overhead) * 1e3:.1f} ms calibrated" if overhead
                    else "")
    how = (f"compute {total_flops / 1e12:.3g} TFLOP per rank at {rate_how} = "
           f"{sum(compute.values()) * 1e3:.1f} ms; optimizer {moved_how} at {memory_how} = "
           f"{parts['optimizer'] * 1e3:.2f} ms{overhead_how}; communication "
           f"{sum(k.bytes_sent for k in kinds) / 1e9:.3g} GB sent per rank = "
           f"{sum(k.seconds for k in kinds) * 1e3:.1f} ms, {sum(k.hidden_s for k in kinds) * 1e3:.1f} ms of it hidden "
           f"({sent})")
    return StepPrediction(tuple((part, parts[part]) for part in PARTS), tokens, how, communication=tuple(kinds))
