"""The one place that knows the rank layout: a data-parallel × tensor-parallel grid.

Ranks are laid out row-major in a (dp, tp) grid, so tensor-parallel groups are adjacent ranks
(world 4, tp 2: TP groups [0,1] and [2,3]; DP groups [0,2] and [1,3]) and, with ranks numbered
node by node, a TP group never leaves its node as long as tp divides the ranks per node,
which ``hpml_core.config.check_layout`` enforces. The groups come from PyTorch's
``DeviceMesh``; ``DeepSpeedMPU`` hands the same groups to DeepSpeed in the ``mpu`` interface
Megatron defined, so ZeRO-3 shards over the DP group only and clips gradients knowing TP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh


@dataclass(frozen=True)
class Mesh:
    dp_size: int
    tp_size: int
    dp_rank: int
    tp_rank: int
    dp_group: dist.ProcessGroup | None  # None in a single process
    tp_group: dist.ProcessGroup | None


def grid_position(rank: int, tp_size: int) -> tuple[int, int]:
    """(dp_rank, tp_rank) of a global rank."""
    return rank // tp_size, rank % tp_size


def build_mesh(device: torch.device, world_size: int, rank: int, tp_size: int) -> Mesh:
    dp_size = world_size // tp_size
    dp_rank, tp_rank = grid_position(rank, tp_size)
    if not dist.is_initialized():
        return Mesh(1, 1, 0, 0, None, None)
    grid = init_device_mesh(device.type, (dp_size, tp_size), mesh_dim_names=("dp", "tp"))
    return Mesh(dp_size, tp_size, dp_rank, tp_rank, grid["dp"].get_group(), grid["tp"].get_group())


class DeepSpeedMPU:
    """The ``mpu`` object DeepSpeed asks for when the model is itself split (Megatron's names)."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh

    def get_model_parallel_rank(self) -> int:
        return self.mesh.tp_rank

    def get_model_parallel_world_size(self) -> int:
        return self.mesh.tp_size

    def get_model_parallel_group(self) -> dist.ProcessGroup:
        return self.mesh.tp_group

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        return dist.get_rank() - self.mesh.tp_rank  # first rank of this TP group

    def get_data_parallel_rank(self) -> int:
        return self.mesh.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.mesh.dp_size

    def get_data_parallel_group(self) -> dist.ProcessGroup:
        return self.mesh.dp_group

    def get_data_parallel_group_ranks(self) -> list[int]:
        return [dp * self.mesh.tp_size + self.mesh.tp_rank for dp in range(self.mesh.dp_size)]

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1
