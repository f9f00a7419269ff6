"""``--save-model``: the trained weights gathered whole, whatever the layout, in two forms.

- ``<out>/model.pt``: a plain GPT state dict in fp32 (hpml's own names, the padded vocabulary).
  It is how a TP or ZeRO-3 run's result is compared with a single process's.
- ``<out>/hf/``: the same model in the ecosystem's format, the folder
  ``transformers.GPT2LMHeadModel.from_pretrained`` loads: ``config.json`` (a ``GPT2Config``'s
  fields with the run's sizes) and ``model.safetensors`` (GPT-2's parameter names and layout,
  fp32). It is how a trained model leaves the cluster.

The mapping (``hf_state_dict``), for ``d`` = n_embd and ``V`` the real vocabulary::

    hpml (nn.Linear: weight [out, in])       GPT-2 (Conv1D: weight [in, out])
    wte.weight [V_padded, d]               -> transformer.wte.weight [V, d] (padded rows dropped)
    wpe.weight [n_positions, d]            -> transformer.wpe.weight
    blocks.{i}.ln_1.{weight,bias} [d]      -> transformer.h.{i}.ln_1.{weight,bias}
    blocks.{i}.attn.qkv.weight [3d, d]     -> transformer.h.{i}.attn.c_attn.weight [d, 3d] (transposed)
    blocks.{i}.attn.qkv.bias [3d]          -> transformer.h.{i}.attn.c_attn.bias
    blocks.{i}.attn.proj.weight [d, d]     -> transformer.h.{i}.attn.c_proj.weight (transposed)
    blocks.{i}.ln_2.{weight,bias} [d]      -> transformer.h.{i}.ln_2.{weight,bias}
    blocks.{i}.mlp.fc.weight [4d, d]       -> transformer.h.{i}.mlp.c_fc.weight [d, 4d] (transposed)
    blocks.{i}.mlp.proj.weight [d, 4d]     -> transformer.h.{i}.mlp.c_proj.weight [4d, d] (transposed)
    ln_f.{weight,bias} [d]                 -> transformer.ln_f.{weight,bias}
    lm_head.weight (tied to wte)           -> not stored: lm_head is tied (tie_word_embeddings)

No reordering inside the QKV projection is needed: both models lay its output out as
[all q | all k | all v] and cut each of the three into heads of ``head_dim`` consecutive
features (hpml's ``chunk(3)`` then ``view(B, T, -1, head_dim)``, transformers' ``split(d)``
then the same view). The biases keep their shape. transformers needs no attention-mask buffer
(``attn.bias``): it builds the causal mask itself and ignores one if present.

The real vocabulary is the data's tokenizer's (``DataMeta.vocab_size``, which the caller passes
as ``vocab_size``; the model's is padded, ``contract.models.padded_vocab_size``): the rows past
it are never an input nor a target, so dropping them changes no logit of a real token. The config says so, and the architecture's
other choices: LayerNorm epsilon, GELU's tanh approximation ("gelu_new", what GPT-2 uses;
exact erf would be "gelu"), 4d MLP, scaled dot-product attention, tied LM head, dropout 0
(hpml models none).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from hpml_core.contract.atomic import atomic_write
from hpml_core.contract.models import ModelDims
from hpml_core.stepper import Stepper

MODEL_FILE = "model.pt"
HF_FOLDER = "hf"
HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"

# hpml's name inside a block -> (GPT-2's name inside transformer.h.{i}, transposed?)
_BLOCK_NAMES = {
    "ln_1.weight": ("ln_1.weight", False), "ln_1.bias": ("ln_1.bias", False),
    "attn.qkv.weight": ("attn.c_attn.weight", True), "attn.qkv.bias": ("attn.c_attn.bias", False),
    "attn.proj.weight": ("attn.c_proj.weight", True), "attn.proj.bias": ("attn.c_proj.bias", False),
    "ln_2.weight": ("ln_2.weight", False), "ln_2.bias": ("ln_2.bias", False),
    "mlp.fc.weight": ("mlp.c_fc.weight", True), "mlp.fc.bias": ("mlp.c_fc.bias", False),
    "mlp.proj.weight": ("mlp.c_proj.weight", True), "mlp.proj.bias": ("mlp.c_proj.bias", False),
}
_TOP_NAMES = {"wpe.weight": "transformer.wpe.weight", "ln_f.weight": "transformer.ln_f.weight",
              "ln_f.bias": "transformer.ln_f.bias"}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


def save_full_model(stepper: Stepper, out: Path, rank: int, *, dims: ModelDims | None = None,
                    vocab_size: int | None = None) -> Path:
    """Collective: every rank calls it; global rank 0 writes ``model.pt`` and the ``hf/`` folder.

    ``dims``: the run's sizes (default: those of the stepper's model). ``vocab_size``: the real
    vocabulary, the data's (default: the model's padded one, so nothing is dropped)."""
    state = stepper.full_state_dict()
    path = out / MODEL_FILE
    if rank == 0:
        atomic_write(path, lambda f: torch.save(state, f))
        dims = dims or stepper.model.dims
        save_hf(state, dims, vocab_size or dims.vocab_size, out / HF_FOLDER)
    return path


def hf_config(dims: ModelDims, vocab_size: int) -> dict:
    """The ``config.json`` of hpml's GPT of sizes ``dims`` with the real vocabulary ``vocab_size``:
    the fields of ``GPT2Config`` that describe the model, the library's generic ones (labels,
    generation) left to its defaults. Written out rather than built with ``GPT2Config``, which
    would import transformers into every rank 0 that saves a model (0.65 s of a 2.8 s tiny run
    on this project's 2-core machine, most of it the library indexing itself: docs/testing.md);
    tests/test_export_hf.py reads it back as the config it stands for."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab_size,
        "n_positions": dims.n_positions, "n_embd": dims.n_embd, "n_layer": dims.n_layer, "n_head": dims.n_head,
        "n_inner": 4 * dims.n_embd, "activation_function": "gelu_new",  # F.gelu(approximate="tanh")
        "layer_norm_epsilon": dims.layer_norm_epsilon, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "summary_first_dropout": 0.0, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": True,
        # GPT2Config's 50256 is GPT-2's tokenizer's <|endoftext|>; the data's tokenizer may differ,
        # and the export does not read it.
        "bos_token_id": None, "eos_token_id": None, "dtype": "float32",
    }


def hf_state_dict(state: dict[str, torch.Tensor], dims: ModelDims, vocab_size: int) -> dict[str, torch.Tensor]:
    """hpml's plain GPT state dict as GPT2LMHeadModel's (contiguous tensors of their own, the
    tied LM head once, as ``transformer.wte.weight``, its rows past ``vocab_size`` dropped).
    Any name it does not know is an error, so a change to the GPT cannot be exported wrongly."""
    if not 0 < vocab_size <= dims.vocab_size:
        raise ValueError(f"the real vocabulary {vocab_size} must be in 1..{dims.vocab_size} (the model's)")
    wte = state["wte.weight"]
    if "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], wte):
        raise ValueError("lm_head.weight is not tied to wte.weight: GPT-2's format ties them")
    out = {"transformer.wte.weight": wte[:vocab_size].contiguous().clone()}
    for name, tensor in state.items():
        if name in ("wte.weight", "lm_head.weight"):
            continue
        if name in _TOP_NAMES:
            out[_TOP_NAMES[name]] = tensor.contiguous().clone()
            continue
        match = _BLOCK.fullmatch(name)
        if not match or match.group(2) not in _BLOCK_NAMES:
            raise ValueError(f"{name} has no GPT-2 counterpart")
        hf_name, transposed = _BLOCK_NAMES[match.group(2)]
        out[f"transformer.h.{match.group(1)}.{hf_name}"] = (tensor.t() if transposed else tensor).contiguous().clone()
    expected = 4 + len(_BLOCK_NAMES) * dims.n_layer  # wte, wpe, ln_f's two, and each block's
    if len(out) != expected:
        raise ValueError(f"{len(out)} GPT-2 tensors from the state dict, expected {expected}")
    return out


def save_hf(state: dict[str, torch.Tensor], dims: ModelDims, vocab_size: int, folder: Path) -> Path:
    """Write ``folder/model.safetensors`` then ``folder/config.json``, each atomically; a folder
    with a config.json therefore has its weights. Holds one more copy of the weights (and
    safetensors' serialized bytes) while it writes."""
    from safetensors.torch import save

    tensors = hf_state_dict(state, dims, vocab_size)
    config = hf_config(dims, vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / HF_CONFIG_FILE).unlink(missing_ok=True)  # written last: its presence means the weights are complete
    atomic_write(folder / HF_WEIGHTS_FILE, lambda f: f.write(save(tensors, metadata={"format": "pt"})))
    del tensors
    atomic_write(folder / HF_CONFIG_FILE, lambda f: f.write(json.dumps(config, indent=2).encode()))
    return folder
