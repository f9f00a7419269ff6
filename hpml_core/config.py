"""Training configuration: parsed from the command line and validated once, here.

``parse_args`` turns argv into a ``TrainConfig`` or raises ``UsageError`` naming the flag.
``check_layout`` validates the config against the number of processes that were launched,
before any process group exists. Past this module, code trusts the config.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpml_core.errors import UsageError
from hpml_core.model import PRESETS

Mode = Literal["single", "baseline", "hybrid"]
Precision = Literal["fp32", "fp16", "bf16"]

# What --test means: the tiny model on a short sequence for a few steps. A flag the user
# gives explicitly always wins over these.
TEST_DEFAULTS = dict(model="tiny", seq_len=64, steps=8, warmup_steps=2, max_samples=512, zero_persistence_threshold=0)


class TrainConfig(BaseModel):
    """One training run, fully resolved. Recorded verbatim in every rank file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = "single"
    model: Literal[tuple(PRESETS)] = "gpt2-large"  # type: ignore[valid-type]
    tp_size: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1, description="samples per data-parallel rank per micro-step")
    grad_accum: int = Field(1, ge=1, description="micro-steps accumulated per optimizer step")
    seq_len: int = Field(1024, ge=2)
    steps: int | None = Field(None, ge=1, description="optimizer steps, warm-up included")
    warmup_steps: int = Field(5, ge=0, description="first steps of this process, not timed")
    max_samples: int | None = Field(None, ge=1)
    precision: Precision = "bf16"
    grad_ckpt: bool = False
    attn: Literal["sdpa", "eager"] = "sdpa"
    compile: bool = False
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="max global gradient norm; 0 turns clipping off")
    seed: int = 1337
    data: Path
    out: Path | None = None
    run_id: str | None = None
    checkpoint_every: int = Field(0, ge=0)
    checkpoint_dir: Path | None = None
    resume: bool = False
    save_model: bool = False
    zero_stage: Literal[3] | None = Field(None, description="ZeRO stage under --mode hybrid (3, the default there)")
    zero_persistence_threshold: int = Field(100_000, ge=0, description="stage3_param_persistence_threshold")
    dist_backend: Literal["nccl", "gloo"] | None = Field(
        None, description="collectives: NCCL between GPUs, gloo on CPUs (the default); gloo also lets several "
                          "ranks share one GPU, which NCCL refuses")
    test: bool = False


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the flag (and exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError("hpml train", message)


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="python -m hpml_core.train",
        description="Train GPT-2 on a prepared token file and write one JSON result file per rank.",
    )
    p.add_argument("--mode", choices=["single", "baseline", "hybrid"], help="single process, DDP (baseline) or ZeRO-3 (hybrid)")
    p.add_argument("--model", choices=list(PRESETS))
    p.add_argument("--tp-size", type=int, help="tensor-parallel ranks per model replica (hybrid only)")
    p.add_argument("--batch-size", type=int, help="samples per data-parallel rank per micro-step")
    p.add_argument("--grad-accum", type=int, help="micro-steps accumulated per optimizer step; global batch = batch x DP x this (1)")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--steps", type=int, help="optimizer steps including warm-up (default: as many as --max-samples allows, else one epoch)")
    p.add_argument("--warmup-steps", type=int, help="first steps of this process that are run but not timed")
    p.add_argument("--max-samples", type=int, help="cap on the samples seen, over all ranks")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="fp16 uses loss scaling")
    p.add_argument("--grad-ckpt", action="store_true", default=None, help="activation checkpointing of every block")
    p.add_argument("--attn", choices=["sdpa", "eager"])
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--optimizer", choices=["adamw", "sgd"])
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--data", type=Path, help="folder written by `hpml data prepare`")
    p.add_argument("--out", type=Path, help="run folder for rank files (default results/runs/<run id>)")
    p.add_argument("--run-id", help="default: the --out folder's name, else made from the config and time")
    p.add_argument("--checkpoint-every", type=int, help="save a checkpoint every N steps (0: never)")
    p.add_argument("--checkpoint-dir", type=Path, help="default <out>/checkpoints")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the latest checkpoint if there is one")
    p.add_argument("--save-model", action="store_true", default=None,
                   help="write the trained weights, gathered whole, to <out>/model.pt")
    p.add_argument("--zero-stage", type=int, help="ZeRO stage of --mode hybrid (allowed: 3, the default)")
    p.add_argument("--zero-persistence-threshold", type=int,
                   help="ZeRO-3 keeps parameters smaller than this whole on every rank (DeepSpeed's 100000; 0 with --test)")
    p.add_argument("--dist-backend", choices=["nccl", "gloo"],
                   help="collectives backend (default: nccl on GPUs, gloo on CPUs); gloo lets ranks share one GPU")
    p.add_argument("--test", action="store_true", default=None, help="tiny model, short sequences, a few steps")
    # The deepspeed launcher appends --local_rank=N; the rank is read from the environment instead.
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    given = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    given.pop("local_rank", None)
    if "data" not in given:
        raise UsageError("--data", "required: a folder made by `hpml data prepare` (see README)")
    values = {**TEST_DEFAULTS, **given} if given.get("test") else given
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "config"
        raise UsageError(_flag(field), f"{first['msg']} (got {first.get('input')!r})") from None


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


def check_layout(config: TrainConfig, world_size: int, local_world_size: int, n_head: int, vocab_size: int) -> tuple[int, int]:
    """Return (dp_size, tp_size) for this launch, or raise before any process group is made."""
    tp = config.tp_size
    if world_size % tp:
        raise UsageError("--tp-size", f"{tp} does not divide the world size {world_size}")
    if local_world_size % tp:
        raise UsageError("--tp-size", f"{tp} would span nodes: it must divide the {local_world_size} processes per node")
    if n_head % tp:
        raise UsageError("--tp-size", f"{tp} does not divide the {n_head} attention heads of {config.model}")
    if vocab_size % tp:
        raise UsageError("--tp-size", f"{tp} does not divide the padded vocabulary of {vocab_size}")
    if config.mode == "single" and world_size > 1:
        raise UsageError("--mode", f"single runs one process but {world_size} were launched; use baseline or hybrid")
    if config.mode == "single" and tp > 1:
        raise UsageError("--tp-size", f"{tp} needs several processes (--mode baseline or hybrid)")
    if config.zero_stage is not None and config.mode != "hybrid":
        raise UsageError("--zero-stage", f"ZeRO needs --mode hybrid; --mode {config.mode} is "
                         f"{'DDP' if config.mode == 'baseline' else 'one process'}")
    if config.steps is not None and config.steps <= config.warmup_steps:
        raise UsageError("--steps", f"{config.steps} leaves no timed step after {config.warmup_steps} warm-up steps")
    return world_size // tp, tp
