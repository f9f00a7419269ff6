"""Model FLOPs per token, GPU peak throughput, and MFU.

MFU (model FLOPs utilisation) = achieved model FLOP/s per device ÷ the device's dense peak for
the precision used. Model FLOPs are the PaLM paper's (Chowdhery et al. 2022, appendix B):
6N + 12·L·H·Q·T per token for one forward and backward pass, where N counts the weights that
multiply activations (``ModelDims.params_matmul``), L the layers, H the heads, Q the head size
and T the sequence length. Recomputation from activation checkpointing is not model FLOPs, so
MFU does not reward it. ``tests/test_flops.py`` checks the formula against PyTorch's own
FLOP counter.

A peak is only ever looked up, never guessed: a CPU, or a GPU missing from ``PEAKS``, gives
MFU ``None`` with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpml_core.spec.models import ModelDims

FORMULA = (
    "PaLM appendix B: 6N + 12*L*H*Q*T FLOPs per token (forward+backward, model FLOPs: "
    "activation recomputation not counted); N = weights that multiply activations "
    "(linear layers and the tied LM head; no biases, LayerNorms or position embedding)"
)


def palm_flops_per_token(params_matmul: int, n_layer: int, n_head: int, head_dim: int, seq_len: int) -> int:
    return 6 * params_matmul + 12 * n_layer * n_head * head_dim * seq_len


def training_flops_per_token(dims: ModelDims, seq_len: int) -> int:
    return palm_flops_per_token(dims.params_matmul, dims.n_layer, dims.n_head, dims.head_dim, seq_len)


@dataclass(frozen=True)
class Peak:
    """Dense (no sparsity) peak TFLOP/s of one GPU, from the vendor's data sheet."""

    label: str
    pattern: str  # regular expression matched against torch.cuda.get_device_name()
    tensor_16bit: float  # bf16 and fp16 on tensor cores (equal on all parts listed)
    fp32: float  # plain fp32 on CUDA cores; hpml leaves TF32 off, PyTorch's default for matmul


# First match wins, so the specific names come before the general ones.
PEAKS: tuple[Peak, ...] = (
    Peak("NVIDIA H100 NVL", r"H100.*NVL", 835.0, 60.0),
    Peak("NVIDIA H100 PCIe", r"H100.*PCIe", 756.0, 51.0),
    Peak("NVIDIA H100 SXM", r"H100", 989.0, 67.0),
    Peak("NVIDIA H200 NVL", r"H200.*NVL", 835.0, 60.0),
    Peak("NVIDIA H200 SXM", r"H200", 989.0, 67.0),  # GH200's GPU included
    Peak("NVIDIA A100", r"A100", 312.0, 19.5),  # SXM and PCIe alike
    Peak("NVIDIA L40S", r"L40S", 362.0, 91.6),
    Peak("NVIDIA A10", r"\bA10\b", 125.0, 31.2),
)


@dataclass(frozen=True)
class PeakLookup:
    tflops: float | None
    source: str | None  # which table row and column was used
    missing_reason: str | None


def lookup_peak(device_type: str, device_name: str, precision: str) -> PeakLookup:
    if device_type != "cuda":
        return PeakLookup(None, None, f"device is {device_type} ({device_name}): MFU is only defined against a GPU's peak")
    for peak in PEAKS:
        if re.search(peak.pattern, device_name, flags=re.IGNORECASE):
            if precision == "fp32":
                return PeakLookup(peak.fp32, f"{peak.label} dense fp32 (no TF32)", None)
            return PeakLookup(peak.tensor_16bit, f"{peak.label} dense {precision} tensor core", None)
    return PeakLookup(None, None, f"no peak on record for GPU {device_name!r}; add it to hpml_core.spec.flops.PEAKS")
