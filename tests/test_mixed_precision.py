"""Mixed precision trains every layout like one process in the same precision regime, and in
fp16 every rank agrees on each loss-scale overflow (``hpml_core.loss_scaling``).

Each layout (DDP on 2 with 2 accumulation micro-steps, TP 2, DP 2 x TP 2 with all-reduce)
trains the tiny GPT-2 for 6 steps with SGD under bf16 and under fp16 autocast on the CPU
(gloo), with the same global batch, seed and clipping as one process in the same precision,
and must give its losses and its trained weights within TOLERANCES, and (fp16) skip the same
steps with the same loss scales.

Why those tolerances. Autocast rounds every matmul's output to 16 bits, and a layout changes
what is rounded and where partial sums are added (TP all-reduces two 16-bit partial products of
each row-parallel layer, DDP averages the gradients of smaller batches). So a layout differs
from one process by rounding errors of 16-bit activations, not of fp32 ones: bf16 keeps 8
significant bits (epsilon 2**-7 = 7.8e-3), fp16 11 bits (epsilon 2**-10 = 9.8e-4). SGD, linear
in the gradient, passes them to the weights unamplified (AdamW would not: see
test_parallel_equivalence.py). Measured, worst tensor over the three layouts (always a bias,
the smallest norms): relative weight difference 2.8e-3 in bf16 and 3.5e-4 in fp16, a third of
each dtype's epsilon (their ratio, 8, is the epsilons'). Allowed: two epsilons, six times that.
The losses, fp32 means over 256 tokens of an fp32 cross-entropy, average the rounding out:
measured 6.2e-5 (bf16) and 9.1e-6 (fp16) on losses of 6.2; allowed 5e-4 and 1e-4. What a
disagreement between ranks costs, one update applied or not, changes weights by 0.3, about 20
(bf16) and 150 (fp16) times the tolerance, which a test below checks.

The layouts that compute in 16 bits, DeepSpeed's ZeRO-1/2 (the model cast to bf16, gradients
reduced in bf16, fp32 master weights) and FSDP2 (fp32 shards gathered in bf16/fp16, gradients
reduced in fp32 from 16-bit ones), are held to one process of their own mode (the same regime),
and unclipped, at the gradient's true scale (test_parallel_equivalence.py says why clipping hides
a wrong scale). Each rank forms its gradient in 16 bits before the average over DP, so every
step's gradient carries a rounding error of up to half an epsilon that differs between layouts,
and SGD adds the 6 steps' errors into the weights; a bias, which starts at zero, is all update.
Allowed: 6 epsilons (4.7e-2 in bf16, 5.9e-3 in fp16). Measured, worst tensor (a LayerNorm
bias of norm 1e-3): 2.3e-2 to 2.4e-2 in bf16 for every ZeRO-1/2 and FSDP2 layout and
2.2e-3 to 2.4e-3 in fp16 (FSDP2), against 2.3e-3 to 2.9e-3 for the PyTorch path in bf16 under
autocast, also unclipped: the model computing in bf16 rounds ten times more. Losses: at most
1.4e-4 (bf16) and 1.9e-5 (fp16), within the same 5e-4 and 1e-4. One update fewer, unclipped,
moves a tensor by 0.34 (measured, ZeRO-1 in bf16): seven times the bf16 tolerance.

The negative control: an overflow forced on ONE tensor-parallel rank (an inf written into its
shard of a gradient before unscaling, by a wrapper around the engine) must make every rank skip
that step and back off its loss scale; with the agreement replaced by a no-op, the same run
makes the two TP ranks diverge, which the same assertion catches. These runs use AdamW, the
engine's default: with clipping on, the inf makes the TP-wide gradient norm infinite, so rank 0
clips its gradients to zero, and only an optimizer with momentum then still moves its weights,
as it would in a real run.
"""

from __future__ import annotations

import pytest
import torch

from hpml_core.contract.precision import regime
from hpml_core.loss_scaling import DynamicLossScaler
from tests.conftest import engine, losses, rank_files
from tests.layouts import LAYOUTS, OPTIMIZERS

STEPS = 6
POISON_STEP = 2  # the step (0-based) whose gradient the negative control makes overflow on TP rank 1
# No profiled window: the probes record every step the stepper takes, and these tests count them.
COMMON = ["--test", "--warmup-steps", "1", "--save-model", "--profile-steps", "0"]
CLIP = 0.5  # the PyTorch path's tests; the new layouts' train unclipped (see test_sharded_layout_...)
# precision: (relative weight difference per tensor, absolute loss difference); see the docstring
TOLERANCES = {"bf16": (2 * torch.finfo(torch.bfloat16).eps, 5e-4), "fp16": (2 * torch.finfo(torch.float16).eps, 1e-4)}
# The layouts that compute in 16 bits (ZeRO casts the model; FSDP2 gathers it in 16 bits), against
# one process of their own mode, unclipped. DeepSpeed has no fp16 on a CPU (refused: test_bad_input.py).
SHARDED = {"bf16": ["zero1-2", "dp2xtp2-zero2", "fsdp2-2-accum-2", "dp2xtp2-fsdp2"],
           "fp16": ["fsdp2-2", "dp2xtp2-fsdp2"]}
SHARDED_TOLERANCES = {"bf16": (STEPS * torch.finfo(torch.bfloat16).eps, 5e-4),
                      "fp16": (STEPS * torch.finfo(torch.float16).eps, 1e-4)}

# The engine, with a probe and two test hooks, all installed by monkeypatching in this process:
# the probe records after every step whether it was skipped, the loss scale, and the parameters
# TP leaves replicated; HPML_TEST_POISON_STEP makes rank 1's gradient overflow at that step;
# HPML_TEST_NO_AGREEMENT removes the all-reduce of the overflow decision.
WRAPPER = '''
import os
import torch
from torch.distributed.tensor import DTensor
from hpml_core import loss_scaling
from hpml_core.stepper import TorchStepper
from hpml_core.train import exit_quickly, main

RANK = int(os.environ.get("RANK", "0"))
POISON_STEP = int(os.environ.get("HPML_TEST_POISON_STEP", "-1"))
history = []
if os.environ.get("HPML_TEST_NO_AGREEMENT"):
    loss_scaling.agree_on_overflow = lambda found_inf: found_inf
unscale, step = loss_scaling.DynamicLossScaler.unscale_, TorchStepper.step


def poisoned_unscale(self, optimizer):
    if len(history) == POISON_STEP and RANK == 1:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        next(p for p in params if getattr(p, "tensor_model_parallel", False)).grad.view(-1)[0] = float("inf")
    unscale(self, optimizer)


def probed_step(self, micro_batches, measure=False):
    loss = step(self, micro_batches, measure)
    history.append({"skipped": self.scaler.found_inf, "scale": self.scaler.loss_scale})
    tp_sharded = getattr(self, "tp_sharded", None)  # FSDP2's new parameters do not carry TP's mark
    replicated = {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()  # FSDP2: gathered
                  for name, p in self.model.named_parameters()
                  if not (name in tp_sharded if tp_sharded is not None else getattr(p, "tensor_model_parallel", False))}
    torch.save({"history": history, "replicated": replicated}, os.environ["HPML_TEST_PROBE"] + f"/probe-{RANK}.pt")
    return loss


loss_scaling.DynamicLossScaler.unscale_, TorchStepper.step = poisoned_unscale, probed_step
exit_quickly(main())
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory, token_data):
    """Train (once per module) a layout through the probing wrapper; hands back the run folder."""
    root = tmp_path_factory.mktemp("mixed_precision")
    script = root / "probed_train.py"
    script.write_text(WRAPPER)
    done: dict[tuple, object] = {}

    def train(precision: str, layout: str, optimizer: str = "sgd", steps: int = STEPS, poison: bool = False,
              agreement: bool = True, clip: float = CLIP):
        key = (precision, layout, optimizer, steps, poison, agreement, clip)
        if key not in done:
            out = root / "-".join(map(str, key))
            out.mkdir()
            env = {"HPML_TEST_PROBE": str(out), "HPML_TEST_POISON_STEP": str(POISON_STEP if poison else -1),
                   **({} if agreement else {"HPML_TEST_NO_AGREEMENT": "1"})}
            args = [*COMMON, *OPTIMIZERS[optimizer][0], "--precision", precision, "--steps", str(steps),
                    "--grad-clip", str(clip), "--data", str(token_data), "--out", str(out)]
            if layout == "single" or layout.endswith("-1"):  # one process: "single", or "<mode>-1"
                mode = "single" if layout == "single" else layout.removesuffix("-1")
                engine([*args, "--mode", mode, "--batch-size", "4"], env=env, script=script)
            else:
                nproc, mode, tp, batch, accum = LAYOUTS[layout]
                engine([*args, "--mode", mode, "--tp-size", str(tp), "--batch-size", str(batch),
                        "--grad-accum", str(accum)], nproc=nproc, env=env, script=script)
            done[key] = out
        return done[key]

    return train


def probes(out) -> dict[int, dict]:
    """What the wrapper recorded on each rank, by rank."""
    return {int(p.stem.split("-")[1]): torch.load(p) for p in sorted(out.glob("probe-*.pt"))}


def weight_differences(out, reference) -> dict[str, float]:
    """Per-tensor relative difference of the weights saved whole (--save-model)."""
    ours, ref = torch.load(out / "model.pt"), torch.load(reference / "model.pt")
    assert ours.keys() == ref.keys()
    return {name: ((ours[name] - ref[name]).norm() / ref[name].norm()).item() for name in ref}


def loss_difference(out, reference) -> float:
    return max(abs(a - b) for a, b in zip(losses(out), losses(reference), strict=True))


def assert_ranks_agree(out) -> None:
    """Every rank skipped the same steps with the same loss scales, and the parameters TP leaves
    replicated are the same on every rank, bit for bit (so are the gradients that update them)."""
    found = probes(out)
    first = found[0]
    for rank, probe in found.items():
        assert probe["history"] == first["history"], f"rank {rank} skipped or scaled otherwise than rank 0"
        for name, tensor in probe["replicated"].items():
            assert torch.equal(tensor, first["replicated"][name]), f"rank {rank}'s {name} differs from rank 0's"


@pytest.mark.parametrize("precision", TOLERANCES)
@pytest.mark.parametrize("layout", ["ddp-2-accum-2", "tp-2", "dp2xtp2-allreduce"])
def test_layout_trains_like_one_process_in_16_bits(layout, precision, run):
    out, single = run(precision, layout), run(precision, "single")
    files = rank_files(out)
    assert sorted(files) == list(range(LAYOUTS[layout][0]))
    assert all(record["status"] == "COMPLETED" for record in files.values())
    assert_ranks_agree(out)
    # the same steps skipped and the same loss scales as the single process (no scaling in bf16)
    assert probes(out)[0]["history"] == probes(single)[0]["history"]
    weight_tol, loss_tol = TOLERANCES[precision]
    assert loss_difference(out, single) <= loss_tol
    name, worst = max(weight_differences(out, single).items(), key=lambda kv: kv[1])
    assert worst <= weight_tol, f"{name} differs by {worst:.2e} (allowed {weight_tol:.1e})"


@pytest.mark.parametrize("precision", TOLERANCES)
def test_the_tolerance_catches_one_missing_update(precision, run):
    """What a disagreement costs, one update applied or not, is far outside the tolerance."""
    short, single = run(precision, "single", steps=STEPS - 1), run(precision, "single")
    assert max(weight_differences(short, single).values()) > 5 * TOLERANCES[precision][0]


@pytest.mark.parametrize("precision, layout", [(p, layout) for p, layouts in SHARDED.items() for layout in layouts])
def test_sharded_layout_trains_like_one_process_of_its_mode_in_16_bits(precision, layout, run):
    """ZeRO-1/2 and FSDP2, unclipped, against one process of the same mode (the same precision
    regime: the model cast to 16 bits, or fp32 shards gathered in 16 bits); FSDP2's ranks also
    agree on every fp16 overflow and hold the same replicated parameters."""
    mode = LAYOUTS[layout][1]
    out, reference = run(precision, layout, clip=0), run(precision, f"{mode}-1", clip=0)
    files = rank_files(out)
    assert sorted(files) == list(range(LAYOUTS[layout][0]))
    for record in [*files.values(), *rank_files(reference).values()]:
        assert record["status"] == "COMPLETED" and record["precision"] == regime(mode, precision).model_dump()
    if mode == "fsdp2":  # TorchStepper's step, probed
        assert_ranks_agree(out)
        assert probes(out)[0]["history"] == probes(reference)[0]["history"]
    weight_tol, loss_tol = SHARDED_TOLERANCES[precision]
    assert loss_difference(out, reference) <= loss_tol
    name, worst = max(weight_differences(out, reference).items(), key=lambda kv: kv[1])
    assert worst <= weight_tol, f"{name} differs by {worst:.2e} (allowed {weight_tol:.1e})"


def test_the_sharded_tolerance_catches_one_missing_update(run):
    """Unclipped, one update fewer moves the weights far outside even bf16's wider tolerance."""
    short, full = run("bf16", "zero1-1", steps=STEPS - 1, clip=0), run("bf16", "zero1-1", clip=0)
    assert max(weight_differences(short, full).values()) > 3 * SHARDED_TOLERANCES["bf16"][0]


@pytest.mark.parametrize("layout", ["tp-2", "dp2xtp2-allreduce"])
def test_an_overflow_on_one_rank_is_skipped_by_all(layout, run):
    """Rank 1's gradient overflows after the backward pass (so neither TP's nor DDP's all-reduce
    carries it): its TP peer, and in DP 2 x TP 2 the other replica too, skip the step with it
    and halve their loss scales with it."""
    out = run("fp16", layout, optimizer="adamw", poison=True)
    assert_ranks_agree(out)
    history = probes(out)[1]["history"]
    assert [h["skipped"] for h in history] == [step == POISON_STEP for step in range(STEPS)]
    assert history[POISON_STEP]["scale"] == history[POISON_STEP - 1]["scale"] / 2


def test_without_the_agreement_the_tp_ranks_diverge(run):
    """The negative control: the same forced overflow with the all-reduce of the decision
    replaced by a no-op. Rank 1 skips the step alone; rank 0 applies it, which moves each of
    its replicated parameters by up to AdamW's learning rate (3e-4; measured 3.5e-4),
    and keeps a loss scale twice rank 1's: the two halves of one model part ways."""
    out = run("fp16", "tp-2", optimizer="adamw", poison=True, agreement=False)
    with pytest.raises(AssertionError):
        assert_ranks_agree(out)
    found = probes(out)
    assert found[1]["history"][POISON_STEP]["skipped"] and not found[0]["history"][POISON_STEP]["skipped"]
    assert found[0]["history"][-1]["scale"] == 2 * found[1]["history"][-1]["scale"]
    apart = max((found[0]["replicated"][name] - found[1]["replicated"][name]).abs().max().item()
                for name in found[0]["replicated"])
    assert apart > 1e-4


def test_scaler_does_gradscalers_arithmetic():
    """In one process our scaler and torch's GradScaler train identically, bit for bit, over
    clean steps, growth (every 2 clean steps here) and a forced overflow, so fp16 runs whose
    ranks agreed anyway train as they did with GradScaler."""
    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    theirs.load_state_dict(ours.state_dict())
    opt_ours, opt_theirs = torch.optim.SGD(ours.parameters(), lr=0.1), torch.optim.SGD(theirs.parameters(), lr=0.1)
    scaler = DynamicLossScaler(enabled=True, init_scale=1024.0, growth_interval=2)
    reference = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
    for i in range(7):
        x = torch.randn(4, 8)
        for model, opt, s in ((ours, opt_ours, scaler), (theirs, opt_theirs, reference)):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = model(x).float().pow(2).mean()
            s.scale(loss).backward()
            if i == 3:
                model.weight.grad[0, 0] = float("inf")
            s.unscale_(opt)
            s.step(opt)
            s.update()
        assert scaler.loss_scale == reference.get_scale()
        assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters(), strict=True))
    assert scaler.state_dict() == reference.state_dict()


def test_scaler_state_round_trips_and_is_empty_when_disabled():
    scaler = DynamicLossScaler(enabled=True)
    scaler.loss_scale, scaler.growth_tracker = 512.0, 7
    restored = DynamicLossScaler(enabled=True)
    restored.load_state_dict(scaler.state_dict())
    assert restored.state_dict() == scaler.state_dict()
    assert DynamicLossScaler(enabled=False).state_dict() == {}
    with pytest.raises(RuntimeError):
        restored.load_state_dict({})
