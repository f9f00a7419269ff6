"""Dynamic loss scaling for fp16 on the PyTorch path, with the overflow decision agreed by all ranks.

fp16 has a narrow range (largest value 65504, smallest normal 6e-5), so the loss is multiplied
by a large scale before the backward pass, to keep small gradients from flushing to zero, and
the gradients are divided by it again before clipping and the update. When a scaled gradient
overflows (inf or NaN), the step is skipped and the scale halved; after ``growth_interval``
clean steps in a row, it is doubled.

Why not ``torch.amp.GradScaler``: each rank decides alone whether its gradients overflowed.
Under tensor parallelism a rank holds only its shards' gradients, so an overflow in one TP
rank's shard makes that rank skip the step while its peer applies it: the replicated
parameters (LayerNorms, row-parallel biases, position embedding) then differ between the TP
ranks, and so do their loss scales, and the run is silently no longer one model. Megatron
(``MixedPrecisionOptimizer``) and DeepSpeed all-reduce the found-inf flag with MAX before
deciding; so does this scaler, over every rank of the run (the default process group), which
covers TP and DP alike. It costs one one-element all-reduce per step, and only in fp16.

The arithmetic and the defaults are GradScaler's (initial scale 2**16, x2 after 2000 clean
steps, x0.5 on overflow), and so are the ``state_dict`` keys, so an fp16 run trains as before
wherever the ranks agreed anyway, and checkpoints written with GradScaler still resume.
bf16 and fp32 need no scaling: the scaler is then disabled and steps the optimizer as is.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

FP32_MAX = torch.finfo(torch.float32).max


def agree_on_overflow(found_inf: torch.Tensor) -> torch.Tensor:
    """Collective: 1 on every rank if the gradients overflowed on any rank (in place, MAX).

    A module-level function so that a test can replace it by a no-op and show that the
    ranks then diverge (``tests/test_mixed_precision.py``).
    """
    if dist.is_initialized():
        dist.all_reduce(found_inf, op=dist.ReduceOp.MAX)
    return found_inf


def _gradients(optimizer: torch.optim.Optimizer) -> Iterable[torch.Tensor]:
    """Every gradient the optimizer would apply (all on this rank's one device)."""
    return (p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None)


class DynamicLossScaler:
    """Scale the loss, unscale the gradients, agree on overflow, skip or step, adapt the scale.

    Used as GradScaler is: ``scale(loss).backward()``, ``unscale_(optimizer)`` (before
    clipping), ``step(optimizer)``, ``update()``.
    """

    def __init__(self, enabled: bool, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        self.enabled = enabled
        self.loss_scale = init_scale if enabled else 1.0
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.growth_tracker = 0  # clean steps in a row since the scale last changed
        self.found_inf = False  # the agreed decision of the last unscale_: the step is skipped

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.loss_scale if self.enabled else loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Collective in fp16: divide the gradients by the scale, then agree with every other
        rank whether any gradient anywhere is inf or NaN (``found_inf``)."""
        if not self.enabled:
            return
        grads = list(_gradients(optimizer))
        found_inf = torch.zeros(1, device=grads[0].device)
        inv_scale = torch.full((1,), 1.0 / self.loss_scale, device=grads[0].device)
        # The fused kernel GradScaler and Megatron use: one pass over the gradients, no host sync.
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)
        self.found_inf = bool(agree_on_overflow(found_inf).item())  # the step's one host sync

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Apply the update unless the ranks agreed the gradients overflowed; True if applied."""
        if self.found_inf:
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """Back off after an overflow; grow after ``growth_interval`` clean steps (GradScaler's rule)."""
        if not self.enabled:
            return
        if self.found_inf:
            self.loss_scale *= self.backoff_factor
            self.growth_tracker = 0
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            grown = self.loss_scale * self.growth_factor
            if grown <= FP32_MAX:  # the scale multiplies an fp32 loss
                self.loss_scale = grown
            self.growth_tracker = 0

    def state_dict(self) -> dict:
        """GradScaler's keys and types (empty when disabled), so either's checkpoint loads in the other."""
        if not self.enabled:
            return {}
        return {"scale": self.loss_scale, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "_growth_tracker": self.growth_tracker}

    def load_state_dict(self, state: dict) -> None:
        if not self.enabled:
            return
        if not state:
            raise RuntimeError("the loss scaler's saved state is empty: it was saved by a run without fp16")
        self.loss_scale = float(state["scale"])
        self.growth_factor, self.backoff_factor = float(state["growth_factor"]), float(state["backoff_factor"])
        self.growth_interval, self.growth_tracker = int(state["growth_interval"]), int(state["_growth_tracker"])
