import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hpml_core.model import GPT, model_dims, next_token_loss
from hpml_core.contract.metrics import lookup_peak, training_flops_per_token
from hpml_core.contract.gpus import by_device_name


@pytest.mark.parametrize("batch,seq_len", [(2, 64), (3, 40)])
def test_formula_equals_pytorch_flop_counter_on_a_training_step(batch, seq_len):
    """The PaLM formula counts exactly the matmul FLOPs of one forward+backward.

    Eager attention, because on the CPU the flop counter sees SDPA's attention as zero.
    """
    torch.manual_seed(0)
    dims = model_dims("tiny", 512)
    model = GPT(dims, attn="eager")
    idx = torch.randint(0, dims.vocab_size, (batch, seq_len))
    counter = FlopCounterMode(display=False)
    with counter:
        next_token_loss(model(idx), idx).backward()
    assert counter.get_total_flops() == training_flops_per_token(dims, seq_len) * batch * seq_len


@pytest.mark.parametrize("name,precision,peak", [
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
    ("NVIDIA A100-PCIE-40GB", "fp16", 312.0),
    ("NVIDIA A100-SXM4-40GB", "fp32", 19.5),
    ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
    ("NVIDIA H100 PCIe", "bf16", 756.0),
    ("NVIDIA H100 NVL", "bf16", 835.0),
    ("NVIDIA H200", "bf16", 989.0),
    ("NVIDIA H200 NVL", "fp16", 835.0),
    ("NVIDIA L40S", "bf16", 362.0),
    ("NVIDIA A10", "fp32", 31.2),
])
def test_known_gpus_have_their_data_sheet_peak(name, precision, peak):
    found = lookup_peak("cuda", name, precision)
    assert (found.tflops, found.missing_reason) == (peak, None)
    assert found.source


@pytest.mark.parametrize("device_type,name", [("cuda", "Tesla T4"), ("cuda", "NVIDIA A10G"), ("cpu", "AMD EPYC")])
def test_unknown_gpu_or_cpu_gives_no_peak_and_a_reason(device_type, name):
    found = lookup_peak(device_type, name, "bf16")
    assert found.tflops is None and found.source is None
    assert name in found.missing_reason


def test_peaks_come_from_the_one_table_of_known_gpus():
    """The engine's MFU and the plan know a GPU the same way: its row of hpml_core.contract.gpus."""
    gpu = by_device_name("NVIDIA A100-SXM4-40GB")
    found = lookup_peak("cuda", "NVIDIA A100-SXM4-40GB", "bf16")
    assert (found.tflops, found.source) == (gpu.tensor_16bit_tflops, "NVIDIA A100 dense bf16 tensor core")


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 1979.0), ("NVIDIA H200", 1979.0),
                                        ("NVIDIA H100 PCIe", 1513.0), ("NVIDIA L40S", 733.0)])
def test_an_fp8_run_is_held_to_the_fp8_peak(name, peak):
    """About twice the 16-bit peak on every part with FP8 tensor cores, as their data sheets give
    them (the L40S's: 733 against 362.05)."""
    found = lookup_peak("cuda", name, "bf16", fp8=True)
    assert (found.tflops, found.missing_reason) == (peak, None) and "FP8" in found.source
    assert found.tflops == pytest.approx(2 * lookup_peak("cuda", name, "bf16").tflops, rel=0.015)


def test_a_gpu_without_fp8_tensor_cores_gives_an_fp8_run_no_peak():
    found = lookup_peak("cuda", "NVIDIA A100-SXM4-40GB", "bf16", fp8=True)
    assert found.tflops is None and "no FP8 tensor cores" in found.missing_reason
