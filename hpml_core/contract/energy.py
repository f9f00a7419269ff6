"""Energy per token: what a run's GPUs drew to train each token of its timed steps.

A layout that is 10 % faster but keeps four GPUs busier, or a larger batch that raises the
power draw, is judged by joules per token as much as by tokens/s. Each rank reads its own GPU's
cumulative energy counter (NVML's ``nvmlDeviceGetTotalEnergyConsumption``: millijoules since the
driver loaded, for the whole device) at the start of its first timed step and at the end of its
last, each after a device synchronise (``hpml_core.energy``). The span is the timed steps' wall
clock, so it also holds what ran between them (progress lines; a checkpoint when
``--checkpoint-every`` falls inside) and the device's idle draw, which the run paid for too.

A run's joules per token = the energy of each GPU it ran on, counted once, over the tokens the
run trained in those steps (global batch × sequence × timed steps, each token once as in
``hpml_core.contract.metrics``). Ranks that share a GPU read the same counter over nearly the
same span: their mean counts once. A device without such a counter (a CPU, a GPU older than
Volta, NVML missing) has no figure, and the rank file says why; no figure is ever estimated
from a nominal power.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

SOURCE = ("NVML nvmlDeviceGetTotalEnergyConsumption (the whole GPU's counter), read after a device synchronise at "
          "the start of the first timed step and the end of the last")


class Energy(BaseModel):
    """One rank's reading of its GPU's energy over the timed steps, and the run's figure."""

    model_config = ConfigDict(extra="forbid")

    source: str = SOURCE
    device: str = Field(description="the GPU's PCI bus id: ranks with the same one shared a GPU and its counter")
    joules: float = Field(ge=0, description="the GPU's energy over the span (all its work, not only this rank's)")
    span_s: float = Field(gt=0, description="wall seconds from the first timed step's start to the last's end")
    timed_steps: int = Field(ge=1)
    run_tokens: int = Field(ge=1, description="the tokens the whole run trained in those steps, each once")
    mean_power_w: float = Field(description="joules / span_s")
    run_joules_per_token: float | None = Field(description="every GPU of the run counted once, over run_tokens "
                                               "(null when a rank had no reading)")


def run_joules_per_token(readings: Iterable[tuple[str, float] | None], run_tokens: int) -> float | None:
    """The run's joules per token from every rank's (device, joules); None if any rank has none."""
    per_device: dict[str, list[float]] = {}
    for reading in readings:
        if reading is None:
            return None
        device, joules = reading
        per_device.setdefault(device, []).append(joules)
    if not per_device or run_tokens <= 0:
        return None
    return sum(statistics.fmean(values) for values in per_device.values()) / run_tokens
