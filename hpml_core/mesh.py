"""Where this rank sits in the launch's DP×TP grid, and the process groups that connect it.

``Position`` is the rank's place in the contract's ``Layout`` (which alone decides which ranks
form a tensor-parallel group and which a data-parallel one): it is known before any process
group exists, so the plan, the data loader and the checkpoint reader take their dp/tp rank from
it. ``Mesh`` is the same position once the groups are built; every collective uses its groups.
``DeepSpeedMPU`` offers the same groups in the ``mpu`` interface Megatron defined, which
DeepSpeed asks for when the model is split, so ZeRO-3 shards over the DP group only and clips
gradients knowing TP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from hpml_core.contract.layout import Layout


@dataclass(frozen=True)
class Position:
    """A global rank's (dp_rank, tp_rank) in the layout: the one place the engine reads them from."""

    layout: Layout
    rank: int

    @property
    def dp_size(self) -> int:
        return self.layout.dp_size

    @property
    def tp_size(self) -> int:
        return self.layout.tp_size

    @property
    def dp_rank(self) -> int:
        return self.layout.position(self.rank)[0]

    @property
    def tp_rank(self) -> int:
        return self.layout.position(self.rank)[1]


@dataclass(frozen=True)
class Mesh(Position):
    """The rank's position with its process groups: they exist once the process group is initialized."""

    dp_group: dist.ProcessGroup | None  # None in a single process
    tp_group: dist.ProcessGroup | None


def build_mesh(layout: Layout, rank: int) -> Mesh:
    """Collective: every rank creates every group, in the same order, and keeps its own."""
    if not dist.is_initialized():
        return Mesh(layout, rank, None, None)
    tp_group = dp_group = None
    for dp_rank in range(layout.dp_size):
        group = dist.new_group(layout.tp_group(dp_rank))
        if rank in layout.tp_group(dp_rank):
            tp_group = group
    for tp_rank in range(layout.tp_size):
        group = dist.new_group(layout.dp_group(tp_rank))
        if rank in layout.dp_group(tp_rank):
            dp_group = group
    return Mesh(layout, rank, dp_group, tp_group)


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
        return self.mesh.layout.tp_group(self.mesh.dp_rank)[0]

    def get_data_parallel_rank(self) -> int:
        return self.mesh.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.mesh.dp_size

    def get_data_parallel_group(self) -> dist.ProcessGroup:
        return self.mesh.dp_group

    def get_data_parallel_group_ranks(self) -> list[int]:
        return self.mesh.layout.dp_group(self.mesh.tp_rank)

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1
