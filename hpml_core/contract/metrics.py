"""The throughput figures every layer reports, defined once: tokens/s, achieved TFLOP/s per
device and MFU, with the model FLOPs per token and the peak they rest on. The engine's rank
files, the report and the bench all call these functions, so a figure means the same wherever
it is printed.

Tokens are counted once per optimizer step: the global batch's tokens (B × DP × G × T), not
B × world × T, so tensor-parallel ranks sharing a batch do not count it twice (torchtitan's
rule). A run's figure divides them by the slowest rank's median step time.

MFU (model FLOPs utilisation) = achieved model FLOP/s per device ÷ the device's dense peak for
the precision used. Model FLOPs are the PaLM paper's (Chowdhery et al. 2022, appendix B):
6N + 12·L·H·Q·T per token for one forward and backward pass, where N counts the weights that
multiply activations (``ModelDims.params_matmul``), L the layers, H the heads, Q the head size
and T the sequence length. Recomputation from activation checkpointing is not model FLOPs, so
MFU does not reward it. ``tests/test_flops.py`` checks the formula against PyTorch's own
FLOP counter.

A peak is only ever looked up, never guessed, in the one table of known GPUs
(``hpml_core.contract.gpus``): a CPU, or a GPU missing there, gives MFU ``None`` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpml_core.contract.gpus import by_device_name
from hpml_core.contract.models import ModelDims

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
class PeakLookup:
    tflops: float | None
    source: str | None  # which table row and column was used
    missing_reason: str | None


def lookup_peak(device_type: str, device_name: str, precision: str, fp8: bool = False) -> PeakLookup:
    """The peak MFU divides by. With ``--fp8`` it is the FP8 peak, though only the blocks' linear
    layers multiply in FP8 (the LM head and attention in bf16): such a run's MFU is against the
    fastest its products could run, and its tokens/s is the figure to compare with a bf16 run."""
    if device_type != "cuda":
        return PeakLookup(None, None, f"device is {device_type} ({device_name}): MFU is only defined against a GPU's peak")
    gpu = by_device_name(device_name)
    if gpu is None:
        return PeakLookup(None, None, f"no peak on record for GPU {device_name!r}; add it to hpml_core.contract.gpus.GPUS")
    if fp8:
        if gpu.tensor_fp8_tflops is None:
            return PeakLookup(None, None, f"the {gpu.label} has no FP8 tensor cores")
        return PeakLookup(gpu.tensor_fp8_tflops, f"{gpu.datasheet} dense FP8 tensor core (the blocks' linear layers "
                                                 "in FP8, the LM head and attention in bf16)", None)
    if precision == "fp32":
        return PeakLookup(gpu.fp32_tflops, f"{gpu.datasheet} dense fp32 (no TF32)", None)
    return PeakLookup(gpu.tensor_16bit_tflops, f"{gpu.datasheet} dense {precision} tensor core", None)


def tokens_per_s(tokens: float, seconds: float) -> float:
    """Tokens over the time they took: a run's global batch tokens over its slowest rank's median
    step, or a rank's own share (its replica's tokens ÷ TP size) over its own median step."""
    return tokens / seconds


def achieved_tflops_per_device(flops_per_token: int, tokens_per_second: float, devices: int) -> float:
    """Model TFLOP/s each device achieves: the run's model FLOP/s (per-token FLOPs of
    ``training_flops_per_token`` × the run's tokens/s) spread over all its devices (the world
    size), whatever the layout, so recomputation and replicated work earn nothing."""
    return flops_per_token * tokens_per_second / devices / 1e12


def mfu(achieved_tflops: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved TFLOP/s per device over the device's dense peak for the
    precision used (``lookup_peak``); ``None`` where no peak is on record (a CPU, an unknown GPU)."""
    return achieved_tflops / peak_tflops if peak_tflops else None
