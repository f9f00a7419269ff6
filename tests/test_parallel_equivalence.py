"""Every parallel layout computes the training a single process computes.

Each layout trains the tiny GPT-2 for 6 steps with the same global batch (4 sequences) and
seed as one process, with gradient clipping off, and must give the same losses and, gathered
whole with --save-model, the same weights. Clipping off matters: a clip that bites at every
step (or AdamW, which divides each element by its own gradient scale) hands the optimizer the
same update whether a layout averages its gradients or sums them, so only plain SGD without
clipping sees a gradient of the wrong scale (the negative control below shows both):

- SGD in fp32: the update is linear in the gradient, so only summation order differs:
  per-tensor relative difference of the weights at most 1e-5.
- AdamW in fp32: the update m / (sqrt(v) + eps) normalises each element by its own gradient
  scale, so an element whose gradient is near eps (1e-8) moves by up to lr whatever the last
  bits of its gradient are; rounding-level differences then show up at about 2e-4 of a
  tensor's norm after 6 steps (measured). The test allows 1e-3, five times that and still
  far below what a wrong gradient gives (the broken-TP test below differs by far more).
"""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from hpml_core import tensor_parallel
from hpml_core.contract import collectives
from hpml_core.model import GPT, model_dims
from tests.conftest import engine, losses, rank_files
from tests.layouts import ADAMW_LAYOUTS, COMMON, LAYOUTS, OPTIMIZERS, STEPS
from tests.profiled import (assert_profile_holds, contract_collectives, expected_collectives,
                            measured_collectives)

def weight_differences(out, reference) -> dict[str, float]:
    """Per-tensor relative difference of the saved weights."""
    ours, ref = torch.load(out / "model.pt"), torch.load(reference / "model.pt")
    assert ours.keys() == ref.keys()
    return {name: ((ours[name] - ref[name]).norm() / ref[name].norm()).item() for name in ref}


def assert_same_training(out, reference, tolerance: float) -> None:
    assert losses(out) == pytest.approx(losses(reference), abs=1e-5)
    worst = max(weight_differences(out, reference).items(), key=lambda kv: kv[1])
    assert worst[1] <= tolerance, f"{worst[0]} differs by {worst[1]:.2e} (allowed {tolerance:.0e})"


@pytest.mark.parametrize("layout, optimizer", [(layout, "sgd") for layout in LAYOUTS] +
                         [(layout, "adamw") for layout in ADAMW_LAYOUTS])
def test_layout_trains_exactly_like_one_process(layout, optimizer, trained):
    out = trained(optimizer, layout)
    files = rank_files(out)
    nproc, mode, tp, batch, accum = LAYOUTS[layout]
    assert sorted(files) == list(range(nproc))
    for rank, record in files.items():
        assert record["status"] == "COMPLETED"
        assert (record["dp_rank"], record["tp_rank"]) == (rank // tp, rank % tp)  # TP groups are adjacent ranks
        assert record["global_batch"] == 4
        # each token once: the run's figure is the global batch's, a TP rank's share is 1/tp of its replica's
        t = record["throughput"]
        assert t["tokens_per_step"] == 4 * 64
        assert t["rank_tokens_per_s"] == pytest.approx(batch * accum * 64 / tp / t["step_time_median_s"])
        assert losses(out, rank) == losses(out, 0)
    assert_same_training(out, trained(optimizer, "single"), OPTIMIZERS[optimizer][1])


def test_zero3_really_partitions_the_parameters(trained):
    """Summed over a DP group, the ZeRO-3 partitions hold what one replica would hold whole (up
    to DeepSpeed's padding of each tensor's partition), and after the run no rank holds any
    parameter whole: with stage3_param_persistence_threshold 0 even the tiny ones are released."""
    n_tensors = len(list(GPT(model_dims("tiny", 512)).parameters()))
    tp_shard = {rank: record["model_state"]["param_elements_local"]
                for rank, record in rank_files(trained("sgd", "tp-2")).items()}
    cases = [("zero3-4", [[0, 1, 2, 3]], lambda tp_rank: model_dims("tiny", 512).params_total),
             ("dp2xtp2-zero3", [[0, 2], [1, 3]], lambda tp_rank: tp_shard[tp_rank])]
    for layout, dp_groups, replica_elements in cases:
        files = rank_files(trained("sgd", layout))
        for group in dp_groups:
            held = sum(files[rank]["model_state"]["param_elements_local"] for rank in group)
            whole = replica_elements(files[group[0]]["tp_rank"])
            assert whole <= held <= whole + len(group) * n_tensors
            assert all(files[rank]["model_state"]["param_elements_local"] < whole for rank in group)
        for record in files.values():
            assert record["model_state"]["full_params_resident"] == 0


def test_model_state_is_measured_as_expected_in_every_layout(trained):
    for layout in ["single", *LAYOUTS]:
        optimizer = "adamw" if layout in ("single", *ADAMW_LAYOUTS) else "sgd"
        for record in rank_files(trained(optimizer, layout)).values():
            state = record["model_state"]
            assert state["total_bytes"] == state["params_bytes"] + state["grads_bytes"] + state["optimizer_bytes"]
            # exact, DeepSpeed's padding of each partition included (hpml_core.contract.model_state)
            assert state["total_bytes"] == state["expected_bytes"], state["expectation"]


def test_dp2xtp2_zero3_holds_a_quarter_of_the_single_process_model_state(trained):
    """bf16, where ZeRO-3 and PyTorch AMP both keep 16 bytes per parameter with AdamW.

    Slack: parameters that TP leaves replicated (LayerNorms, row-parallel biases, position
    embedding) are divided by DP only, not by DP x TP: 16 B x replicated / 2 per rank, plus
    DeepSpeed's padding of each partition (at most one element per tensor per rank).
    """
    bf16 = ("--precision", "bf16")
    single = rank_files(trained("adamw", "single", bf16))[0]["model_state"]["total_bytes"]
    replicated = tensor_parallel.replicated_param_count(model_dims("tiny", 512))
    slack = 16 * replicated / 2 + 16 * len(list(GPT(model_dims("tiny", 512)).parameters()))
    for record in rank_files(trained("adamw", "dp2xtp2-zero3", bf16)).values():
        assert record["model_state"]["total_bytes"] <= single / 4 + slack


def test_breaking_the_tp_backward_all_reduce_breaks_the_equivalence(tmp_path, token_data, trained):
    """The negative control: without copy_to_tp's gradient all-reduce, each TP rank sees only
    its own share of the gradient of the activations entering a column-parallel layer."""
    script = tmp_path / "broken_tp.py"
    script.write_text(
        "from hpml_core import tensor_parallel\n"
        "tensor_parallel._CopyToTP.backward = staticmethod(lambda ctx, grad: (grad, None))\n"
        "from hpml_core.train import exit_quickly, main\n"
        "exit_quickly(main())\n"
    )
    out = tmp_path / "broken"
    args = [*COMMON, *OPTIMIZERS["sgd"][0], "--data", str(token_data), "--out", str(out),
            "--mode", "baseline", "--tp-size", "2", "--batch-size", "4"]
    engine(args, nproc=2, script=script)
    with pytest.raises(AssertionError):
        assert_same_training(out, trained("sgd", "single"), OPTIMIZERS["sgd"][1])
    assert max(weight_differences(out, trained("sgd", "single")).values()) > 1e-3
    # ...and its profiled steps miss the contract's backward all-reduces by exactly their bytes
    record = rank_files(out)[0]
    [line] = collectives.mismatches(expected_collectives(record), measured_collectives(record))
    assert line.startswith("all-reduce: expected 13 ") and "measured 8 " in line


SUMMING_DDP = (
    "import torch.distributed as dist\n"
    "from torch.nn.parallel import DistributedDataParallel\n"
    "def summed(group, bucket):  # DDP's own hook divides by the group's size first; this one does not\n"
    "    return dist.all_reduce(bucket.buffer(), group=group, async_op=True).get_future().then(lambda f: f.value()[0])\n"
    "original = DistributedDataParallel.__init__\n"
    "def init(self, *args, **kwargs):\n"
    "    original(self, *args, **kwargs)\n"
    "    self.register_comm_hook(self.process_group, summed)\n"
    "DistributedDataParallel.__init__ = init\n"
    "from hpml_core.train import exit_quickly, main\n"
    "exit_quickly(main())\n"
)


@pytest.mark.parametrize("clip", ["0", "0.5"])
def test_a_layout_that_sums_gradients_instead_of_averaging_them_is_caught_without_clipping(
        clip, tmp_path, token_data, trained):
    """The negative control of the equivalence at the true gradient scale: DDP on 4 ranks whose
    all-reduce sums the gradients (4 times the mean). Without clipping the SGD test catches it;
    with the clip the tests used to train with (0.5, which bites at every step: the gradient's
    norm is about 1.6), the clipped update is the same and the bug passes, which is why the
    equivalence tests train unclipped."""
    script = tmp_path / "summing_ddp.py"
    script.write_text(SUMMING_DDP)
    out = tmp_path / f"summing-clip-{clip}"
    common = [arg if previous != "--grad-clip" else clip for previous, arg in zip([None, *COMMON], COMMON)]
    args = [*common, *OPTIMIZERS["sgd"][0], "--data", str(token_data), "--out", str(out), "--mode", "ddp",
            "--batch-size", "1", "--profile-steps", "0"]
    engine(args, nproc=4, script=script)
    if clip == "0":
        with pytest.raises(AssertionError):
            assert_same_training(out, trained("sgd", "single"), OPTIMIZERS["sgd"][1])
        assert max(weight_differences(out, trained("sgd", "single")).values()) > 1e-2
    else:  # what clipping hides: compared with a single process clipped the same way
        reference = tmp_path / "single-clip-0.5"
        engine([*common, *OPTIMIZERS["sgd"][0], "--data", str(token_data), "--out", str(reference),
                "--batch-size", "4", "--profile-steps", "0"])
        assert max(weight_differences(out, reference).values()) < 1e-4


# Where each layout's step goes (the profiled window after the timed steps): the collective kinds
# each must show, and none other.
PROFILED = {"single": set(), "ddp-4": {"all-reduce"}, "zero3-4": {"all-gather", "reduce-scatter", "all-reduce"},
            "tp-2": {"all-reduce"}, "dp2xtp2-zero3": {"all-gather", "reduce-scatter", "all-reduce"},
            "dp2xtp2-allreduce": {"all-reduce"},
            **{name: {"all-reduce", "all-gather"} for name in
               ("zero1-2", "zero1-4", "zero2-2", "zero2-4", "dp2xtp2-zero1", "dp2xtp2-zero2")},
            "fsdp2-2": {"all-gather", "reduce-scatter"}, "fsdp2-2-accum-2": {"all-gather", "reduce-scatter"},
            "dp2xtp2-fsdp2": {"all-reduce", "all-gather", "reduce-scatter"}}


@pytest.mark.parametrize("layout", PROFILED)
def test_each_layout_s_profiled_steps_add_up_and_move_the_contract_s_bytes(layout, trained):
    for record in rank_files(trained("sgd", layout)).values():
        assert_profile_holds(record)
        assert len(record["profile"]["steps"]) == 2
        for step in record["profile"]["steps"]:
            assert step["parts_s"]["data"] > 0
            assert step["parts_s"]["recompute"] == 0  # no checkpointing here (with it: test_train.py)
            assert {c["kind"] for c in step["collectives"]} == PROFILED[layout]
        if PROFILED[layout]:  # negative control: a formula that misses any one collective is caught
            for drop in range(len(contract_collectives(record))):
                assert collectives.mismatches(expected_collectives(record, drop), measured_collectives(record)) != []


def test_the_trace_of_a_rank_is_chrome_trace_json_with_its_collectives(trained):
    out = trained("sgd", "dp2xtp2-zero3")
    record = rank_files(out)[1]
    trace = out / record["profile"]["trace_file"]
    assert trace.stat().st_size == record["profile"]["trace_bytes"]
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"hpml.step", "hpml.forward", "hpml.backward", "hpml.optimizer", "hpml.data"} <= names
    assert {"gloo:all_gather", "gloo:all_reduce", "c10d::_reduce_scatter_base_", "c10d::allreduce_"} <= names
    assert sum(e.get("name") == "hpml.step" for e in events) == 2


def test_the_profiled_window_changes_nothing_the_run_measured(tmp_path, token_data, trained):
    """The window comes after the timed steps, the losses and the saved model: a run without it
    trains, times and saves exactly the same."""
    profiled = trained("sgd", "single")
    out = tmp_path / "unprofiled"
    engine([*COMMON, *OPTIMIZERS["sgd"][0], "--data", str(token_data), "--out", str(out), "--batch-size", "4",
            "--profile-steps", "0"])
    plain, with_window = rank_files(out)[0], rank_files(profiled)[0]
    assert plain["profile"] is None and plain["profile_missing_reason"] == "--profile-steps 0"
    assert losses(out) == losses(profiled)
    assert plain["throughput"]["timed_steps"] == with_window["throughput"]["timed_steps"] == STEPS - 1
    assert weight_differences(out, profiled) == dict.fromkeys(weight_differences(out, profiled), 0.0)
    assert with_window["profile"]["overhead"] is not None and with_window["profile"]["trace_bytes"] > 0


def test_fsdp2_kept_gathered_after_the_forward_trains_the_same_and_gathers_each_block_once(trained):
    """``--fsdp-reshard-after-forward false`` keeps each block gathered from its forward to its
    backward: the same training, and the contract's all-gathers drop from 1 + 2L to 1 + L per
    micro-step, which the profiled steps must show."""
    kept = trained("sgd", "fsdp2-2", ("--fsdp-reshard-after-forward", "false"))
    assert_same_training(kept, trained("sgd", "fsdp2-2"), OPTIMIZERS["sgd"][1])
    layers = model_dims("tiny", 512).n_layer
    for record in rank_files(kept).values():
        assert record["config"]["fsdp_reshard_after_forward"] is False
        expected = expected_collectives(record)
        assert expected["all-gather"].count == 1 + layers
        for step in range(len(record["profile"]["steps"])):
            assert collectives.mismatches(expected, measured_collectives(record, step)) == []
    resharded = rank_files(trained("sgd", "fsdp2-2"))[0]
    assert expected_collectives(resharded)["all-gather"].count == 1 + 2 * layers
