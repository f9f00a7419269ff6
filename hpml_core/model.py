"""GPT-2 as a plain ``nn.Module``.

The model knows nothing about ranks, devices or precision: data parallelism, activation
checkpointing and compilation are applied from outside (``hpml_core.parallelize``), as in
picotron and torchtitan. The architecture is GPT-2's (pre-LayerNorm blocks, tanh-GELU MLP,
learned positions, LM head tied to the token embedding); the sizes come from the contract
(``hpml_core.contract.models``: transformers' ``GPT2Config`` presets, written out). Dropout is not modelled:
throughput studies train with it off, and it would make runs with different rank layouts
draw different masks.

Initialisation is GPT-2's, drawn parameter by parameter (``initial_value``): each parameter's
values come from a generator seeded by the run's seed and the parameter's name alone, so a
process can draw any one parameter without the others. That is how a sharded run starts from
exactly the weights one process gets without any rank holding the whole model
(``hpml_core.materialize``); a GPT built on the meta device is left empty for that.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from hpml_core.contract.models import PRESETS, ModelDims, model_dims  # noqa: F401 - the sizes a GPT is built from


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

    def __init__(self, dims: ModelDims, attn: str = "sdpa", seed: int = 0):
        super().__init__()
        self.dims = dims
        self.wte = nn.Embedding(dims.vocab_size, dims.n_embd)
        self.wpe = nn.Embedding(dims.n_positions, dims.n_embd)
        self.blocks = nn.ModuleList(Block(dims, attn) for _ in range(dims.n_layer))
        self.ln_f = nn.LayerNorm(dims.n_embd, eps=dims.layer_norm_epsilon)
        self.lm_head = nn.Linear(dims.n_embd, dims.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
        if not self.wte.weight.is_meta:  # on the meta device there is nothing to fill yet
            self.init_weights(seed)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """GPT-2's initialisation, the same values ``hpml_core.materialize`` gives a sharded model."""
        for name, param in self.named_parameters():  # the tied LM head once, as wte
            param.copy_(initial_value(name, param.shape, self.dims.n_layer, seed))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def initial_value(name: str, shape: torch.Size, n_layer: int, seed: int) -> torch.Tensor:
    """The whole fp32 initial value (on the CPU) of the plain GPT's parameter ``name``.

    GPT-2's scheme: LayerNorm weights 1, every bias 0, the other weights normal(0, 0.02), and
    the projections that write into the residual stream (attention output, MLP down) with std
    0.02/sqrt(2·layers). The normal draws come from a CPU generator seeded by (seed, name), not
    the global RNG, so the value depends on nothing else: any rank draws the same tensor for a
    name, in any order, on any device.
    """
    module, kind = name.split(".")[-2:]
    if module.startswith("ln_"):
        return torch.ones(shape) if kind == "weight" else torch.zeros(shape)
    if kind == "bias":
        return torch.zeros(shape)
    std = 0.02 / math.sqrt(2 * n_layer) if module == "proj" else 0.02
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    return torch.empty(shape).normal_(0.0, std, generator=generator)


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all positions, computed in fp32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))
