"""What only happens on a GPU: CUDA-event timing, the peak table looked up by the device's name
and so MFU, ``max_memory_allocated``, bf16 and fp16 autocast on CUDA, ``torch.compile``, fused
AdamW, pinned batches, SDPA's flash kernel, NCCL, DeepSpeed's ZeRO stages and FSDP2 on CUDA,
every layout training what one process trains, on the GPU, the GPU's energy counter, a real
CUDA out-of-memory error, FP8 products (``--fp8``) on a GPU that has them, and every run's
profiled steps cut on the device's timeline (``hpml_core.trace_parts``): parts adding up to
each step and the contract's collectives, none at all for one rank over NCCL.

Marked ``gpu`` and deselected by ``make test`` (pyproject's addopts); ``make gpu-check`` runs
them (``pytest -m gpu``). Ranks that must share the one GPU talk over gloo, as
``make bench-memory`` does, since NCCL refuses two ranks on one device.
"""

from __future__ import annotations

import fcntl
import math
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tests.conftest import engine, losses, rank_files
from tests.layouts import COMMON, LAYOUTS, OPTIMIZERS
from tests.profiled import assert_profile_holds

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# SGD in fp32, as tests/test_parallel_equivalence.py, whose docstring justifies 1e-5 on the
# CPU. On the GPU, cuBLAS picks its kernel by the matrices' shapes, so a layout that splits the
# batch or the weights also changes the order of each dot product's sums; 1e-4 allows that and
# is still far below a wrong gradient (the broken-TP test differs by more than 1e-2).
GPU_SGD_TOLERANCE = 1e-4
GPU_LAYOUTS = ("ddp-4", "zero3-4", "tp-2", "dp2xtp2-allreduce", "dp2xtp2-zero3",
               "zero2-4", "dp2xtp2-zero1", "fsdp2-4", "dp2xtp2-fsdp2")


# pytest-xdist's workers share the one GPU, and the out-of-memory test takes all its memory:
# every test holds the GPU shared, that one alone. (make gpu-check runs it apart, after the
# others, so that no worker waits for the GPU to be free.)
GPU_LOCK = Path(tempfile.gettempdir()) / "hpml-gpu-tests.lock"


@contextmanager
def holding_the_gpu(alone: bool = False):
    with GPU_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        yield  # closing the file releases the lock


@pytest.fixture(autouse=True)
def the_gpu(request):
    with holding_the_gpu(alone=request.node.get_closest_marker("fills_the_gpu") is not None):
        yield


def short_run(tmp_path, token_data, *flags: str, nproc: int = 1) -> dict:
    out = tmp_path / "run"
    engine(["--test", "--steps", "8", "--warmup-steps", "3", "--data", str(token_data), "--out", str(out), *flags],
           nproc=nproc)
    record = rank_files(out)[0]
    assert record["status"] == "COMPLETED", record.get("error")
    assert all(math.isfinite(value) for value in record["loss"]["values"])
    return record


def assert_measured_on_the_gpu(record: dict) -> None:
    assert record["device_name"] == torch.cuda.get_device_name(0)
    assert "CUDA events" in record["throughput"]["timing"]
    assert record["memory"]["training"]["cuda_max_allocated_bytes"] > 0
    flops = record["flops"]
    if flops["peak_tflops_per_s"] is None:  # a GPU missing from hpml_core/contract/gpus.py: said, not guessed
        assert flops["mfu"] is None and flops["mfu_missing_reason"]
    else:
        assert 0 < flops["mfu"] < 1
    energy = record["energy"]  # NVML's counter (a short run's span may be too short for it to tick)
    assert energy is not None, record["energy_missing_reason"]
    assert energy["joules"] >= 0 and energy["timed_steps"] == record["throughput"]["timed_steps"]
    assert energy["run_tokens"] == record["throughput"]["tokens_per_step"] * energy["timed_steps"]
    assert_profiled_on_the_device(record)


def assert_profiled_on_the_device(record: dict) -> None:
    """The profiled window was cut on the GPU's timeline, and holds: over NCCL a rank alone
    shows no collective (``hpml_core.contract.collectives``: a group of one launches no NCCL
    kernel), ranks sharing the GPU show gloo's, each to the contract's byte."""
    assert_profile_holds(record)
    assert record["profile"]["how"].split("; ", 1)[1].startswith("GPU:"), record["profile"]["how"]


def test_energy_per_token_is_read_from_the_gpu_s_counter(tmp_path, token_data):
    """A run long enough for NVML's counter (about 2 s of timed steps): a plausible mean power,
    and the run's joules per token its one GPU's joules over the tokens of the timed steps."""
    record = short_run(tmp_path, token_data, "--model", "gpt2", "--seq-len", "1024", "--batch-size", "16",
                       "--precision", "bf16", "--steps", "45", "--warmup-steps", "5", "--profile-steps", "0")
    energy = record["energy"]
    assert energy["joules"] > 0 and 30 < energy["mean_power_w"] < 1500, energy
    assert energy["span_s"] >= sum(record["throughput"]["step_times_s"]) * 0.99
    assert energy["run_joules_per_token"] == pytest.approx(energy["joules"] / energy["run_tokens"])


@pytest.mark.fills_the_gpu
def test_a_batch_predicted_not_to_fit_runs_out_of_memory_and_says_so(tmp_path, token_data):
    """A real CUDA out-of-memory error, at a batch the memory model predicts needs 25 % more than
    the GPU has: OUT_OF_MEMORY in the rank file, exit status 3, the prediction beside it. It
    runs with the GPU to itself (``the_gpu``): another test's run would run out of memory too."""
    from hpml_core.contract.config import TrainConfig
    from hpml_core.contract.layout import Layout
    from hpml_core.contract.memory_model import predict
    from hpml_core.model import model_dims

    total = torch.cuda.get_device_properties(0).total_memory
    config = TrainConfig(model="gpt2-large", seq_len=1024, precision="bf16", data=token_data)
    dims = model_dims("gpt2-large", 512)  # the tests' data: a 512-token vocabulary
    batch = next(b for b in range(1, 4096)
                 if predict(config.model_copy(update={"batch_size": b}), dims, Layout(1, 1)).total_bytes > 1.25 * total)
    out = tmp_path / "oom"
    proc = engine(["--model", "gpt2-large", "--seq-len", "1024", "--precision", "bf16", "--batch-size", str(batch),
                   "--steps", "3", "--warmup-steps", "1", "--profile-steps", "0", "--data", str(token_data),
                   "--out", str(out)], check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    record = rank_files(out)[0]
    assert record["status"] == "OUT_OF_MEMORY" and record["steps_completed"] == 0
    assert record["prediction"]["total_bytes"] > 1.25 * total
    assert record["error"].startswith(f"out of memory at batch size {batch} per rank (predicted "
                                      f"{record['prediction']['total_bytes'] / 2**30:.1f} GiB of the GPU's "
                                      f"{total / 2**30:.1f} GiB)")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_one_gpu_trains_compiled_in_mixed_precision(tmp_path, token_data, precision):
    record = short_run(tmp_path, token_data, "--precision", precision, "--compile")
    assert_measured_on_the_gpu(record)
    assert record["config"]["compile"] and record["precision"]["matmul_dtype"] == precision
    assert record["precision"]["compute"] == "autocast"


@pytest.mark.parametrize("mode, precision", [("ddp", "bf16"), ("zero1", "bf16"), ("zero2", "bf16"), ("zero3", "bf16"),
                                             ("fsdp2", "bf16"), ("zero2", "fp16"), ("fsdp2", "fp16")])
def test_nccl_and_deepspeed_on_cuda(tmp_path, token_data, mode, precision):
    """One rank over NCCL: the collectives' backend, DeepSpeed's CUDA path (its fp16, which its
    CPU accelerator lacks) and FSDP2's, each in its precision regime."""
    from hpml_core.contract.precision import regime

    record = short_run(tmp_path, token_data, "--mode", mode, "--precision", precision, nproc=1)
    assert_measured_on_the_gpu(record)
    assert record["precision"] == regime(mode, precision).model_dump()


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9),
                    reason="no FP8 tensor cores (compute capability below 8.9): --fp8 is refused there")
@pytest.mark.parametrize("mode", ["single", "fsdp2"])
def test_fp8_products_on_cuda_compiled(tmp_path, token_data, mode):
    """torchao's float8 layers through torch._scaled_mm's CUDA kernel, compiled as the bench runs
    them: the run trains, records the regime, and its MFU is against the FP8 peak; its losses
    are a bf16 run's within FP8's rounding (tests/test_fp8.py, on the CPU: 5.6e-4)."""
    record = short_run(tmp_path / "fp8", token_data, "--mode", mode, "--precision", "bf16", "--fp8", "--compile")
    assert_measured_on_the_gpu(record)
    assert record["precision"]["fp8_linears"] and record["config"]["fp8"]
    if record["flops"]["peak_tflops_per_s"] is not None:
        assert "FP8" in record["flops"]["peak_source"]
    bf16 = short_run(tmp_path / "bf16", token_data, "--mode", mode, "--precision", "bf16", "--compile")
    assert record["loss"]["values"] != bf16["loss"]["values"]  # the products really ran in FP8
    assert max(abs(a - b) for a, b in zip(record["loss"]["values"], bf16["loss"]["values"])) <= 2e-3


def test_zero3_compiled_on_cuda(tmp_path, token_data):
    record = short_run(tmp_path, token_data, "--mode", "zero3", "--precision", "bf16", "--compile", nproc=1)
    assert_measured_on_the_gpu(record)


def test_fused_adamw_and_pinned_batches(token_data):
    from hpml_core.batches import TokenBatches, TokenData
    from hpml_core.model import GPT, model_dims
    from hpml_core.contract.config import TrainConfig
    from hpml_core.contract.layout import Layout
    from hpml_core.stepper import build_optimizer

    device = torch.device("cuda", 0)
    model = GPT(model_dims("tiny", 512)).to(device)
    optimizer = build_optimizer(model, TrainConfig(data=token_data), device)
    assert optimizer.defaults["fused"] is True
    batches = TokenBatches(TokenData.open(token_data), 64, 4, Layout(1, 1), dp_rank=0, seed=0)
    (x, y), = batches.micro_batches(0, device)
    assert x.device == y.device == device and x.shape == y.shape == (4, 64)


def test_sdpa_runs_the_flash_kernel_and_matches_eager_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from hpml_core.model import CausalSelfAttention, model_dims

    torch.manual_seed(0)
    dims = model_dims("gpt2-large", 50257)
    flash = CausalSelfAttention(dims, "sdpa").cuda().to(torch.bfloat16)
    eager = CausalSelfAttention(dims, "eager").cuda().to(torch.bfloat16)
    eager.load_state_dict(flash.state_dict())
    x = torch.randn(2, 1024, dims.n_embd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if the flash kernel cannot take these shapes
        y = flash(x)
        y.float().square().mean().backward()
    reference = eager(x.detach())
    error = ((y.float() - reference.float()).norm() / reference.float().norm()).item()
    assert error < 1e-2, f"flash vs eager attention in bf16: relative error {error:.2e}"
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.fixture(scope="module")
def one_process_on_the_gpu(tmp_path_factory, token_data):
    """The single-process run every layout is compared with, trained once (set up before
    ``the_gpu``, so it holds the GPU itself)."""
    reference = tmp_path_factory.mktemp("gpu") / "single"
    with holding_the_gpu():
        engine([*COMMON, *OPTIMIZERS["sgd"][0], "--data", str(token_data), "--batch-size", "4", "--out",
                str(reference)])
    return reference


@pytest.mark.parametrize("layout", GPU_LAYOUTS)
def test_layout_trains_like_one_process_on_the_gpu(tmp_path, token_data, one_process_on_the_gpu, layout):
    common = [*COMMON, *OPTIMIZERS["sgd"][0], "--data", str(token_data)]
    reference = one_process_on_the_gpu
    nproc, mode, tp, batch, accum = LAYOUTS[layout]
    out = tmp_path / layout
    engine([*common, "--mode", mode, "--tp-size", str(tp), "--batch-size", str(batch), "--grad-accum", str(accum),
            "--dist-backend", "gloo", "--out", str(out)], nproc=nproc)
    files = rank_files(out).values()
    assert all(r["device_name"] == torch.cuda.get_device_name(0) for r in files)
    for record in files:
        assert_profiled_on_the_device(record)
    # The ranks share the GPU, and so its energy counter: counted once, as their mean.
    energies = [r["energy"] for r in files]
    assert len({e["device"] for e in energies}) == 1
    assert energies[0]["run_joules_per_token"] == pytest.approx(
        sum(e["joules"] for e in energies) / len(energies) / energies[0]["run_tokens"])
    assert losses(out) == pytest.approx(losses(reference), rel=1e-4)
    ours, ref = torch.load(out / "model.pt"), torch.load(reference / "model.pt")
    worst = max(((name, ((ours[name] - ref[name]).norm() / ref[name].norm()).item()) for name in ref),
                key=lambda item: item[1])
    assert worst[1] <= GPU_SGD_TOLERANCE, f"{worst[0]} differs by {worst[1]:.2e} (allowed {GPU_SGD_TOLERANCE:.0e})"
