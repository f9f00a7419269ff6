"""Which samples every data-parallel rank reads at every step, from a prepared token file
(``hpml data prepare``), memory-mapped: no tokenizing and no network inside a job.

A sample is a window of ``seq_len + 1`` consecutive tokens (inputs and shifted targets);
windows do not overlap. Each epoch visits all windows in a permutation seeded by (seed,
epoch); step ``s`` takes the next global batch of windows of that order (batch × DP ranks ×
accumulation micro-steps) and, in micro-step ``m``, DP rank ``r`` reads the ``m·dp + r``-th
contiguous share. The batches are thus a pure function of (seed, step, layout): a resumed run
reads exactly what an uninterrupted one would, and a single process with the same global batch
reads the union of what the DP ranks read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.autograd.profiler import record_function

from hpml_core.contract.data_meta import TOKENS_FILE, DataMeta
from hpml_core.contract.layout import Layout
from hpml_core.contract.step_parts import range_name


@dataclass(frozen=True)
class TokenData:
    tokens: np.memmap
    meta: DataMeta

    @property
    def vocab_size(self) -> int:
        return self.meta.vocab_size

    @classmethod
    def open(cls, path: Path) -> "TokenData":
        meta = DataMeta.read(path)  # refuses a missing, unreadable or inconsistent folder
        return cls(tokens=np.memmap(path / TOKENS_FILE, dtype=meta.dtype, mode="r"), meta=meta)


class TokenBatches:
    """Deterministic, rank-sharded batches of (inputs, targets); see the module docstring."""

    def __init__(self, data: TokenData, seq_len: int, batch_size: int, layout: Layout, dp_rank: int, seed: int,
                 grad_accum: int = 1):
        self.data = data
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.global_batch = layout.global_batch(batch_size, grad_accum)
        self.dp_size = layout.dp_size
        self.dp_rank = dp_rank
        self.seed = seed
        self.num_samples = data.meta.num_samples(seq_len)
        self._epoch, self._order = -1, None

    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.num_samples, generator=gen)
        return self._order

    def sample_ids(self, step: int, micro: int = 0) -> torch.Tensor:
        """Indices of the windows this rank reads at ``step``, accumulation micro-step ``micro``."""
        epoch, within = divmod(step, self.steps_per_epoch())
        start = within * self.global_batch + (micro * self.dp_size + self.dp_rank) * self.batch_size
        return self._epoch_order(epoch)[start:start + self.batch_size]

    def batch(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [
            np.asarray(self.data.tokens[i * self.seq_len:(i + 1) * self.seq_len + 1], dtype=np.int64)
            for i in self.sample_ids(step, micro).tolist()
        ]
        window = torch.from_numpy(np.stack(rows))
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()

    def micro_batches(self, step: int, device: torch.device):
        """The ``grad_accum`` micro-batches of ``step`` on ``device``, one at a time; on a GPU
        from pinned memory, so the copy overlaps with the work still queued."""
        for micro in range(self.grad_accum):
            with record_function(range_name("data")):  # a part of the step, when profiled
                x, y = self.batch(step, micro)
                if device.type == "cuda":
                    x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
            yield x, y
