"""How each layout holds and computes in the run's precision: its *precision regime*.

"bf16" does not mean the same thing on hpml's two training paths, and a throughput or memory
difference between them is partly this difference, not the layout's:

- the PyTorch path (single, DDP, tensor parallelism, DP×TP with all-reduce) keeps fp32 weights
  and gradients and runs the forward and backward under ``torch.autocast`` (PyTorch AMP); fp16
  adds dynamic loss scaling whose overflow decision is agreed over all ranks (``hpml_core.loss_scaling``);
- DeepSpeed's ZeRO (every stage) casts the model itself to bf16/fp16, reduces 16-bit gradients,
  and keeps fp32 master weights in the optimizer; fp16 adds DeepSpeed's dynamic loss scaling;
- FSDP2 keeps the sharded parameters in fp32 (the optimizer updates them: no separate master),
  all-gathers them in bf16/fp16 for each block's forward and backward, and reduce-scatters the
  gradients in fp32 (``MixedPrecisionPolicy(param_dtype, reduce_dtype=float32)``, torchtitan's
  default); fp16 adds hpml's dynamic loss scaling, overflow agreed over all ranks.

In fp32 all are plain fp32 (ZeRO still keeps a separate fp32 master partition).

``--fp8`` (bf16, PyTorch or FSDP2 path) makes the blocks' linear layers multiply in FP8 through
torchao's float8 training: each product casts its bf16 input and its weight to e4m3 (and, in the
backward, the incoming gradient to e5m2) with one scale per tensor taken from its largest value;
the product accumulates in higher precision and returns bf16. The LM head and attention stay in
bf16, the weights stay as they were; the regime's ``fp8_linears`` says so.

The engine records the regime in every rank file; the report prints it and says where two
compared configurations differ in it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hpml_core.contract.config import ZERO_STAGES, Mode, Precision, TrainConfig


class PrecisionRegime(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    weights_dtype: Literal["fp32", "bf16", "fp16"] = Field(
        description="dtype the model's weights are held in between steps (FSDP2: its shards; gathered in matmul_dtype)")
    master_weights: Literal["fp32", "none"] = Field(
        description="a separate fp32 copy the optimizer updates (none: the weights themselves are updated)")
    grad_reduce_dtype: Literal["fp32", "bf16", "fp16"] = Field(
        description="dtype gradients are reduced across data-parallel ranks in")
    matmul_dtype: Literal["fp32", "bf16", "fp16"] = Field(description="dtype the forward and backward matmuls run in")
    compute: Literal["fp32", "autocast", "cast model", "cast when gathered"] = Field(
        description="autocast: fp32 weights, matmuls in 16 bits (PyTorch AMP); cast model: the model itself is "
                    "16-bit; cast when gathered: fp32 shards, gathered in 16 bits for each block (FSDP2)")
    loss_scaling: Literal["none", "dynamic loss scale, overflow agreed over all ranks", "DeepSpeed dynamic"]
    fp8_linears: bool = Field(False, description="the blocks' linear layers multiply in FP8 (torchao float8, "
                                                 "tensorwise dynamic scales); the LM head and attention in "
                                                 "matmul_dtype")

    def short(self) -> str:
        """One phrase for a table's description: "fp32 weights, bf16 autocast" and so on; two
        regimes with different keys never share a phrase (ZeRO's fp32 keeps a master copy)."""
        if self.compute == "fp32":
            return "fp32" if self.master_weights == "none" else "fp32 weights, fp32 master"
        fp8 = ", FP8 linears" if self.fp8_linears else ""
        if self.compute == "autocast":
            return f"fp32 weights, {self.matmul_dtype} autocast{fp8}"
        if self.compute == "cast when gathered":
            return f"fp32 shards, gathered in {self.matmul_dtype}{fp8}"
        return f"{self.weights_dtype} weights, fp32 master"

    def key(self) -> str:
        """Equal for two runs exactly when they do the same arithmetic in the same dtypes."""
        return (f"weights {self.weights_dtype}, master {self.master_weights}, matmul {self.matmul_dtype}, "
                f"grad reduce {self.grad_reduce_dtype}, {self.compute}" + (", fp8 linears" if self.fp8_linears else ""))


def regime(mode: Mode, precision: Precision, fp8: bool = False) -> PrecisionRegime:
    """The regime hpml's engine trains ``mode`` in at ``precision`` (with ``--fp8``: a config
    that ``hpml_core.contract.checks.check_fp8`` accepted)."""
    if fp8:
        return _regime(mode, precision).model_copy(update={"fp8_linears": True})
    return _regime(mode, precision)


def run_regime(config: TrainConfig) -> PrecisionRegime:
    """The regime a run's config trains in: its mode, precision and ``--fp8``."""
    return regime(config.mode, config.precision, config.fp8)


def _regime(mode: Mode, precision: Precision) -> PrecisionRegime:
    if precision == "fp32":
        return PrecisionRegime(weights_dtype="fp32", master_weights="fp32" if mode in ZERO_STAGES else "none",
                               matmul_dtype="fp32", grad_reduce_dtype="fp32", compute="fp32", loss_scaling="none")
    if mode == "fsdp2":
        return PrecisionRegime(weights_dtype="fp32", master_weights="none", matmul_dtype=precision,
                               grad_reduce_dtype="fp32", compute="cast when gathered",
                               loss_scaling="dynamic loss scale, overflow agreed over all ranks" if precision == "fp16" else "none")
    if mode in ZERO_STAGES:
        return PrecisionRegime(weights_dtype=precision, master_weights="fp32", matmul_dtype=precision,
                               grad_reduce_dtype=precision, compute="cast model",
                               loss_scaling="DeepSpeed dynamic" if precision == "fp16" else "none")
    return PrecisionRegime(weights_dtype="fp32", master_weights="none", matmul_dtype=precision,
                           grad_reduce_dtype="fp32", compute="autocast",
                           loss_scaling="dynamic loss scale, overflow agreed over all ranks" if precision == "fp16" else "none")
