"""DeepSpeed's ZeRO (stages 1, 2 and 3: ``--mode zero1|zero2|zero3``): the configuration, generated from the run's config and written next
to the attempt's rank files (``<run>/attempts/<n>/deepspeed_config.json``, each attempt its
own) so what DeepSpeed was told is on record, and the engine around the plain (possibly
tensor-parallel) model.

The optimizer is torch's own AdamW (fused on CUDA) or SGD, handed to ``deepspeed.initialize``,
so no DeepSpeed op has to be compiled. Precision follows DeepSpeed's own scheme: with bf16 or
fp16 the partitioned parameters and gradients are 16-bit and the optimizer keeps fp32 master
weights (16 bytes per parameter in all, as in the ZeRO paper); fp16 adds DeepSpeed's dynamic
loss scaling. ``stage3_param_persistence_threshold`` (``--zero-persistence-threshold``) keeps
parameters under that many elements whole on every rank, saving their all-gathers: DeepSpeed's
default of 100000 suits GPT-2 Large, where that is only LayerNorms and biases, while ``--test``
sets 0 so that a tiny model is really partitioned.

Stages 1 and 2 keep every parameter whole on every rank (cast to bf16/fp16) and shard what the
optimizer holds (stage 1: the fp32 master weights and moments; stage 2: also the gradients,
reduce-scattered as the backward produces them); there is nothing to partition before
``deepspeed.initialize``, so their model is filled whole. Under ZeRO-3, no rank holds the whole
model before DeepSpeed partitions it: the model is filled part by part
(``hpml_core.materialize``) and each part is partitioned over the data-parallel group as soon as
it is filled (``partitioner``: ``deepspeed.zero.Init(module=part)``, with the very arguments
DeepSpeed uses when it partitions a whole model inside ``deepspeed.initialize``), already in the
dtype DeepSpeed trains in. ``deepspeed.initialize`` then finds every parameter partitioned and
leaves them as they are.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from hpml_core.contract import buckets
from hpml_core.contract.atomic import atomic_write, atomic_write_json
from hpml_core.contract.config import ZERO_STAGES, TrainConfig
from hpml_core.mesh import DeepSpeedMPU, Mesh

CONFIG_FILE = "deepspeed_config.json"
SHM_COMM_OP = "deepspeed_shm_comm"  # DeepSpeed's name for its CPU shared-memory all-reduce


def _zero_optimization(config: TrainConfig) -> dict:
    """The ``zero_optimization`` section: the stage the mode names, each with its overlap settings."""
    stage = ZERO_STAGES[config.mode]
    if stage == 3:
        return {
            "stage": 3,
            "stage3_param_persistence_threshold": config.zero_persistence_threshold,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": buckets.ZERO3_REDUCE_BUCKET,
            "stage3_prefetch_bucket_size": buckets.ZERO3_PREFETCH_BUCKET,
        }
    return {
        "stage": stage,
        "overlap_comm": stage == 2,  # stage 2 reduces each bucket as the backward fills it
        "contiguous_gradients": stage == 2,
        "reduce_scatter": True,
        "reduce_bucket_size": buckets.ZERO12_BUCKET,
        "allgather_bucket_size": buckets.ZERO12_BUCKET,
    }


def deepspeed_config(config: TrainConfig, mesh: Mesh) -> dict:
    grad_dtype = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}[config.precision]
    return {
        "train_micro_batch_size_per_gpu": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "train_batch_size": mesh.layout.global_batch(config.batch_size, config.grad_accum),
        "gradient_clipping": config.grad_clip,
        "bf16": {"enabled": config.precision == "bf16"},
        "fp16": {"enabled": config.precision == "fp16", "initial_scale_power": 16},
        "data_types": {"grad_accum_dtype": grad_dtype},
        "zero_optimization": _zero_optimization(config),
        "zero_allow_untested_optimizer": True,  # torch's AdamW: nothing to compile
        "steps_per_print": 1_000_000_000,  # hpml does its own logging
        "wall_clock_breakdown": False,
    }


def _prepare_deepspeed() -> None:
    """What hpml settles before DeepSpeed's first call.

    DeepSpeed's collectives use names PyTorch has deprecated; one warning per call would drown
    the log. And on a CPU, DeepSpeed's communication layer compiles its shared-memory all-reduce
    (a C++ extension: 26 s and 51 CPU-seconds more for a ZeRO-3 launch on 4 ranks of a 2-core
    machine, once per venv) as it starts, though only its inference all-reduce
    (``deepspeed.comm.inference_all_reduce``) would use it: ZeRO's collectives go through
    torch.distributed. DeepSpeed asks its table of compatible ops whether to build it, a table it
    keeps in its module so that edits persist (its own comment); marked incompatible there, the op
    is neither built nor loaded. On a GPU DeepSpeed has no such op, so nothing changes there.
    """
    import deepspeed.ops

    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False


def _mpu(mesh: Mesh) -> DeepSpeedMPU | None:
    """DeepSpeed's view of the groups when the model is tensor-parallel (else it uses the world)."""
    return DeepSpeedMPU(mesh) if mesh.tp_size > 1 else None


def partitioner(config: TrainConfig, mesh: Mesh) -> Callable[[nn.Module], None]:
    """What partitions one filled part of the model over its data-parallel group, at once."""
    import deepspeed

    _prepare_deepspeed()
    # DeepSpeed's communication layer over the process group that exists (zero.Init reads the
    # data-parallel size through it, and would take 1 before it is set up).
    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    settings, mpu = deepspeed_config(config, mesh), _mpu(mesh)

    def partition(part: nn.Module) -> None:
        deepspeed.zero.Init(module=part, data_parallel_group=mpu.get_data_parallel_group() if mpu else None,
                            config_dict_or_path=settings, mpu=mpu)

    return partition


def initialize(model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, mesh: Mesh,
               record_dir: Path):
    """DeepSpeed's engine around ``model``, whose parameters ``partitioner`` has partitioned."""
    import deepspeed

    _prepare_deepspeed()
    settings = deepspeed_config(config, mesh)
    if mesh.rank == 0:
        atomic_write_json(record_dir / CONFIG_FILE, settings)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=settings, mpu=_mpu(mesh))
    engine.checkpoint_engine = _atomic_checkpoint_engine()
    # DeepSpeed copies its zero_to_fp32 scripts into the checkpoint folder at every save, from rank 0
    # alone and without the engine above: hpml's export gathers the model itself, and a copy that
    # failed on a full disk would keep rank 0 from DeepSpeed's next barrier while the others wait.
    engine._copy_recovery_script = lambda save_path: None
    if config.compile:
        engine.compile()
    return engine


def _atomic_checkpoint_engine():
    """DeepSpeed's checkpoint engine as its torch.save one, but writing each file atomically
    (``atomic_write``: a file is whole or absent, and a full disk says so in words) and keeping its
    first failure instead of raising it in the middle of DeepSpeed's collective save, where the
    other ranks would wait at its barriers: ``DeepSpeedStepper.save_state`` raises it once
    DeepSpeed's save has returned."""
    from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine

    class AtomicCheckpointEngine(CheckpointEngine):
        def __init__(self):
            super().__init__()
            self.name, self.failure = "hpml-atomic", None

        def create(self, info) -> None:
            pass

        def save(self, state_dict, path: str) -> None:
            if self.failure is not None:
                return
            try:
                atomic_write(Path(path), lambda f: torch.save(state_dict, f))
            except Exception as exc:  # noqa: BLE001 - raised after DeepSpeed's save, on this rank
                self.failure = exc

        def load(self, path: str, map_location=None):
            return torch.load(path, map_location=map_location, weights_only=False)  # DeepSpeed's own objects

        def commit(self, info) -> bool:
            return True

    return AtomicCheckpointEngine()
