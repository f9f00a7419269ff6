"""The GPUs hpml knows, in one table: what each is called, how much memory it has, the names
torch reports for it, and its dense peak throughput. The engine finds its GPU here by the name
torch reports (MFU's peak, ``hpml_core.contract.metrics``); a site profile names its GPU by the
table's key (``gpu_model``), and ``hpml plan`` and ``hpml submit`` judge what fits against it.

Memory is what CUDA reports as the device's total (``torch.cuda.get_device_properties(d)
.total_memory``; ``torch.cuda.OutOfMemoryError``'s "total capacity"), not the data sheet's
round figure: that is what a run's allocations compete for. It varies by a fraction of a
percent with the driver and the ECC setting, so the table holds the lowest figure observed
(the comment says where it is not a torch figure); a site that measured its own sets
``gpu_memory_gib``.

Peaks are dense (no sparsity) TFLOP/s from the vendor's data sheet, never guessed: a GPU
missing here has no peak, and its MFU is reported missing with the reason. The data sheets give
FP8 "with sparsity"; the dense figure is half of it (H100 SXM and H200 SXM: 3,958 → 1,979). The
A100 and A10 have no FP8 tensor cores.

``GpuMemory`` is what a site's jobs get (``jobs.site.Site.gpu_memory``): a GPU's label and
memory, or why the site does not say, which ``hpml_core.contract.fit`` judges runs against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpml_core.contract.units import GIB


@dataclass(frozen=True)
class Gpu:
    key: str  # how a site profile names it (gpu_model)
    label: str  # how hpml prints it: "A100 40GB"
    memory_mib: int  # total device memory as torch reports it (see the module's doc)
    patterns: tuple[str, ...]  # regular expressions matched against torch.cuda.get_device_name()
    datasheet: str  # the data sheet the peaks come from (one for parts that share them)
    tensor_16bit_tflops: float  # bf16 and fp16 on tensor cores (equal on all parts listed)
    fp32_tflops: float  # plain fp32 on CUDA cores; hpml leaves TF32 off, PyTorch's default for matmul
    memory_gb_per_s: float  # the data sheet's memory bandwidth (GB/s, 1e9 bytes): the optimizer's pace
    tensor_fp8_tflops: float | None = None  # FP8 on tensor cores (dense); None: the part has no FP8 tensor cores

    def matches(self, device_name: str) -> bool:
        return any(re.search(pattern, device_name, flags=re.IGNORECASE) for pattern in self.patterns)


# Searched in order by device name, first match wins: the specific names come before the
# general ones. Every A100 name torch reports says its size ("NVIDIA A100-SXM4-40GB", "NVIDIA
# A100 80GB PCIe"); one that did not would take the 80 GB row, whose peaks are the same.
GPUS: tuple[Gpu, ...] = (
    Gpu("a100-40gb", "A100 40GB", 40326, (r"A100.*40GB",), "NVIDIA A100", 312.0, 19.5, 1555.0),  # SXM4 40536
    Gpu("a100-80gb", "A100 80GB", 81920, (r"A100",), "NVIDIA A100", 312.0, 19.5, 2039.0),
    # memory: nvidia-smi's total
    Gpu("h100-nvl", "H100 NVL", 95830, (r"H100.*NVL",), "NVIDIA H100 NVL", 835.0, 60.0, 3900.0, 1670.0),
    Gpu("h100-pcie", "H100 PCIe", 81008, (r"H100.*PCIe",), "NVIDIA H100 PCIe", 756.0, 51.0, 2000.0, 1513.0),
    # torch's "NVIDIA H100 80GB HBM3"
    Gpu("h100-sxm", "H100 SXM", 81082, (r"H100",), "NVIDIA H100 SXM", 989.0, 67.0, 3350.0, 1979.0),
    # memory: the SXM's 141 GB
    Gpu("h200-nvl", "H200 NVL", 143156, (r"H200.*NVL",), "NVIDIA H200 NVL", 835.0, 60.0, 4800.0, 1670.0),
    Gpu("h200", "H200", 143156, (r"H200",), "NVIDIA H200 SXM", 989.0, 67.0, 4800.0, 1979.0),  # GH200's GPU included
    Gpu("l40s", "L40S", 45589, (r"L40S",), "NVIDIA L40S", 362.0, 91.6, 864.0, 733.0),
    Gpu("a10", "A10", 23028, (r"\bA10\b",), "NVIDIA A10", 125.0, 31.2, 600.0),  # nvidia-smi's total
)
BY_KEY: dict[str, Gpu] = {gpu.key: gpu for gpu in GPUS}


def by_device_name(device_name: str) -> Gpu | None:
    """The table's row for the GPU torch calls ``device_name``; None for one not in the table."""
    return next((gpu for gpu in GPUS if gpu.matches(device_name)), None)


@dataclass(frozen=True)
class GpuMemory:
    """The GPU a run's ranks get and its memory, or why there is none to judge against."""

    label: str | None  # "A100 40GB"
    total_bytes: int | None  # as torch reports it
    source: str | None  # where the figure comes from
    missing_reason: str | None = None

    @classmethod
    def unknown(cls, reason: str) -> GpuMemory:
        return cls(None, None, None, reason)

    @property
    def total_gib(self) -> float | None:
        return None if self.total_bytes is None else self.total_bytes / GIB
