"""The rank grid of one launch: ``world_size`` ranks as a data-parallel × tensor-parallel grid,
and every rule derived from it. Nothing else in hpml numbers ranks.

Ranks are laid out row-major in a (dp, tp) grid, so tensor-parallel groups are adjacent ranks
(world 4, TP 2: TP groups [0, 1] and [2, 3]; DP groups [0, 2] and [1, 3]). Launchers number
ranks node by node, so a TP group stays inside one node as long as TP divides the ranks per
node, which ``check`` requires: TP all-reduces every layer and must not cross the network.
The engine builds its process groups from ``tp_group`` and ``dp_group`` (``hpml_core.mesh``);
the data loader, DeepSpeed and the plan take the global batch from ``global_batch``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpml_core.contract.errors import UsageError


@dataclass(frozen=True)
class Layout:
    world_size: int
    tp_size: int

    @property
    def dp_size(self) -> int:
        return self.world_size // self.tp_size

    def position(self, rank: int) -> tuple[int, int]:
        """(dp_rank, tp_rank) of a global rank."""
        return divmod(rank, self.tp_size)

    def tp_group(self, dp_rank: int) -> list[int]:
        """The ranks that split one model replica between them."""
        return [dp_rank * self.tp_size + tp_rank for tp_rank in range(self.tp_size)]

    def dp_group(self, tp_rank: int) -> list[int]:
        """The ranks that hold the same shard of the model and share the data between them."""
        return [dp_rank * self.tp_size + tp_rank for dp_rank in range(self.dp_size)]

    def global_batch(self, batch_size: int, grad_accum: int) -> int:
        """Samples per optimizer step: each data-parallel rank's micro-batches; TP ranks share theirs."""
        return batch_size * self.dp_size * grad_accum

    @classmethod
    def check(cls, mode: str, tp_size: int, world_size: int, ranks_per_node: int, model: str, n_head: int,
              vocab_size: int) -> "Layout":
        """The layout of ``world_size`` ranks, ``ranks_per_node`` to a node; or the reason it cannot work."""
        tp = tp_size
        if world_size % tp:
            raise UsageError("--tp-size", f"{tp} does not divide the world size {world_size}")
        if ranks_per_node % tp:
            raise UsageError("--tp-size", f"{tp} would span nodes: it must divide the {ranks_per_node} processes per node")
        if n_head % tp:
            raise UsageError("--tp-size", f"{tp} does not divide the {n_head} attention heads of {model}")
        if vocab_size % tp:
            raise UsageError("--tp-size", f"{tp} does not divide the padded vocabulary of {vocab_size}")
        if mode == "single" and world_size > 1:
            raise UsageError("--mode", f"single runs one process but {world_size} were launched; use ddp, zero1/2/3 or fsdp2")
        if mode == "single" and tp > 1:
            raise UsageError("--tp-size", f"{tp} needs several processes (--mode ddp, zero1/2/3 or fsdp2)")
        return cls(world_size, tp)
