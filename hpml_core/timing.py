"""Step times that do not stall the GPU.

On CUDA, each timed step records a start and an end event on the current stream and the
host carries on; all events are read once, after the last step, with a single synchronise.
On the CPU the work is synchronous, so the wall clock at the same two points is the step
time. Either way a step's time runs from fetching its batch to the end of its optimizer
update; what happens between steps (checkpoints, progress lines) is left out. The only
host-device synchronisation inside a step is fp16's: the loss scaler must read whether the
gradients overflowed before it can decide to skip the update.
"""

from __future__ import annotations

import time

import torch

DESCRIPTION = "one optimizer step: batch fetch, forward, backward, gradient sync, clip, update ({clock})"


class StepTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._pairs: list[tuple] = []
        self._start = None

    @property
    def description(self) -> str:
        return DESCRIPTION.format(clock="CUDA events" if self.cuda else "wall clock, time.perf_counter")

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> None:
        self._pairs.append((self._start, self._now()))

    @property
    def timed_steps(self) -> int:
        return len(self._pairs)

    def step_times_s(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [start.elapsed_time(end) / 1000.0 for start, end in self._pairs]
        return [end - start for start, end in self._pairs]
