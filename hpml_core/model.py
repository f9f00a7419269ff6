"""GPT-2 as a plain ``nn.Module``.

The model knows nothing about ranks, devices or precision: data parallelism, activation
checkpointing and compilation are applied from outside (``hpml_core.parallelize``), as in
picotron and torchtitan. The architecture is GPT-2's (pre-LayerNorm blocks, tanh-GELU MLP,
learned positions, LM head tied to the token embedding); the sizes are transformers'
``GPT2Config`` presets, built locally so no hub access is needed. Dropout is not modelled:
throughput studies train with it off, and it would make runs with different rank layouts
draw different masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GPT2Config

# Architecture presets, given as GPT2Config keyword arguments. The four GPT-2 sizes are the
# published ones (gpt2-large: 36 layers, width 1280, 20 heads, 1024 positions); "tiny" is ours,
# for tests, with 256 positions so that its position table does not outweigh its blocks.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=2, n_head=4, n_embd=64, n_positions=256),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}

# The embedding and LM head are padded to a multiple of this many rows: GPU matmuls run
# faster on aligned shapes (GPT-2's 50257 becomes 50304, as in nanoGPT), and a vocabulary
# split across tensor-parallel ranks needs a size that divides evenly. The extra rows are
# never a target, so they only cost a little compute.
VOCAB_MULTIPLE = 128


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
    # GPT-2's special-token ids are a tokenizer matter; None keeps the config valid for any vocabulary.
    config = GPT2Config(**PRESETS[name], vocab_size=padded_vocab_size(data_vocab_size), bos_token_id=None, eos_token_id=None)
    return ModelDims(
        name=name,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_embd=config.n_embd,
        n_positions=config.n_positions,
        vocab_size=config.vocab_size,
        layer_norm_epsilon=config.layer_norm_epsilon,
    )


class CausalSelfAttention(nn.Module):
    def __init__(self, dims: ModelDims, attn: str):
        super().__init__()
        self.qkv = nn.Linear(dims.n_embd, 3 * dims.n_embd)  # [all q | all k | all v]
        self.proj = nn.Linear(dims.n_embd, dims.n_embd)
        self.head_dim = dims.head_dim
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        # The head count is read off the tensor, so a layer holding a subset of heads works too.
        q, k, v = (t.view(B, T, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if self.attn == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # eager: the textbook computation, whose matmuls a FLOP counter can see on any device
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
            y = scores.softmax(dim=-1) @ v
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.fc = nn.Linear(dims.n_embd, 4 * dims.n_embd)
        self.proj = nn.Linear(4 * dims.n_embd, dims.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, dims: ModelDims, attn: str):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dims.n_embd, eps=dims.layer_norm_epsilon)
        self.attn = CausalSelfAttention(dims, attn)
        self.ln_2 = nn.LayerNorm(dims.n_embd, eps=dims.layer_norm_epsilon)
        self.mlp = MLP(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2 language model: token ids in, next-token logits out."""

    def __init__(self, dims: ModelDims, attn: str = "sdpa"):
        super().__init__()
        self.dims = dims
        self.wte = nn.Embedding(dims.vocab_size, dims.n_embd)
        self.wpe = nn.Embedding(dims.n_positions, dims.n_embd)
        self.blocks = nn.ModuleList(Block(dims, attn) for _ in range(dims.n_layer))
        self.ln_f = nn.LayerNorm(dims.n_embd, eps=dims.layer_norm_epsilon)
        self.lm_head = nn.Linear(dims.n_embd, dims.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2·layers).
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * dims.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all positions, computed in fp32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))
