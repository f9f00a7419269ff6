"""The torch-free contract for DeepSpeed's ZeRO-1 and ZeRO-2 (``--mode zero1|zero2``) is exact:
the model state a rank holds (``hpml_core.contract.model_state``), the memory model's lines for
them (``hpml_core.contract.memory_model``), the collectives of a step
(``hpml_core.contract.collectives``) and the step-time parts (``hpml_core.contract.step_time``).

Three kinds of evidence:

- hand computations of the contract, on the tiny model and on GPT-2 Large;
- in-process measurements (this file is also the script each rank runs: ``worker`` below): each
  rank builds the model exactly as the engine does (``hpml_core.parallelize``), for ZeRO-1 and
  ZeRO-2 on 2 and 4 DP ranks and on DP 2 x TP 2, fp32 and bf16, AdamW and SGD, on the tiny model
  and on an odd-sized one (width 90, 3 layers, 96 positions) whose vector group (3,690 elements;
  2,745 per TP rank) is not a multiple of DeepSpeed's alignment (2 x dp), so that it pads and
  splits parameters between partitions (and ZeRO-2 with two micro-steps of accumulation). Each
  build runs the forward pass under ``saved_tensors_hooks`` (the activation lines), a step, then a
  second step where it measures what DeepSpeed allocates for the backward (ZeRO-2's reduce
  buckets and, accumulating, each micro-step's gradient partition beside the kept one; ZeRO-1's
  gradients before their reduction), the model state with ``measure_model_state.zero12_engine`` between
  ``engine.backward`` and ``engine.step`` (where the gradients exist), and what is left of the
  gradients after ``engine.step`` (nothing: why the stepper must measure before it);
- real engine launches (``python -m hpml_core.train`` on each rank, the odd model, bf16, AdamW,
  clipping on), whose profiled steps' collectives must equal the contract's, kind by kind, and
  whose rank files' model state must equal each rank's expectation. The latter needs
  ``DeepSpeedStepper.step`` to measure ZeRO-1/2 before ``engine.step()`` and ``rank_result`` to
  pass the rank's DP rank to ``model_state.expected_bytes`` and ``memory_model.predict``.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import pytest

from hpml_core.contract import collectives
from hpml_core.contract.buckets import ZERO12_BUCKET
from hpml_core.contract.config import TrainConfig
from hpml_core.contract.layout import Layout
from hpml_core.contract.memory_model import predict, saved_for_backward
from hpml_core.contract.model_state import DTYPE_BYTES, param_numels, rank_model_state, zero12_groups
from hpml_core.contract.models import model_dims

VOCAB = 512  # the test tokenizer's (tests/conftest.py token_data)
SIZES = {
    "tiny": model_dims("tiny", VOCAB),
    "odd": replace(model_dims("tiny", VOCAB), name="odd", n_layer=3, n_head=6, n_embd=90, n_positions=96),
}
BATCH, SEQ = 2, 32
# name: world size, tp size
LAYOUTS = {"dp2": (2, 1), "dp4": (4, 1), "dp2xtp2": (4, 2)}
# each stage on each layout: (size, precision, optimizer), so that every one of them meets padding
BUILDS = [("odd", "bf16", "adamw"), ("odd", "fp32", "sgd"), ("tiny", "fp32", "adamw"), ("tiny", "bf16", "sgd")]
ACCUMULATED = dict(mode="zero2", layout="dp2", size="odd", precision="bf16", optimizer="adamw", grad_accum=2)


def case_config(case: dict, data: Path = Path("unused")) -> TrainConfig:
    return TrainConfig(mode=case["mode"], model="tiny", tp_size=LAYOUTS[case["layout"]][1], batch_size=BATCH,
                       seq_len=SEQ, precision=case["precision"], optimizer=case["optimizer"],
                       grad_accum=case.get("grad_accum", 1), data=data)


def _layout(case: dict) -> Layout:
    return Layout(*LAYOUTS[case["layout"]])


def _name(case: dict) -> str:
    accum = f" accum {case['grad_accum']}" if case.get("grad_accum", 1) > 1 else ""
    return (f"{case['mode']} {case['layout']} {case['size']} {case['precision']} {case['optimizer']}{accum} "
            f"rank {case['rank']}")


# ---------------------------------------------------------------- the contract by hand

def test_the_flat_groups_are_padded_to_twice_dp_and_partitioned_equally():
    """The tiny model's groups divide evenly; the odd model's vectors (3,690) pad to 3,692 on 2
    ranks and 3,696 on 4, and its matrices split parameters between partitions, which both ranks
    then keep whole."""
    tiny, odd = SIZES["tiny"], SIZES["odd"]
    assert [(g.flat, g.partition, g.zeros) for g in zero12_groups(tiny, 1, 2, 0)] == [(147456, 73728, 0), (1792, 896, 0)]
    assert [(g.flat, g.partition) for g in zero12_groups(odd, 1, 2, 0)] == [(346320, 173160), (3692, 1846)]
    assert [(g.flat, g.partition) for g in zero12_groups(odd, 1, 4, 0)] == [(346320, 86580), (3696, 924)]
    assert [g.zeros for g in zero12_groups(odd, 1, 2, 1)] == [0, 2]
    assert [g.zeros for g in zero12_groups(odd, 1, 4, 3)] == [0, 6]
    # 2,745 vectors per TP rank
    assert [(g.flat, g.partition) for g in zero12_groups(odd, 2, 2, 0)] == [(177480, 88740), (2748, 1374)]
    # rank 0's matrices: wte, wpe, block 0's four, and block 1's qkv, which crosses 173,160 (151,920 + 24,300)
    held = zero12_groups(odd, 1, 2, 0)[0].held
    assert held == (46080, 8640, 24300, 8100, 32400, 32400, 24300)
    second = zero12_groups(odd, 1, 2, 1)[0].held
    assert second[0] == held[-1]  # the straddling parameter, whole on both ranks
    assert sum(held) + sum(second) - held[-1] == 346320


def test_model_state_counts_whole_flats_kept_gradients_and_partitioned_optimizer_state():
    odd = SIZES["odd"]
    config = TrainConfig(mode="zero2", model="tiny", precision="bf16", optimizer="adamw", data=Path("unused"))
    state = rank_model_state(config, odd, 1, 2, 1)
    groups = zero12_groups(odd, 1, 2, 1)
    assert state.params == 2 * (346320 + 3692)
    assert state.grads == 2 * (sum(sum(g.held) for g in groups) + 2)  # + the vectors' two padding zeros
    assert state.optimizer == (4 + 8) * (173160 + 1846)
    assert state.total == 3_192_680  # measured by rank 1 of a real launch (bf16, AdamW)
    # ranks differ only in their gradients; None is the rank holding the most
    totals = [rank_model_state(config, odd, 1, 4, r).total for r in range(4)]
    assert totals == [1_926_480, 1_946_820, 1_995_060, 1_946_832]  # measured by a real 4-rank launch
    assert rank_model_state(config, odd, 1, 4).total == max(totals)
    # stage 1 holds the same bytes, in one tensor per kept gradient instead of one buffer
    stage1 = rank_model_state(config.model_copy(update={"mode": "zero1"}), odd, 1, 2, 1)
    assert stage1.total == state.total and len(stage1.tensor_bytes) > len(state.tensor_bytes)
    assert sum(stage1.tensor_bytes) == sum(state.tensor_bytes) == state.total
    # fp32 keeps a separate master copy: 4 + 4 + 4 (+ 8 with AdamW) bytes an element, SGD no moments
    sgd = rank_model_state(config.model_copy(update={"precision": "fp32", "optimizer": "sgd"}), SIZES["tiny"], 1, 2, 0)
    assert (sgd.params, sgd.grads, sgd.optimizer) == (596992, 331264, 298496)  # measured (zero2-2, fp32, SGD)


def test_zero1_reduces_in_greedily_packed_buckets():
    assert collectives.zero1_buckets([]) == 0
    assert collectives.zero1_buckets([10, 20, 30], bucket=50) == 2  # [10, 20] then [30]
    assert collectives.zero1_buckets([60, 10], bucket=50) == 2  # an oversized gradient is a bucket of its own
    assert collectives.zero1_buckets([50, 50], bucket=50) == 2
    # GPT-2 Large: stage 1's count follows from the groups' order; stage 2's, from autograd's, is not stated
    large = model_dims("gpt2-large", 50257)
    for mode, stated in (("zero1", True), ("zero2", False)):
        config = TrainConfig(mode=mode, model="gpt2-large", precision="bf16", data=Path("unused"))
        found = collectives.per_step(config, large, Layout(8, 1), "nccl")
        [grads] = [c for c in found if c.what.startswith("gradients")]
        assert (grads.count is not None) == stated and grads.elements == sum(n for _, n in param_numels(large, 1))
        assert grads.count is None or grads.count > grads.elements // ZERO12_BUCKET


def test_a_zero12_step_all_reduces_gradients_scalars_and_all_gathers_the_flats():
    tiny = SIZES["tiny"]
    grads = sum(n for _, n in param_numels(tiny, 1))
    for mode in ("zero1", "zero2"):
        fp32 = TrainConfig(mode=mode, model="tiny", precision="fp32", optimizer="sgd", grad_clip=0, data=Path("unused"))
        assert collectives.by_kind(collectives.per_step(fp32, tiny, Layout(2, 1), "gloo")) == {
            "all-reduce": collectives.KindTotal(1 + 2, 4 * grads + 2 * 4),  # one bucket, a norm per param group
            "all-gather": collectives.KindTotal(2, 4 * (147456 + 1792))}
        bf16 = fp32.model_copy(update={"precision": "bf16", "grad_clip": 1.0})  # clipping adds nothing
        assert collectives.by_kind(collectives.per_step(bf16, tiny, Layout(2, 1), "gloo"))["all-reduce"] == \
            collectives.KindTotal(1 + 1 + 2, 2 * grads + 1 + 2 * 4)  # + the overflow flag
        alone = collectives.by_kind(collectives.per_step(fp32, tiny, Layout(1, 1), "gloo"))
        assert set(alone) == {"all-reduce"}  # one DP rank: nothing to gather, the rest still issued
    accumulated = TrainConfig(mode="zero2", model="tiny", precision="fp32", grad_accum=2, data=Path("unused"))
    stage1 = accumulated.model_copy(update={"mode": "zero1"})
    per_kind = {m: collectives.by_kind(collectives.per_step(c, tiny, Layout(2, 1), "gloo"))["all-reduce"]
                for m, c in [("zero2", accumulated), ("zero1", stage1)]}
    assert per_kind["zero2"] == collectives.KindTotal(2 + 2, 2 * 4 * grads + 8)  # stage 2 reduces every micro-step
    assert per_kind["zero1"] == collectives.KindTotal(1 + 2, 4 * grads + 8)  # stage 1 at the boundary only


def test_memory_model_lines_for_zero12():
    odd = SIZES["odd"]
    for mode, buffer in (("zero1", "ZeRO-1 gradients until reduced"), ("zero2", "ZeRO-2 reduce buckets")):
        config = TrainConfig(mode=mode, model="tiny", precision="bf16", batch_size=BATCH, seq_len=SEQ,
                             data=Path("unused"))
        most = predict(config, odd, Layout(4, 1), device_type="cpu")
        per_rank = [predict(config, odd, Layout(4, 1), device_type="cpu", dp_rank=r) for r in range(4)]
        assert most.total_bytes == max(p.total_bytes for p in per_rank)
        assert [p.model_state_bytes for p in per_rank] == [
            rank_model_state(config, odd, 1, 4, r).total for r in range(4)]
        for p in [most, *per_rank]:
            assert p.whole_line(buffer).bytes > 0 and p.whole_line(buffer).formula
            assert p.total_bytes == sum(line.bytes for line in p.lines)
        names = {line.name for line in most.lines}
        assert "autocast weight copies" not in names  # DeepSpeed casts the model itself
        assert not any(name.startswith("ZeRO-3") for name in names)
        whole = sum(n for _, n in param_numels(odd, 1))
        if mode == "zero1":  # with the kept gradients, every gradient of the rank
            for r, p in enumerate(per_rank):
                kept = sum(sum(g.held) for g in zero12_groups(odd, 1, 4, r))
                assert p.whole_line(buffer).bytes == 2 * (whole - kept)
        else:
            assert most.line(buffer).bytes == 2 * 2 * ZERO12_BUCKET
    # activations: the cast model's, as under ZeRO-3
    zero3 = TrainConfig(mode="zero3", model="tiny", precision="bf16", batch_size=BATCH, seq_len=SEQ, data=Path("unused"))
    for mode in ("zero1", "zero2"):
        assert saved_for_backward(zero3.model_copy(update={"mode": mode}), odd, Layout(4, 1)) == \
            saved_for_backward(zero3, odd, Layout(4, 1))


def test_step_time_for_zero12():
    from hpml_core.contract.gpus import BY_KEY
    from hpml_core.contract.metrics import training_flops_per_token
    from hpml_core.contract.step_time import Performance, predict_step

    large = model_dims("gpt2-large", 50257)
    a100 = BY_KEY["a100-40gb"]
    speed = Performance(compute_efficiency=0.5, intra_node_gb_per_s=200.0, inter_node_gb_per_s=20.0,
                        device_tflops=None, source="test")
    grads = sum(n for _, n in param_numels(large, 1))
    groups = zero12_groups(large, 1, 4, 0)
    flat, partition = sum(g.flat for g in groups), sum(g.partition for g in groups)
    backward = 2 / 3 * training_flops_per_token(large, 1024) * 8 * 1024 / (0.5 * 312e12)
    for mode in ("zero1", "zero2"):
        config = TrainConfig(mode=mode, model="gpt2-large", precision="bf16", batch_size=8, seq_len=1024,
                             data=Path("unused"))
        step = predict_step(config, large, Layout(4, 1), 4, a100, speed)
        kinds = {k.kind: k for k in step.communication}
        # bf16 gradients all-reduced, the overflow flag and two fp32 norms; bf16 flats all-gathered
        assert kinds["all-reduce"].bytes == 2 * grads + 1 + 8
        assert kinds["all-gather"].bytes == 2 * flat
        assert kinds["all-gather"].hidden_s == 0  # after the optimizer step
        assert step.parts_s["optimizer"] == pytest.approx(partition * (28 + 12 + 4) / 1555e9)
        all_reduce = kinds["all-reduce"]
        if mode == "zero1":  # after the backward
            assert all_reduce.hidden_s == 0
        else:  # overlap_comm: all but the last bucket, behind the backward
            seconds = 2 * 3 / 4 * 2 * grads / 200e9
            assert all_reduce.hidden_s == pytest.approx(min(seconds * (1 - ZERO12_BUCKET / grads), backward))
            assert all_reduce.hidden_s > 0


# ---------------------------------------------------------------- the worker (each rank runs this file)

def builds_for(world: int) -> list[dict]:
    builds = [dict(mode=mode, layout=layout, size=size, precision=precision, optimizer=optimizer)
              for layout, (w, _) in LAYOUTS.items() if w == world
              for mode in ("zero1", "zero2") for size, precision, optimizer in BUILDS]
    return builds + ([ACCUMULATED] if world == 2 else [])


def _storages(tensors) -> int:
    seen = {}
    for t in tensors:
        if t is not None and t.numel() > 0:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _measure(build: dict, rank: int, world: int, record_dir: Path) -> dict:
    import torch

    from hpml_core import measure_model_state
    from hpml_core.mesh import build_mesh
    from hpml_core.model import GPT
    from hpml_core.parallelize import parallelize

    config, dims = case_config(build), SIZES[build["size"]]
    mesh = build_mesh(_layout(build), rank)
    with torch.device("meta"):
        model = GPT(dims, attn=config.attn)
    stepper = parallelize(model, mesh, config, torch.device("cpu"), record_dir)
    engine, zero = stepper.engine, stepper.engine.optimizer
    x, y = torch.randint(0, dims.vocab_size, (2, BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    for micro in range(config.grad_accum):  # the first optimizer step, which creates AdamW's moments
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if micro == 0 else nullcontext():
            loss = stepper.loss_fn(engine(x), y)
        engine.backward(loss)
        engine.step()

    buffers = {"buckets": 0, "before_reduction": 0, "partitions": 0}
    setup_buckets, reduce_gradients = zero.setup_buckets, zero.reduce_gradients
    copy_grads_in_partition = zero.copy_grads_in_partition

    def recording_setup_buckets():  # ZeRO-2: at each gradient hook, the reduce buckets exist after it
        setup_buckets()
        buffers["buckets"] = max(buffers["buckets"], _storages(b for bucket in zero.ipg_buckets.values()
                                                               for b in bucket.buffer))

    def recording_reduce_gradients(*args, **kwargs):  # ZeRO-1: after the backward, before its reduction
        buffers["before_reduction"] = _storages(p.grad for p in model.parameters())
        return reduce_gradients(*args, **kwargs)

    def recording_copy_grads_in_partition(*args, **kwargs):  # ZeRO-2: the kept gradients, and this micro-step's
        copy_grads_in_partition(*args, **kwargs)
        kept = [t for group in zero.all_grad_tensors.values() if group is not None for t in group]
        buffers["partitions"] = max(buffers["partitions"], _storages([zero.grads_in_partition, *kept]))

    zero.setup_buckets, zero.reduce_gradients = recording_setup_buckets, recording_reduce_gradients
    zero.copy_grads_in_partition = recording_copy_grads_in_partition
    for _ in range(config.grad_accum):
        loss = stepper.loss_fn(engine(x), y)
        engine.backward(loss)
        if engine.is_gradient_accumulation_boundary():
            state = measure_model_state.zero12_engine(engine)  # where the proposed DeepSpeedStepper.step measures
        engine.step()
    after = measure_model_state.zero12_engine(engine)
    return {**build, "rank": rank, "dp_rank": mesh.dp_rank, "model_state": state,
            "grads_after_step": after["grads_bytes"], "saved_bytes": sum(saved.values()), **buffers}


def worker(builds_file: str, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    results = [_measure(build, rank, world, Path(out_dir)) for build in json.loads(Path(builds_file).read_text())]
    (Path(out_dir) / f"measured-{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


# ---------------------------------------------------------------- in-process measurements

@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> list[dict]:
    """Every build, measured by each rank of a launch of 2 and of 4 processes."""
    from tests.conftest import engine

    results = []
    for world in (2, 4):
        out = tmp_path_factory.mktemp(f"zero12-{world}")
        builds = out / "builds.json"
        builds.write_text(json.dumps(builds_for(world)))
        engine([str(builds), str(out)], nproc=world, script=Path(__file__))
        for rank in range(world):
            results += json.loads((out / f"measured-{rank}.json").read_text())
    return results


def test_every_build_was_measured(measured):
    assert len(measured) == 2 * len(BUILDS) * (2 + 4 + 4) + 2
    assert {case["layout"] for case in measured} == set(LAYOUTS)


def test_model_state_is_exactly_each_ranks_expectation(measured):
    differ = False
    for case in measured:
        config, dims, layout = case_config(case), SIZES[case["size"]], _layout(case)
        state, expected = case["model_state"], rank_model_state(config, dims, layout.tp_size, layout.dp_size,
                                                                case["dp_rank"])
        assert (state["params_bytes"], state["grads_bytes"], state["optimizer_bytes"]) == \
               (expected.params, expected.grads, expected.optimizer), _name(case)
        prediction = predict(config, dims, layout, device_type="cpu", dp_rank=case["dp_rank"])
        assert prediction.model_state_bytes == expected.total, _name(case)
        most = rank_model_state(config, dims, layout.tp_size, layout.dp_size)
        assert expected.total <= most.total
        differ |= expected.total < most.total
    assert differ  # some ranks keep fewer gradients than others


def test_the_optimizer_step_frees_the_gradients_so_they_are_measured_before_it(measured):
    for case in measured:
        assert case["model_state"]["grads_bytes"] > 0 and case["grads_after_step"] == 0, _name(case)


def test_zero2_allocates_two_reduce_buckets_and_zero1_holds_every_gradient_until_it_reduces(measured):
    for case in measured:
        config, dims, layout = case_config(case), SIZES[case["size"]], _layout(case)
        prediction = predict(config, dims, layout, device_type="cpu", dp_rank=case["dp_rank"])
        lines = {line.name: prediction.whole_line(line.name).bytes for line in prediction.lines}
        kept = DTYPE_BYTES[case["precision"]] * sum(
            sum(g.held) for g in zero12_groups(dims, layout.tp_size, layout.dp_size, case["dp_rank"]))
        if case["mode"] == "zero2":
            assert case["buckets"] == lines["ZeRO-2 reduce buckets"], _name(case)
            # from the second micro-step on, two gradient partitions: the kept one and the micro-step's
            assert case["partitions"] == kept + lines.get("ZeRO-2 micro-step's gradient partition", 0), _name(case)
            assert ("ZeRO-2 micro-step's gradient partition" in lines) == (case.get("grad_accum", 1) > 1)
        else:
            assert case["buckets"] == 0
            assert case["before_reduction"] == kept + lines.get("ZeRO-1 gradients until reduced", 0), _name(case)


def test_activations_are_the_cast_models(measured):
    for case in measured:
        predicted = saved_for_backward(case_config(case), SIZES[case["size"]], _layout(case), device_type="cpu")
        assert abs(predicted - case["saved_bytes"]) <= 0.05 * case["saved_bytes"], \
            f"{_name(case)}: predicted {predicted:,}, saved {case['saved_bytes']:,}"


# ---------------------------------------------------------------- real engine launches

ENGINE_RUNS = {"zero1-4": ("zero1", 4, 1), "dp2xtp2-zero2": ("zero2", 4, 2)}


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory, token_data) -> dict[str, Path]:
    """The odd model trained by the real engine, bf16, AdamW, clipping on, with its profiled window."""
    from tests.conftest import engine, engine_script_with_tiny_sized_as

    root = tmp_path_factory.mktemp("zero12-engine-runs")
    script = engine_script_with_tiny_sized_as(SIZES["odd"], root)
    runs = {}
    for name, (mode, world, tp) in ENGINE_RUNS.items():
        runs[name] = root / name
        engine(["--test", "--seq-len", str(SEQ), "--steps", "3", "--warmup-steps", "1", "--batch-size", str(BATCH),
                "--precision", "bf16", "--optimizer", "adamw", "--grad-clip", "1.0", "--mode", mode,
                "--tp-size", str(tp), "--data", str(token_data), "--out", str(runs[name])], nproc=world, script=script)
    return runs


@pytest.mark.parametrize("name", ENGINE_RUNS)
def test_profiled_steps_move_the_contracts_collectives(name, engine_runs):
    from tests.conftest import rank_files

    for rank, record in rank_files(engine_runs[name]).items():
        config = TrainConfig.model_validate(record["config"])
        expected = collectives.by_kind(collectives.per_step(config, SIZES["odd"],
                                                            Layout(record["world_size"], record["tp_size"]),
                                                            config.backend_on(record["device_type"])))
        assert set(expected) == {"all-reduce", "all-gather"}
        for step in record["profile"]["steps"]:
            measured = {c["kind"]: collectives.KindTotal(c["count"], c["bytes"]) for c in step["collectives"]}
            assert collectives.mismatches(expected, measured) == [], f"{name} rank {rank}"


@pytest.mark.parametrize("name", ENGINE_RUNS)
def test_rank_files_model_state_is_each_ranks_expectation(name, engine_runs):
    """Needs DeepSpeedStepper.step to measure ZeRO-1/2 between engine.backward and engine.step,
    and rank_result to pass the rank's DP rank to the expectation and the prediction."""
    from tests.conftest import rank_files

    for rank, record in rank_files(engine_runs[name]).items():
        config = TrainConfig.model_validate(record["config"])
        expected = rank_model_state(config, SIZES["odd"], record["tp_size"], record["dp_size"], record["dp_rank"])
        state = record["model_state"]
        assert (state["params_bytes"], state["grads_bytes"], state["optimizer_bytes"]) == \
               (expected.params, expected.grads, expected.optimizer), f"{name} rank {rank}"
        assert state["expected_bytes"] == state["total_bytes"]
        assert record["prediction"]["model_state_bytes"] == state["total_bytes"]


if __name__ == "__main__":
    worker(*sys.argv[1:])
