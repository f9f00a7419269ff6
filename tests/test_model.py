import pytest
import torch
from transformers import GPT2Config

from hpml_core.materialize import materialize, parameter_shapes
from hpml_core.mesh import Mesh
from hpml_core.model import GPT, PRESETS, model_dims, next_token_loss
from hpml_core.contract.layout import Layout
from hpml_core.tensor_parallel import apply_tensor_parallel


@pytest.mark.parametrize("name", ["tiny", "gpt2"])
def test_analytic_parameter_counts_match_the_module(name):
    dims = model_dims(name, 50257)
    model = GPT(dims)
    assert dims.params_total == sum(p.numel() for p in model.parameters())  # tied LM head counted once
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head)
    assert dims.params_matmul == linear + model.wte.weight.numel()
    assert dims.params_non_embedding == dims.params_total - model.wte.weight.numel() - model.wpe.weight.numel()


def test_gpt2_large_is_the_774m_model():
    dims = model_dims("gpt2-large", 50257)
    assert (dims.n_layer, dims.n_embd, dims.n_head, dims.vocab_size) == (36, 1280, 20, 50304)
    # GPT-2 Large has 774,030,080 parameters; padding 50257 -> 50304 rows adds 47 x 1280.
    assert dims.params_total == 774_030_080 + 47 * 1280
    assert set(PRESETS) == {"tiny", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_contract_writes_out_transformers_gpt2_configs(name):
    """hpml_core.contract.models spells the presets out so that planning needs no transformers;
    the engine's models must still be transformers' GPT2Config sizes."""
    dims = model_dims(name, 50257)
    config = GPT2Config(**PRESETS[name], vocab_size=dims.vocab_size)
    assert (dims.n_layer, dims.n_head, dims.n_embd, dims.n_positions, dims.layer_norm_epsilon) == \
        (config.n_layer, config.n_head, config.n_embd, config.n_positions, config.layer_norm_epsilon)


def test_sdpa_and_eager_attention_compute_the_same_function():
    torch.manual_seed(0)
    sdpa = GPT(model_dims("tiny", 512), attn="sdpa")
    eager = GPT(model_dims("tiny", 512), attn="eager")
    eager.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, 512, (2, 32))
    torch.testing.assert_close(sdpa(idx), eager(idx), rtol=1e-5, atol=1e-5)


def test_attention_is_causal():
    torch.manual_seed(0)
    model = GPT(model_dims("tiny", 512))
    idx = torch.randint(0, 512, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 512
    torch.testing.assert_close(model(idx)[:, :10], model(changed)[:, :10])


def test_loss_of_an_untrained_model_is_near_uniform():
    torch.manual_seed(0)
    model = GPT(model_dims("tiny", 512))
    idx, targets = torch.randint(0, 512, (2, 4, 32))
    loss = next_token_loss(model(idx), targets)
    assert abs(loss.item() - torch.log(torch.tensor(512.0)).item()) < 0.1


def test_initial_values_depend_on_the_seed_and_the_name_alone():
    dims = model_dims("tiny", 512)
    a, b = GPT(dims, seed=7).state_dict(), GPT(dims, seed=7).state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)
    other = GPT(dims, seed=8).state_dict()
    assert not torch.equal(a["wte.weight"], other["wte.weight"])
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], a["blocks.1.attn.qkv.weight"])
    assert torch.equal(a["lm_head.weight"], a["wte.weight"])  # tied
    proj, fc = a["blocks.0.mlp.proj.weight"].std().item(), a["blocks.0.mlp.fc.weight"].std().item()
    assert fc == pytest.approx(0.02, rel=0.05) and proj == pytest.approx(0.02 / (2 * dims.n_layer) ** 0.5, rel=0.05)
    assert torch.equal(a["ln_f.weight"], torch.ones(dims.n_embd)) and not a["blocks.0.attn.qkv.bias"].any()


@pytest.mark.parametrize("tp_rank", [0, 1])
def test_a_model_filled_on_the_meta_device_gets_exactly_the_shards_of_the_whole_model(tp_rank):
    """What hpml_core.materialize gives a tensor-parallel rank, parameter by parameter, equals
    that rank's shards of the whole model one process builds: same values, marks and tie."""
    dims = model_dims("tiny", 512)
    mesh = Mesh(Layout(world_size=2, tp_size=2), tp_rank, None, None)
    sharded_whole = GPT(dims, seed=7)
    apply_tensor_parallel(sharded_whole, mesh)
    with torch.device("meta"):
        filled = GPT(dims)
    shapes = parameter_shapes(filled)
    apply_tensor_parallel(filled, mesh)
    materialize(filled, shapes, dims.n_layer, 7, torch.device("cpu"), torch.float32)
    expected, got = dict(sharded_whole.named_parameters()), dict(filled.named_parameters())
    assert expected.keys() == got.keys()
    for name, param in got.items():
        assert torch.equal(param, expected[name]), name
        assert getattr(param, "tensor_model_parallel", False) == getattr(expected[name], "tensor_model_parallel", False)
    assert filled.lm_head.weight is filled.wte.weight
