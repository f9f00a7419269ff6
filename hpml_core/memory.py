"""Peak memory of this process: the CUDA caching allocator's high-water marks on a GPU, and the
process's peak resident set size (from getrusage), which is all a CPU run has."""

from __future__ import annotations

import resource

import torch


def peak_memory(device: torch.device) -> dict[str, int | None]:
    cuda = device.type == "cuda"
    return {
        "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "cuda_max_reserved_bytes": torch.cuda.max_memory_reserved(device) if cuda else None,
        "cpu_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
    }
