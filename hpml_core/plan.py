"""The run this process is part of, decided before any process group exists: the engine's
side of ``hpml plan``. Every bad input is refused here, with one line naming the flag and exit
status 2: the contract's checks (the same ``hpml plan`` makes), then what only the job can know
(a GPU for NCCL, a checkpoint it can continue). Past this point the engine trusts the ``Plan``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hpml_core import checkpoint, fp8, launch, resuming
from hpml_core.batches import TokenBatches, TokenData
from hpml_core.mesh import Position
from hpml_core.contract.checks import resolve
from hpml_core.contract.config import ZERO_STAGES, ConfigSource, TrainConfig, parse_args
from hpml_core.contract.errors import UsageError
from hpml_core.contract.layout import Layout
from hpml_core.contract.models import ModelDims


@dataclass(frozen=True)
class Plan:
    """Everything decided before training starts; validated, so the rest can trust it."""

    config: TrainConfig
    source: ConfigSource
    env: launch.ProcessEnv
    dims: ModelDims
    layout: Layout
    batches: TokenBatches
    total_steps: int
    resume_state: checkpoint.Resume | None

    @property
    def position(self) -> Position:
        """This process's (dp_rank, tp_rank) in the layout."""
        return Position(self.layout, self.env.rank)


def make_plan(argv: list[str] | None, env: launch.ProcessEnv) -> Plan:
    """The run this process is part of, or a ``UsageError``. Raises ``resuming.AlreadyCompleted``
    when a ``--resume`` finds nothing left to train."""
    config, source = parse_args(argv)
    data = TokenData.open(config.data)
    run = resolve(config, env.world_size, env.local_world_size, data.meta)
    config, layout = run.config, run.layout
    if config.dist_backend == "nccl" and not torch.cuda.is_available():
        raise UsageError("--dist-backend", "nccl needs GPUs, and this machine has none (allowed here: gloo)")
    if config.precision == "fp16" and config.mode in ZERO_STAGES and not torch.cuda.is_available():
        raise UsageError("--precision", f"fp16 under DeepSpeed (--mode {config.mode}) needs a GPU: DeepSpeed's CPU "
                                        "accelerator has no fp16 (allowed here: fp32, bf16)")
    if config.fp8:  # a GPU without FP8 tensor cores, or no torchao
        fp8.check_device(launch.select_device(env))
    position = Position(layout, env.rank)
    batches = TokenBatches(data, config.seq_len, config.batch_size, layout, position.dp_rank, config.seed,
                           config.grad_accum)
    resume_state = None
    if config.resume:
        resume_state = resuming.resume_point(config, run.total_steps, position, data.meta)
    return Plan(config, source, env, run.dims, layout, batches, run.total_steps, resume_state)
