"""Model presets and the dimensions everything else derives from (parameter counts, FLOPs,
memory), without building a model: the login node plans with these, the engine builds GPT-2
from them (``hpml_core.model``).

The sizes are transformers' ``GPT2Config`` presets (gpt2-large: 36 layers, width 1280, 20
heads, 1024 positions, LayerNorm epsilon 1e-5), written out here so that planning needs
neither transformers nor the hub; "tiny" is ours, for tests, with 256 positions so that its
position table does not outweigh its blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=2, n_head=4, n_embd=64, n_positions=256),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}
# GPT2Config's defaults for what the presets leave out.
DEFAULT_POSITIONS = 1024
LAYER_NORM_EPSILON = 1e-5

# The embedding and LM head are padded to a multiple of this many rows: GPU matmuls run
# faster on aligned shapes (GPT-2's 50257 becomes 50304, as in nanoGPT), and a vocabulary
# split across tensor-parallel ranks needs a size that divides evenly. The extra rows are
# never a target, so they only cost a little compute.
VOCAB_MULTIPLE = 128
# GPT-2's tokenizer: what a plan assumes while the data is not prepared yet.
GPT2_VOCAB = 50257


@dataclass(frozen=True)
class ModelDims:
    """The sizes that define a GPT-2; everything else (parameter and FLOP counts) derives from them."""

    name: str
    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int
    vocab_size: int
    layer_norm_epsilon: float

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def params_total(self) -> int:
        """Every trainable element (the tied embedding/LM head once)."""
        d, L = self.n_embd, self.n_layer
        per_block = 12 * d * d + 13 * d  # qkv, proj, fc, proj weights+biases; two LayerNorms
        return self.vocab_size * d + self.n_positions * d + L * per_block + 2 * d

    @property
    def params_non_embedding(self) -> int:
        """Kaplan et al.'s count: without the token and position embeddings."""
        return self.params_total - self.vocab_size * self.n_embd - self.n_positions * self.n_embd

    @property
    def params_matmul(self) -> int:
        """Weights that multiply activations: the four linear layers of each block and the LM head.

        This is the N of the PaLM FLOP formula: biases, LayerNorms and the position embedding do
        no matrix multiplication, and the token embedding counts once, as the LM head it is tied to.
        """
        return 12 * self.n_layer * self.n_embd**2 + self.vocab_size * self.n_embd


def padded_vocab_size(vocab_size: int) -> int:
    return math.ceil(vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def model_dims(name: str, data_vocab_size: int) -> ModelDims:
    """Sizes of preset ``name`` with a vocabulary that fits the prepared data's tokenizer."""
    preset = PRESETS[name]
    return ModelDims(
        name=name,
        n_layer=preset["n_layer"],
        n_head=preset["n_head"],
        n_embd=preset["n_embd"],
        n_positions=preset.get("n_positions", DEFAULT_POSITIONS),
        vocab_size=padded_vocab_size(data_vocab_size),
        layer_norm_epsilon=LAYER_NORM_EPSILON,
    )
