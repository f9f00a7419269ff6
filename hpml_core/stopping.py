"""Stopping early, cleanly, when the scheduler asks: the job's time limit is near (Slurm's
``--signal=USR1@<seconds>``) or the job is being preempted or cancelled (SIGTERM).

The signal handler only raises a flag. At the next step boundary the ranks agree (one
all-reduce of a flag over a CPU group, so the GPU is not synchronised) and, if any rank was
signalled, all of them save a checkpoint at that same step and stop with exit status 4
(``EXIT_STOPPED``): the job script then requeues the job, whose ``--resume`` continues from
the checkpoint with the same data order.

The handler must be in place before anything slow happens: the default action of SIGUSR1 and
SIGTERM is to kill the process, so a signal that arrives while torch is still being imported
(seconds, on a cluster's shared file system) would otherwise end the job without a checkpoint
or a rank file. ``python -m hpml_core.train`` therefore calls ``install()`` before its own
imports, which is why this module imports nothing heavy: torch is imported in ``agreed()``,
when it is loaded already.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

_installed: StopRequest | None = None


class StopRequest:
    """Remembers that a stop signal arrived; one per process (see ``install``)."""

    def __init__(self):
        self.signal_name: str | None = None
        self._group = None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def agreed(self) -> bool:
        """Collective: True on every rank when any rank has been signalled."""
        import torch
        import torch.distributed as dist

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


def install() -> StopRequest:
    """The process's stop request, installed on the first call: later calls (``train()`` after
    the entry point installed it before the imports) get the same one, so a signal caught
    during start-up is not forgotten by a second handler."""
    global _installed
    if _installed is None:
        _installed = StopRequest()
    return _installed
