"""The run spec: one training run's configuration, validated once, here.

A run's configuration reaches the engine in one of two ways, both ending in the same
``TrainConfig``:

- ``hpml render`` and ``hpml submit`` write each run's validated spec to ``<run>/run.json``
  (``write_run_spec``) and the job starts the engine with ``--config <run>/run.json``;
- a person typing a command gives flags (``--mode ddp --batch-size 8 ...``), the seed's style.

Flags given next to ``--config`` override the file's values, and ``ConfigSource`` records
which, so a rank file tells a run that followed its spec from one that was changed by hand.
``parse_args`` raises ``UsageError`` naming the flag; past this module, code trusts the config.

Modes are named after what trains: ``single`` (one process), ``ddp`` (PyTorch DDP, all-reduce),
``zero1``, ``zero2`` and ``zero3`` (DeepSpeed's ZeRO stages: optimizer states, then gradients,
then parameters sharded over the data-parallel ranks) and ``fsdp2`` (PyTorch's
``fully_shard``, parameters sharded like ZeRO-3). The seed study's ``baseline`` and ``hybrid``
are accepted as aliases of ``ddp`` and ``zero3`` and recorded under the new names.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from hpml_core.contract.atomic import atomic_write_json
from hpml_core.contract.errors import UsageError
from hpml_core.contract.models import PRESETS

MODES = ("single", "ddp", "zero1", "zero2", "zero3", "fsdp2")
# The modes DeepSpeed trains, and the ZeRO stage each names (the run spec's zero_stage follows it).
ZERO_STAGES = {"zero1": 1, "zero2": 2, "zero3": 3}
MODE_ALIASES = {"baseline": "ddp", "hybrid": "zero3"}
RUN_SPEC_FILE = "run.json"
RUN_SPEC_VERSION = 1


def _canonical_mode(value: Any) -> Any:
    return MODE_ALIASES.get(value, value)


Mode = Annotated[Literal[MODES], BeforeValidator(_canonical_mode)]  # type: ignore[valid-type]
Precision = Literal["fp32", "fp16", "bf16"]

# What --test means: the tiny model on a short sequence for a few steps. A flag the user
# gives explicitly always wins over these.
TEST_DEFAULTS = dict(model="tiny", seq_len=64, steps=8, warmup_steps=2, max_samples=512, zero_persistence_threshold=0)


class TrainConfig(BaseModel):
    """One training run, fully resolved. Recorded verbatim in every rank file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = Field("single", description="single, ddp, zero1, zero2, zero3 or fsdp2 (aliases: baseline = ddp, "
                                             "hybrid = zero3)")
    model: Literal[tuple(PRESETS)] = "gpt2-large"  # type: ignore[valid-type]
    tp_size: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1, description="samples per data-parallel rank per micro-step")
    grad_accum: int = Field(1, ge=1, description="micro-steps accumulated per optimizer step")
    seq_len: int = Field(1024, ge=2)
    vocab_size: int | None = Field(
        None, ge=1, description="the model's vocabulary before padding (default: the prepared data's); larger than "
                                "the data's gives GPT-2's 50257 over data tokenized with a smaller vocabulary")
    steps: int | None = Field(None, ge=1, description="optimizer steps, warm-up included")
    warmup_steps: int = Field(5, ge=0, description="first steps of this process, not timed")
    max_samples: int | None = Field(None, ge=1)
    precision: Precision = "bf16"
    grad_ckpt: bool = False
    attn: Literal["sdpa", "eager"] = "sdpa"
    compile: bool = False
    fp8: bool = Field(False, description="the blocks' linear layers multiply in FP8 (torchao's float8 training: e4m3 "
                                         "inputs and weights, e5m2 gradients, one dynamic scale per tensor); needs "
                                         "bf16, mode single, ddp or fsdp2, no TP, and a GPU of compute capability "
                                         "8.9 or above (a CPU runs it through PyTorch's own FP8 product)")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="max global gradient norm; 0 turns clipping off")
    seed: int = 1337
    data: Path
    out: Path | None = None
    run_id: str | None = None
    profile_steps: int = Field(2, ge=0, description="optimizer steps profiled after the last timed one (where the "
                                                    "step's time goes, and a trace); 0 turns the window off")
    checkpoint_every: int = Field(0, ge=0)
    keep_checkpoints: int = Field(2, ge=1, description="the newest checkpoints kept: a resume whose newest is "
                                                       "damaged falls back to the one before")
    checkpoint_dir: Path | None = None
    resume: bool = False
    save_model: bool = False
    zero_stage: Literal[1, 2, 3] | None = Field(None, description="the ZeRO stage, which the mode names (zero1: 1 "
                                                                  "...); filled in for the DeepSpeed modes")
    fsdp_reshard_after_forward: bool = Field(
        True, description="fsdp2: free each block's gathered parameters after its forward and gather them again "
                          "for the backward (ZeRO-3's way); false keeps them to the backward (ZeRO-2's memory)")
    zero_persistence_threshold: int = Field(100_000, ge=0, description="stage3_param_persistence_threshold")
    dist_backend: Literal["nccl", "gloo"] | None = Field(
        None, description="collectives: NCCL between GPUs, gloo on CPUs (the default); gloo also lets several "
                          "ranks share one GPU, which NCCL refuses")
    test: bool = False

    def backend_on(self, device_type: str) -> Literal["nccl", "gloo"]:
        """The collectives' backend of a rank on ``device_type``: ``dist_backend`` when given, else NCCL
        on a GPU and gloo on a CPU."""
        return self.dist_backend or ("nccl" if device_type == "cuda" else "gloo")


class ConfigSource(BaseModel):
    """Where a run's configuration came from: its run.json, and the flags that overrode it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str | None = Field(description="the run spec given with --config; null when only flags were given")
    overrides: list[str] = Field(description="flags given next to --config, which won over the file")


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def field_of(flag_name: str) -> str:
    """The config field a flag sets: ``--tp-size`` is ``tp_size``."""
    return flag_name.removeprefix("--").replace("-", "_")


def first_error(exc: ValidationError) -> tuple[str, str]:
    """(field, message) of the first thing pydantic refused, worded the same everywhere."""
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "config"
    return field, f"{first['msg']} (got {first.get('input')!r})"


def _yes_no(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the flag (and exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError("hpml train", message)


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="python -m hpml_core.train",
        description="Train GPT-2 on a prepared token file and write one JSON result file per rank.",
    )
    p.add_argument("--config", type=Path, help=f"a run spec ({RUN_SPEC_FILE}, written by hpml render/submit); "
                                               "flags given with it override its values")
    # Choices are left to TrainConfig, so a wrong value is refused in the same words as a run
    # spec's or an experiment file's (hpml plan); the metavar shows what is allowed.
    p.add_argument("--mode", metavar="{" + ",".join(MODES) + "}",
                   help="single process, ddp (PyTorch DDP), zero1/zero2/zero3 (DeepSpeed ZeRO) or fsdp2 (PyTorch "
                        "fully_shard); baseline and hybrid are the seed study's names for ddp and zero3")
    p.add_argument("--model", metavar="{" + ",".join(PRESETS) + "}")
    p.add_argument("--tp-size", type=int, help="tensor-parallel ranks per model replica")
    p.add_argument("--batch-size", type=int, help="samples per data-parallel rank per micro-step")
    p.add_argument("--grad-accum", type=int, help="micro-steps accumulated per optimizer step; global batch = batch x DP x this (1)")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--vocab-size", type=int, help="the model's vocabulary, at least the data's (default: the data's)")
    p.add_argument("--steps", type=int, help="optimizer steps including warm-up (default: as many as --max-samples allows, else one epoch)")
    p.add_argument("--warmup-steps", type=int, help="first steps of this process that are run but not timed")
    p.add_argument("--max-samples", type=int, help="cap on the samples seen, over all ranks")
    p.add_argument("--precision", metavar="{fp32,fp16,bf16}", help="fp16 uses loss scaling")
    p.add_argument("--grad-ckpt", action="store_true", default=None, help="activation checkpointing of every block")
    p.add_argument("--attn", metavar="{sdpa,eager}")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile each block, and the loss without TP (ZeRO: DeepSpeed's engine.compile())")
    p.add_argument("--fp8", action="store_true", default=None,
                   help="FP8 matrix products in the blocks' linear layers (torchao float8; with --precision bf16)")
    p.add_argument("--optimizer", metavar="{adamw,sgd}")
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--data", type=Path, help="folder written by `hpml data prepare`")
    p.add_argument("--out", type=Path, help="run folder for rank files (default results/runs/<run id>)")
    p.add_argument("--run-id", help="default: the --out folder's name, else made from the config and time")
    p.add_argument("--profile-steps", type=int,
                   help="steps profiled after the timed ones, outside them: parts of the step and a trace (2; 0: off)")
    p.add_argument("--checkpoint-every", type=int, help="save a checkpoint every N steps (0: never)")
    p.add_argument("--keep-checkpoints", type=int,
                   help="checkpoints kept, newest first (2): a damaged newest one falls back to the one before")
    p.add_argument("--checkpoint-dir", type=Path, help="default <out>/checkpoints")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the newest usable checkpoint if there is one")
    p.add_argument("--save-model", action="store_true", default=None,
                   help="write the trained weights, gathered whole, to <out>/model.pt")
    p.add_argument("--zero-stage", type=int, help="the ZeRO stage, which --mode already names (zero1: 1, zero2: 2, "
                                                  "zero3: 3); kept for run specs that state it")
    p.add_argument("--fsdp-reshard-after-forward", type=_yes_no, metavar="{true,false}",
                   help="fsdp2: gather each block's parameters again for the backward (true, the default) or keep "
                        "them from the forward (false)")
    p.add_argument("--zero-persistence-threshold", type=int,
                   help="ZeRO-3 keeps parameters smaller than this whole on every rank (DeepSpeed's 100000; 0 with --test)")
    p.add_argument("--dist-backend", metavar="{nccl,gloo}",
                   help="collectives backend (default: nccl on GPUs, gloo on CPUs); gloo lets ranks share one GPU")
    p.add_argument("--test", action="store_true", default=None, help="tiny model, short sequences, a few steps")
    # The deepspeed launcher appends --local_rank=N; the rank is read from the environment instead.
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    return p


def make_config(values: dict[str, Any]) -> TrainConfig:
    """A ``TrainConfig`` from field values, or a ``UsageError`` naming the flag of the first bad one."""
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        field, message = first_error(exc)
        raise UsageError(flag(field), message) from None


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, ConfigSource]:
    given = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    given.pop("local_rank", None)
    spec_file = given.pop("config", None)
    if spec_file and given.get("test"):
        raise UsageError("--test", "cannot be combined with --config: the run spec already holds every setting")
    base = read_run_spec(spec_file) if spec_file else {}
    values = {**base, **given}
    if "data" not in values:
        raise UsageError("--data", "required: a folder made by `hpml data prepare` (see docs/cluster.md#data)")
    if values.get("test"):
        values = {**TEST_DEFAULTS, **values}
    source = ConfigSource(file=str(spec_file) if spec_file else None,
                          overrides=[flag(name) for name in given] if spec_file else [])
    return make_config(values), source


def write_run_spec(path: Path, config: TrainConfig) -> None:
    """``<run>/run.json``: every field of the validated config, defaults included, so the job
    runs exactly what was planned even if a later hpml changes a default."""
    atomic_write_json(path, {"run_spec_version": RUN_SPEC_VERSION, "config": config.model_dump(mode="json")})


def read_run_spec(path: Path) -> dict[str, Any]:
    """The config fields of a run spec, validated; a ``UsageError`` on ``--config`` otherwise."""
    try:
        document = json.loads(Path(path).read_text())
        if document.get("run_spec_version") != RUN_SPEC_VERSION:
            raise ValueError(f"run_spec_version is {document.get('run_spec_version')!r}, expected {RUN_SPEC_VERSION}")
        config = TrainConfig.model_validate(document["config"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = first_error(exc) if isinstance(exc, ValidationError) else None
        detail = f"{reason[0]}: {reason[1]}" if reason else f"{type(exc).__name__}: {exc}"
        raise UsageError("--config", f"{path} is not a readable run spec ({detail})") from None
    return config.model_dump(exclude_unset=False)
