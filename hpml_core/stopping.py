"""Stopping early, cleanly, when the scheduler asks: the job's time limit is near (Slurm's
``--signal=USR1@<seconds>``) or the job is being preempted or cancelled (SIGTERM).

The signal handler only raises a flag. At the next step boundary the ranks agree (one
all-reduce of a flag over a CPU group, so the GPU is not synchronised) and, if any rank was
signalled, all of them save a checkpoint at that same step and stop with exit status 4
(``EXIT_STOPPED``): the job script then requeues the job, whose ``--resume`` continues from
the checkpoint with the same data order.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """Install it first thing, so that a signal during start-up is not fatal either."""

    def __init__(self):
        self.signal_name: str | None = None
        self._group = None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def agreed(self) -> bool:
        """Collective: True on every rank when any rank has been signalled."""
        if not dist.is_initialized():
            return self.signal_name is not None
        if self._group is None:  # made at the first step boundary, at the same point on every rank
            # gloo on the CPU: agreeing on the flag never waits for the GPU's queue to drain
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        flag = torch.tensor([1 if self.signal_name else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        if flag.item() and self.signal_name is None:
            self.signal_name = "another rank's stop signal"
        return bool(flag.item())
