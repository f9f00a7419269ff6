"""``--fp8``: the blocks' linear layers multiply in FP8, through torchao's float8 training.

A pass applied from outside, like the others (``hpml_core.parallelize``): each block's QKV,
attention output, MLP up and MLP down ``nn.Linear`` becomes torchao's ``Float8Linear``, which casts
its bf16 input and its weight to e4m3 and, in the backward, the incoming gradient to e5m2, each
with one scale per tensor from its largest absolute value (torchao's default "tensorwise"
recipe, the one torchtitan trains with), and multiplies them with ``torch._scaled_mm``. The
swapped layer keeps the same ``weight`` and ``bias`` parameters, so parameter names, the
run's initial weights, checkpoints and ``--save-model`` are those of a bf16 run.

Left in bf16: the LM head (its weight is the token embedding's, tied; torchtitan leaves the output
layer unconverted too) and attention's own products (not linear layers).

torchao's layer decides whether to cast its input by CUDA's autocast state alone
(``torch.is_autocast_enabled()`` without a device), so on a CPU rank it would multiply the fp32
input and return fp32: another computation, and other memory, than a GPU rank's.
``Float8LinearOnAnyDevice`` reads the autocast state of the input's own device, so a CPU rank
computes what a GPU rank does, through PyTorch's CPU ``_scaled_mm``: that is what lets the
tests check ``--fp8`` here; its speed is the GPU's to measure.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn as nn

from hpml_core.contract.errors import UsageError
from hpml_core.model import GPT

MIN_CAPABILITY = (8, 9)  # Ada and Hopper: the first GPUs with FP8 tensor cores


def check_device(device: torch.device) -> None:
    """Refuse, before anything is written, a GPU without FP8 tensor cores or a missing torchao."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < MIN_CAPABILITY:
        major, minor = torch.cuda.get_device_capability(device)
        raise UsageError("--fp8", f"the {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) "
                                  "has no FP8 tensor cores; they need 8.9 or above (L40S, H100, H200)")
    _float8()


def _float8():
    """torchao's float8 module. Its package loads CUDA kernels this path does not use (MX formats,
    CUTLASS) and logs a warning where they do not load (a CPU build): its logger is kept to errors.
    torch logs a deprecation notice when torchao registers one of its enums: silenced for the import."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    pytree = logging.getLogger("torch.utils._pytree")
    level = pytree.level
    pytree.setLevel(logging.ERROR)
    try:
        import torchao.float8
    except ImportError as exc:
        raise UsageError("--fp8", f"needs torchao, which did not import ({exc}); pip install 'hpml[engine]'") from None
    finally:
        pytree.setLevel(level)
    return torchao.float8


@functools.cache
def float8_linear_class() -> type[nn.Linear]:
    from torchao.float8.float8_linear import Float8Linear

    class Float8LinearOnAnyDevice(Float8Linear):
        """torchao's layer, casting its input to the autocast dtype of the input's own device."""

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            device_type = input.device.type
            if device_type != "cuda" and torch.is_autocast_enabled(device_type):
                input = input.to(torch.get_autocast_dtype(device_type))
            return super().forward(input)

    return Float8LinearOnAnyDevice


def apply_fp8(model: GPT) -> None:
    """Swap every block's linear layers for float8 ones, in place (on the meta device or not)."""
    config = _float8().Float8LinearConfig()  # tensorwise dynamic scaling
    layer = float8_linear_class()
    for block in model.blocks:
        for parent in (block.attn, block.mlp):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, layer.from_float(child, config=config))
