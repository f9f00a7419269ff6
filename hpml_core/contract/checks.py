"""Every refusal a run can meet before it trains, in one place: ``hpml plan`` calls ``resolve``
for each run of a study, the engine for its launch, and both word a refusal the same way (the
flag, then why). So a study that plans cleanly launches cleanly; what only the job can know
(a GPU for NCCL, a checkpoint to resume) is left to the engine.

``resolve`` also derives what follows from a valid run: the model's dimensions with the data's
real vocabulary (or a larger one the config names), the rank layout, the global batch and the number of optimizer steps. Before
the data is prepared, a plan passes ``data=None``: GPT-2's vocabulary is assumed and the data's
size is not checked (``hpml plan`` says so).
"""

from __future__ import annotations

from dataclasses import dataclass

from hpml_core.contract.config import ZERO_STAGES, TrainConfig
from hpml_core.contract.data_meta import DataMeta
from hpml_core.contract.errors import UsageError
from hpml_core.contract.layout import Layout
from hpml_core.contract.models import GPT2_VOCAB, ModelDims, model_dims


@dataclass(frozen=True)
class Resolved:
    config: TrainConfig  # zero_stage filled in for the DeepSpeed modes
    dims: ModelDims
    layout: Layout
    global_batch: int
    total_steps: int | None  # None: one epoch of data whose size is not known yet


def resolve_steps(config: TrainConfig, global_batch: int, steps_per_epoch: int | None) -> int | None:
    """Optimizer steps of the run: --steps, else one epoch (None while the data size is unknown),
    capped so that at most --max-samples samples are seen."""
    steps = config.steps or steps_per_epoch
    if config.max_samples is not None:
        steps = min(steps or config.max_samples, config.max_samples // global_batch)
        if steps <= config.warmup_steps:
            raise UsageError("--max-samples", f"{config.max_samples} samples make {steps} steps of "
                             f"{global_batch}, not more than the {config.warmup_steps} warm-up steps")
    return steps


def resolve(config: TrainConfig, world_size: int, ranks_per_node: int, data: DataMeta | None) -> Resolved:
    """The run as it will train on ``world_size`` ranks, or a ``UsageError`` naming the flag."""
    if data is not None and config.vocab_size is not None and config.vocab_size < data.vocab_size:
        raise UsageError("--vocab-size", f"{config.vocab_size} is smaller than the {data.vocab_size} tokens of "
                                         f"{data.path}'s tokenizer")
    dims = model_dims(config.model, config.vocab_size or (data.vocab_size if data else GPT2_VOCAB))
    if config.seq_len > dims.n_positions:
        raise UsageError("--seq-len", f"{config.seq_len} exceeds the {dims.n_positions} positions of {config.model}")
    layout = Layout.check(config.mode, config.tp_size, world_size, ranks_per_node, config.model, dims.n_head,
                          dims.vocab_size)
    stage = ZERO_STAGES.get(config.mode)
    if config.zero_stage is not None and stage is None:
        raise UsageError("--zero-stage", f"ZeRO needs --mode zero1, zero2 or zero3; --mode {config.mode} is "
                         f"{ {'ddp': 'DDP', 'fsdp2': 'FSDP2'}.get(config.mode, 'one process')}")
    if config.zero_stage is not None and config.zero_stage != stage:
        raise UsageError("--zero-stage", f"{config.zero_stage} contradicts --mode {config.mode} (stage {stage}); "
                         f"the mode names the stage: drop --zero-stage or use --mode zero{config.zero_stage}")
    if not config.fsdp_reshard_after_forward and config.mode != "fsdp2":
        raise UsageError("--fsdp-reshard-after-forward", f"false is an FSDP2 setting; --mode {config.mode} "
                                                         "does not shard with FSDP2")
    check_fp8(config, dims)
    if config.steps is not None and config.steps <= config.warmup_steps:
        raise UsageError("--steps", f"{config.steps} leaves no timed step after {config.warmup_steps} warm-up steps")
    if stage is not None and config.zero_stage is None:
        config = config.model_copy(update={"zero_stage": stage})
    global_batch = layout.global_batch(config.batch_size, config.grad_accum)
    steps_per_epoch = None
    if data is not None:
        samples = data.num_samples(config.seq_len)
        steps_per_epoch = samples // global_batch
        if steps_per_epoch == 0:
            raise UsageError("--batch-size", f"the global batch {global_batch} exceeds the {samples} samples of "
                             f"{data.path} at --seq-len {config.seq_len}")
    total_steps = resolve_steps(config, global_batch, steps_per_epoch)
    if config.steps is None and total_steps is not None and total_steps <= config.warmup_steps:
        raise UsageError("--warmup-steps", f"one epoch of {data.path} is {total_steps} steps of {global_batch}, "
                         f"not more than the {config.warmup_steps} warm-up steps (set --steps)")
    return Resolved(config, dims, layout, global_batch, total_steps)


FP8_MODES = ("single", "ddp", "fsdp2")


def check_fp8(config: TrainConfig, dims: ModelDims) -> None:
    """FP8 products where hpml can run them: inside bf16 autocast (torchao's float8 layers return
    the autocast dtype), on the PyTorch and FSDP2 paths (DeepSpeed casts the model itself, its
    ZeRO has no float8 layers), without hpml's own tensor-parallel layers (not float8 layers)."""
    if not config.fp8:
        return
    if config.precision != "bf16":
        raise UsageError("--fp8", f"needs --precision bf16 (the FP8 products run inside bf16 autocast), "
                                  f"not {config.precision}")
    if config.mode not in FP8_MODES:
        raise UsageError("--fp8", f"runs with --mode {', '.join(FP8_MODES)}; --mode {config.mode} is DeepSpeed's, "
                                  "which casts the model itself and has no float8 layers")
    if config.tp_size > 1:
        raise UsageError("--fp8", f"needs --tp-size 1 (hpml's tensor-parallel layers are not float8 layers), "
                                  f"not {config.tp_size}")
    if dims.n_embd % 16:  # torch._scaled_mm multiplies matrices whose sides are multiples of 16
        raise UsageError("--fp8", f"FP8 products need a width divisible by 16; {config.model}'s is {dims.n_embd}")
