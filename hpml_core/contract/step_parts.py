"""Where a step's time goes: the parts of a profiled step, in one vocabulary for the engine that
measures them (``hpml_core.profile_window``), the planner that predicts them
(``hpml_core.contract.step_time``) and the report that sets the two side by side.

A profiled step's wall time is cut into parts that do not overlap, so they add up to the step:

- ``data``: fetching the step's micro-batches; ``forward``, ``backward``: the model's passes and
  the loss; ``recompute``: activation checkpointing's second forward of each block, inside the
  backward; ``optimizer``: unscaling, clipping, the update and zeroing the gradients;
- one part per collective kind (``all-reduce``, ``all-gather``, ``reduce-scatter``,
  ``broadcast``): the *exposed* communication of that kind, the time a collective was in flight
  while the rank computed nothing, so it waited;
- ``other``: what is left: the loop's own host overhead, and idle time with nothing in flight.

Communication that ran while the rank computed is *hidden*: recorded (``comm_hidden_s``), but not
a part, as it cost the step nothing. How "computing" and "in flight" are measured differs by
device (CPU: the main thread's operators and gloo's worker threads; GPU: compute and NCCL
kernels on the device's timeline); each profile says which in ``how``.

A collective's ``bytes`` is the size of its whole buffer: the tensor an all-reduce or a
broadcast reduces or sends, an all-gather's gathered output, a reduce-scatter's input. A ring
collective of n ranks sends 2(n−1)/n (all-reduce) or (n−1)/n (the others) of it per rank.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

COLLECTIVE_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "broadcast")
COMPUTE_PARTS = ("data", "forward", "backward", "recompute", "optimizer")
PARTS = COMPUTE_PARTS + COLLECTIVE_KINDS + ("other",)
# Ranges the engine opens around a step's pieces (torch.profiler.record_function names).
RANGE_PREFIX = "hpml."
STEP_RANGE = RANGE_PREFIX + "step"


def range_name(part: str) -> str:
    return RANGE_PREFIX + part


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CollectiveUse(_Strict):
    kind: str = Field(description="one of " + ", ".join(COLLECTIVE_KINDS))
    count: int = Field(description="collectives of this kind in the step")
    bytes: int = Field(description="their whole buffers' bytes, summed (element count × element size)")
    in_flight_s: float = Field(description="their time in flight, summed (may exceed the step when they overlap)")


class ProfiledStep(_Strict):
    wall_s: float
    parts_s: dict[str, float] = Field(description="seconds per part (PARTS), adding up to wall_s")
    collectives: list[CollectiveUse]
    comm_in_flight_s: float = Field(description="time at least one collective was in flight")
    comm_hidden_s: float = Field(description="of that, the time the rank computed meanwhile")


class StepProfile(_Strict):
    """The profiled window of one rank: a few optimizer steps after the timed ones."""

    steps: list[ProfiledStep]
    how: str = Field(description="what was profiled and how computing and communicating were told apart")
    overhead: float | None = Field(description="the profiled steps' median wall time over the timed steps' median, "
                                   "minus 1: what profiling cost (null when no step was timed)")
    trace_file: str | None = Field(description="the Chrome-trace file of the window, relative to the run's folder")
    trace_bytes: int | None = Field(description="its size on disk, compressed")

    def median_parts(self) -> dict[str, float]:
        """Seconds per part of the median step (by wall time), so the parts still add up."""
        ordered = sorted(self.steps, key=lambda s: s.wall_s)
        return dict(ordered[(len(ordered) - 1) // 2].parts_s) if ordered else {}

    def collectives_per_step(self) -> dict[str, CollectiveUse]:
        """The first profiled step's collectives by kind (every step of a run issues the same)."""
        return {c.kind: c for c in self.steps[0].collectives} if self.steps else {}
