"""Who am I in this launch? Rank, world size and rendezvous address from the launcher.

The engine runs alone, under torchrun, under the deepspeed launcher or the local site's
(``hpml_core.local_ranks``), or as one srun task per GPU. The launchers export
RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; srun exports SLURM_* instead, from which the
same values are derived. Nothing here touches torch.distributed, so a bad layout can be refused
before any process group exists.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessEnv:
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    # "none", "torchrun", "env" (hpml_core.local_ranks, deepspeed's and other RANK/WORLD_SIZE
    # launchers) or "srun"
    launcher: str
    local_world_size: int = 1  # processes on this node


def first_host(nodelist: str) -> str:
    """First host of a Slurm node list such as ``gpu[012-015,020],cpu1`` (here: ``gpu012``)."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot read Slurm node list {nodelist!r}")
    prefix, ranges = m.groups()
    return prefix + (ranges.split(",")[0].split("-")[0] if ranges else "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def detect(environ: Mapping[str, str] = os.environ) -> ProcessEnv:
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return ProcessEnv(
            rank=int(environ["RANK"]),
            local_rank=int(environ.get("LOCAL_RANK", 0)),
            world_size=int(environ["WORLD_SIZE"]),
            master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(environ.get("MASTER_PORT", 29500)),
            launcher="torchrun" if "TORCHELASTIC_RUN_ID" in environ else "env",
            local_world_size=int(environ.get("LOCAL_WORLD_SIZE", environ["WORLD_SIZE"])),
        )
    # srun sets SLURM_STEP_NUM_TASKS for the tasks of a job step; a batch script alone does
    # not, so `python -m hpml_core.train` typed inside an allocation stays a single process.
    if "SLURM_STEP_NUM_TASKS" in environ and "SLURM_PROCID" in environ:
        nodelist = environ.get("SLURM_STEP_NODELIST") or environ["SLURM_JOB_NODELIST"]
        job_id = int(environ.get("SLURM_JOB_ID", 0))
        return ProcessEnv(
            rank=int(environ["SLURM_PROCID"]),
            local_rank=int(environ.get("SLURM_LOCALID", 0)),
            world_size=int(environ["SLURM_STEP_NUM_TASKS"]),
            master_addr=environ.get("MASTER_ADDR") or first_host(nodelist),
            # A port derived from the job id, so concurrent jobs on one node do not collide.
            master_port=int(environ.get("MASTER_PORT") or 20000 + job_id % 20000),
            launcher="srun",
            # e.g. "4" or "4(x2)": tasks on each node of the step
            local_world_size=int(re.match(r"\d+", environ.get("SLURM_STEP_TASKS_PER_NODE", "1")).group()),
        )
    return ProcessEnv(0, 0, 1, "127.0.0.1", _free_port(), "none", 1)


def select_device(env: ProcessEnv) -> torch.device:
    """The GPU of this local rank; when a launcher gives each task one visible GPU (srun
    --gpus-per-task=1), that GPU whatever the local rank."""
    if torch.cuda.is_available():
        index = env.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def init_process_group(env: ProcessEnv, device: torch.device, backend: str) -> None:
    """``backend`` (``TrainConfig.backend_on``) through env://, so torchrun's own store is reused.

    DeepSpeed picks its GPU by ``LOCAL_RANK`` alone, so on a GPU that variable is set to the
    device's index: where ranks share a GPU, or each task sees only its own, the rank's place
    on the node is not a device DeepSpeed could open ("invalid device ordinal")."""
    os.environ.update(
        RANK=str(env.rank), WORLD_SIZE=str(env.world_size),
        LOCAL_RANK=str(device.index if device.type == "cuda" else env.local_rank),
        MASTER_ADDR=env.master_addr, MASTER_PORT=str(env.master_port),
    )
    dist.init_process_group(backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                            device_id=device if backend == "nccl" else None)
