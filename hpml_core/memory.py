"""Peak memory of this process: whole, and over the two phases a study tells apart.

A layout's memory figure should say what it needs to *train*. The whole process's peak also
holds the setup (building and parallelizing the model, restoring a checkpoint), which can be
larger or smaller than training, and the warm-up steps, so ``PhasePeaks`` records, besides the
whole process's high-water marks:

- setup: process start to the end of setup, the marks as they stand then;
- training: first timed step to the last step, the marks reset at the first timed step.

The marks are the CUDA caching allocator's (max_memory_allocated and max_memory_reserved,
reset by ``torch.cuda.reset_peak_memory_stats``) and, what a CPU run has, the resident set's
high-water mark, Linux's VmHWM in /proc/self/status, which writing "5" to /proc/self/clear_refs
resets. Where that reset is impossible (not Linux, or not permitted), the training phase has
no CPU figure, and the reason is recorded instead of a figure that would include the setup.
Each reset first folds the marks into the whole process's figures, so they stay whole.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

from hpml_core.contract import rank_file as rf

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def peak_memory(device: torch.device) -> dict[str, int | None]:
    """The whole process's peaks, as long as nothing has reset them (getrusage: Linux reports KiB)."""
    cuda = device.type == "cuda"
    return {
        "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "cuda_max_reserved_bytes": torch.cuda.max_memory_reserved(device) if cuda else None,
        "cpu_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def rss_high_water_mark() -> int | None:
    """VmHWM: the most resident memory this process has had since it started or since the last
    reset through /proc/self/clear_refs; None where /proc does not say."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # "VmHWM:  123456 kB"
    except OSError:
        pass
    return None


def reset_rss_high_water_mark() -> str | None:
    """Reset VmHWM to the current resident set; the reason in one phrase where it cannot be."""
    if not CLEAR_REFS.exists():
        return "no /proc/self/clear_refs (not Linux)"
    try:
        CLEAR_REFS.write_text("5")
    except OSError as exc:
        return f"/proc/self/clear_refs not writable ({exc.strerror})"
    return None


class PhasePeaks:
    """This process's memory peaks over setup and training, and whole (see the module's doc)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.setup: rf.PhasePeak | None = None
        self.training: rf.PhasePeak | None = None
        self.cpu_reset_missing_reason: str | None = None
        self._training_started = False
        self._before_resets = {"cuda_max_allocated_bytes": 0, "cuda_max_reserved_bytes": 0, "cpu_peak_rss_bytes": 0}

    def end_setup(self) -> None:
        """Model built, parallelized and restored: its marks are the setup's (they began at process start)."""
        self.setup = self._phase_peak(cpu_valid=True)
        self._reset()

    def start_training(self) -> None:
        """At the first timed step: what came before (setup, warm-up) is left out of training."""
        self._reset()
        self._training_started = True

    def end_training(self) -> None:
        """After the last step, however training ended; nothing when no step was timed."""
        if self._training_started and self.training is None:
            self.training = self._phase_peak(cpu_valid=self.cpu_reset_missing_reason is None)

    def record(self) -> rf.Memory:
        """The rank file's memory: the whole process's peaks and the phases'."""
        whole = {key: max(value, self._before_resets[key]) if value is not None else None
                 for key, value in peak_memory(self.device).items()}
        # VmHWM can read lower later than it did at a phase's end: it is the larger of the current
        # RSS and a stored mark the kernel updates only on some of the paths that shrink the
        # resident set, so a phase's reading is folded in too; the whole covers every phase.
        phases = [phase.cpu_rss_bytes or 0 for phase in (self.setup, self.training) if phase is not None]
        whole["cpu_peak_rss_bytes"] = max(whole["cpu_peak_rss_bytes"], rss_high_water_mark() or 0, *phases)
        return rf.Memory(**whole, setup=self.setup, training=self.training,
                         cpu_reset_missing_reason=self.cpu_reset_missing_reason)

    def _phase_peak(self, cpu_valid: bool) -> rf.PhasePeak:
        return rf.PhasePeak(
            cuda_max_allocated_bytes=torch.cuda.max_memory_allocated(self.device) if self.cuda else None,
            cuda_max_reserved_bytes=torch.cuda.max_memory_reserved(self.device) if self.cuda else None,
            cpu_rss_bytes=rss_high_water_mark() if cpu_valid else None,
        )

    def _reset(self) -> None:
        """Fold the marks into the whole process's figures, then start them afresh."""
        now = peak_memory(self.device)
        now["cpu_peak_rss_bytes"] = max(now["cpu_peak_rss_bytes"], rss_high_water_mark() or 0)
        for key, value in now.items():
            self._before_resets[key] = max(self._before_resets[key], value or 0)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.cpu_reset_missing_reason is None:
            self.cpu_reset_missing_reason = reset_rss_high_water_mark()
