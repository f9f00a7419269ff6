"""``--save-model`` leaves ``<out>/hf/``, a folder ``transformers.GPT2LMHeadModel.from_pretrained``
loads, and the loaded model computes the logits hpml's GPT computes from ``<out>/model.pt``.

Tolerance. Both models run the same fp32 arithmetic in a different order and with different
kernels (``Conv1D``'s addmm against ``nn.Linear``, transformers' "gelu_new" formula against
``F.gelu(approximate="tanh")``, each one's SDPA call), so their logits differ by rounding only:
a few units in the last place of fp32 (eps 1.2e-7) of the largest logit. Measured on the tiny
model trained 6 steps (largest logit about 1.2, a batch of 4 x 64 tokens): 1.8e-7 after the
single run, 3.6e-7 after DP2xTP2 ZeRO-3, the same as hpml's own SDPA against its eager
attention (4.2e-7, on 8 x 256 tokens). The test allows 1e-5 of the largest logit magnitude (at
least 1e-5): some 30 times the measured rounding, and far below what a wrong mapping gives. The
negative controls show it: q and k swapped inside the QKV projection move the logits by 1.4e-3
(110 times the tolerance: after 6 steps q and k are still small, so the attention is nearly
uniform either way; the test asks for 20 times), an attention output projection not transposed
to Conv1D's [in, out] by 0.19.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from hpml_core import export
from hpml_core.contract.data_meta import TOKENS_FILE, DataMeta
from hpml_core.model import GPT, model_dims

# The layouts whose export is checked.
LAYOUTS = ["single", "dp2xtp2-zero3", "dp2xtp2-fsdp2"]
RELATIVE_TOLERANCE = 1e-5


def tolerance(logits: torch.Tensor) -> float:
    return RELATIVE_TOLERANCE * max(1.0, logits.abs().max().item())


def token_batch(data, batch: int = 4, seq_len: int = 64) -> torch.Tensor:
    """The first ``batch`` windows of ``seq_len`` tokens of the prepared data."""
    meta = DataMeta.read(data)
    tokens = np.memmap(data / TOKENS_FILE, dtype=meta.dtype, mode="r")[:batch * seq_len]
    return torch.from_numpy(np.asarray(tokens, dtype=np.int64).reshape(batch, seq_len))


def load_hf(folder):
    """GPT2LMHeadModel from the local folder, checking that transformers reports no missing,
    unexpected or mismatched weight and logs no warning while loading."""
    from transformers import GPT2LMHeadModel

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        model, info = GPT2LMHeadModel.from_pretrained(folder, output_loading_info=True, local_files_only=True)
    finally:
        logger.removeHandler(handler)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}, info
    assert [r.getMessage() for r in records] == []
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied
    return model.eval()


def hpml_gpt(state: dict[str, torch.Tensor], vocab_size: int) -> GPT:
    model = GPT(model_dims("tiny", vocab_size))
    model.load_state_dict(state)
    return model.eval()


def max_difference(hf_model, gpt: GPT, x: torch.Tensor, vocab_size: int) -> tuple[float, float]:
    """The largest |logit| difference over the real vocabulary, and the tolerance it is held to."""
    with torch.no_grad():
        ours = gpt(x)[..., :vocab_size]
        theirs = hf_model(x).logits
    assert theirs.shape == ours.shape
    return (theirs - ours).abs().max().item(), tolerance(ours)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_hf_export_computes_hpml_logits(layout, trained, token_data):
    out = trained("sgd", layout)
    vocab = DataMeta.read(token_data).vocab_size
    model = load_hf(out / export.HF_FOLDER)
    config = model.config
    assert (config.n_embd, config.n_layer, config.n_head, config.n_positions) == (64, 2, 4, 256)
    assert config.vocab_size == vocab
    assert (config.activation_function, config.layer_norm_epsilon, config.tie_word_embeddings) == \
        ("gelu_new", 1e-5, True)
    assert model.transformer.wte.weight.shape == (vocab, 64)
    gpt = hpml_gpt(torch.load(out / export.MODEL_FILE), vocab)
    diff, tol = max_difference(model, gpt, token_batch(token_data), vocab)
    print(f"{layout}: max logit difference {diff:.2e} (tolerance {tol:.1e})")
    assert diff <= tol


def test_padded_rows_are_dropped(tmp_path, token_data):
    """A model whose vocabulary is padded (600 real tokens, 640 rows) exports 600 rows, and its
    logits over them are hpml's; model.pt keeps the padded rows. Through ``save_full_model``, as
    the engine calls it, with a stand-in for the stepper."""
    dims = model_dims("tiny", 600)
    gpt = GPT(dims, seed=3).eval()
    assert dims.vocab_size == 640

    class Stepper:
        model = gpt

        def full_state_dict(self):
            return {name: t.detach().clone() for name, t in gpt.state_dict().items()}

    export.save_full_model(Stepper(), tmp_path, rank=0, vocab_size=600)
    assert torch.load(tmp_path / export.MODEL_FILE)["wte.weight"].shape == (640, 64)
    model = load_hf(tmp_path / export.HF_FOLDER)
    assert model.config.vocab_size == 600
    x = token_batch(token_data)
    diff, tol = max_difference(model, gpt, x, 600)
    assert diff <= tol

    export.save_full_model(Stepper(), tmp_path / "other-rank", rank=1, vocab_size=600)
    assert not (tmp_path / "other-rank").exists()  # rank 0 writes, the others only take part


def test_config_json_reads_back_as_the_gpt2_config_it_stands_for(tmp_path):
    """The engine writes config.json without transformers (``export.hf_config``): every field it
    writes is one of GPT2Config's, transformers reads each back with its value, and the config
    it reads is the one GPT2Config builds from those fields, the rest at their defaults."""
    from transformers import GPT2Config

    dims = model_dims("tiny", 600)
    fields = export.hf_config(dims, 600)
    export.save_hf(GPT(dims, seed=3).state_dict(), dims, 600, tmp_path)
    read = GPT2Config.from_pretrained(tmp_path, local_files_only=True).to_dict()
    built = GPT2Config(**fields).to_dict()
    assert set(fields) <= set(GPT2Config().to_dict())  # a misspelt field would be kept as an attribute of its own
    assert {name: read[name] for name in fields} == fields
    assert read == built


def test_wrong_mappings_are_caught(tmp_path, trained, token_data, monkeypatch):
    """Negative control: the comparison fails, by far more than the tolerance, when the export
    swaps q and k inside the QKV projection or forgets to transpose a square Conv1D weight (the
    attention output projection: it loads without a shape error)."""
    out = trained("sgd", "single")
    vocab = DataMeta.read(token_data).vocab_size
    state = torch.load(out / export.MODEL_FILE)
    gpt = hpml_gpt(state, vocab)
    dims = gpt.dims
    x = token_batch(token_data)

    swapped = dict(state)
    d = dims.n_embd
    for i in range(dims.n_layer):
        for kind in ("weight", "bias"):
            q, k, v = state[f"blocks.{i}.attn.qkv.{kind}"].split(d)
            swapped[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([k, q, v])
    export.save_hf(swapped, dims, vocab, tmp_path / "qk-swapped")
    diff, tol = max_difference(load_hf(tmp_path / "qk-swapped"), gpt, x, vocab)
    print(f"q/k swapped: max logit difference {diff:.2e} (tolerance {tol:.1e})")
    assert diff > 20 * tol

    monkeypatch.setitem(export._BLOCK_NAMES, "attn.proj.weight", ("attn.c_proj.weight", False))
    export.save_hf(state, dims, vocab, tmp_path / "not-transposed")
    diff, tol = max_difference(load_hf(tmp_path / "not-transposed"), gpt, x, vocab)
    print(f"c_proj not transposed: max logit difference {diff:.2e} (tolerance {tol:.1e})")
    assert diff > 100 * tol


def test_gelu_new_is_hpml_gelu():
    """hpml's MLP uses GELU's tanh approximation: transformers' "gelu_new" computes it to rounding,
    while the exact erf GELU ("gelu") differs by far more."""
    from transformers.activations import ACT2FN

    x = torch.linspace(-6, 6, 10001)
    ours = torch.nn.functional.gelu(x, approximate="tanh")
    assert (ACT2FN["gelu_new"](x) - ours).abs().max().item() < 1e-6
    assert (ACT2FN["gelu"](x) - ours).abs().max().item() > 1e-4
