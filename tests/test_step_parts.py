"""Cutting a step into parts (``hpml_core.trace_parts``) on a trace written by hand, where every
part's length is known; the layouts' real traces are checked in test_parallel_equivalence.py."""

from __future__ import annotations

import pytest

from hpml_core.trace_parts import UnreadableTrace, cut_steps

MAIN, GLOO = 1, 2


def op(name, ts, dur, tid=MAIN, **args):
    return {"ph": "X", "name": name, "ts": ts, "dur": dur, "tid": tid, "pid": 7, "args": args}


def a_step(collective="c10d::allreduce_", gloo="gloo:all_reduce", dims=((1000,),), in_flight=(35, 30)):
    """100 µs: data 0-5, forward 5-40 (computing 5-35), backward 40-90 (computing 40-50, 65-90),
    optimizer 90-98; one collective in flight over ``in_flight`` (start, length)."""
    start, length = in_flight
    return [
        op("hpml.step", 0, 100), op("hpml.data", 0, 5), op("hpml.forward", 5, 35), op("aten::mm", 5, 30),
        op(collective, 34, 1, **{"Input Dims": [list(map(list, dims))] if collective == "c10d::allreduce_"
                                 else [list(d) for d in dims], "Input type": ["TensorList"]}),
        op(gloo, start, length, tid=GLOO, **{"Input Dims": [[1000]], "Input type": ["c10::BFloat16"]}),
        op("hpml.backward", 40, 50), op("aten::mm", 40, 10), op("aten::mm", 65, 25),
        op("hpml.optimizer", 90, 8), op("aten::add_", 90, 8),
    ]


def test_exposed_communication_is_what_no_operator_covers():
    [step] = cut_steps(a_step())
    parts = {k: round(v * 1e6, 6) for k, v in step.parts_s.items() if v}
    # in flight 35-65: 35-40 exposed in the forward, 40-50 hidden, 50-65 exposed; nothing runs 98-100
    assert parts == {"data": 5, "forward": 30, "all-reduce": 20, "backward": 35, "optimizer": 8, "other": 2}
    assert sum(step.parts_s.values()) == pytest.approx(step.wall_s)
    assert step.comm_in_flight_s == pytest.approx(30e-6) and step.comm_hidden_s == pytest.approx(10e-6)
    [use] = step.collectives
    assert (use.kind, use.count, use.bytes) == ("all-reduce", 1, 2000)  # 1000 bf16 elements


def test_a_collective_fully_under_computation_is_hidden():
    [step] = cut_steps(a_step(in_flight=(66, 20)))
    assert step.parts_s["all-reduce"] == 0 and step.comm_hidden_s == pytest.approx(20e-6)


def test_a_reduce_scatter_run_as_gloo_all_reduce_is_named_by_its_c10d_operator():
    [step] = cut_steps(a_step("c10d::_reduce_scatter_base_", dims=((500,), (1000,))))
    [use] = step.collectives
    assert (use.kind, use.bytes) == ("reduce-scatter", 2000)  # its whole input, not its output
    assert step.parts_s["reduce-scatter"] > 0 and step.parts_s["all-reduce"] == 0


def test_a_trace_hpml_cannot_read_is_refused_not_guessed():
    with pytest.raises(UnreadableTrace, match="no hpml.step"):
        cut_steps([op("aten::mm", 0, 5)])
    with pytest.raises(UnreadableTrace, match="c10d::alltoall_"):
        cut_steps(a_step("c10d::alltoall_"))
    orphan = [e for e in a_step() if not e["name"].startswith("c10d::")]
    with pytest.raises(UnreadableTrace, match="no c10d operator"):
        cut_steps(orphan)


def gpu_step(kernel_name="ncclDevKernel_AllReduce_Sum_f32_RING_LL"):
    """100 µs on the host, synchronised at its end. The host launches (correlation ids 1-4): in the
    forward a matmul (device 10-40), from autograd's thread in the backward a matmul (50-70) and,
    inside DDP's c10d all-reduce of 1000 elements, an NCCL kernel (60-90); in the optimizer a
    kernel (92-96). The device idles 0-10, 40-50, 90-92 and 96-100."""
    def launch(ts, correlation, tid=MAIN):
        return {**op("cudaLaunchKernel", ts, 1, tid=tid), "cat": "cuda_runtime", "args": {"correlation": correlation}}

    def kernel(name, ts, dur, correlation, stream=7):
        return {**op(name, ts, dur, tid=stream), "cat": "kernel", "pid": 0, "args": {"correlation": correlation}}
    AUTOGRAD = 3
    return [
        op("hpml.step", 0, 100), op("hpml.data", 0, 2), op("hpml.forward", 2, 38), launch(5, 1),
        op("hpml.backward", 40, 50), launch(45, 2, tid=AUTOGRAD),
        op("c10d::allreduce_", 55, 3, tid=AUTOGRAD, **{"Input Dims": [[[1000]]], "Input type": ["TensorList"]}),
        launch(56, 3, tid=AUTOGRAD), op("hpml.optimizer", 90, 8), launch(91, 4),
        kernel("ampere_bf16_gemm", 10, 30, 1), kernel("ampere_bf16_gemm", 50, 20, 2),
        kernel(kernel_name, 60, 30, 3, stream=9), kernel("multi_tensor_apply_kernel", 92, 4, 4),
    ]


def test_on_a_gpu_the_device_timeline_decides_and_each_kernel_counts_where_it_was_launched():
    [step] = cut_steps(gpu_step())
    parts = {k: round(v * 1e6, 6) for k, v in step.parts_s.items() if v}
    # forward 10-40; backward 50-70 (60-70 under it hidden); exposed all-reduce 70-90; optimizer 92-96; idle 20
    assert parts == {"forward": 30, "backward": 20, "all-reduce": 20, "optimizer": 4, "other": 26}
    assert step.comm_hidden_s == pytest.approx(10e-6) and step.comm_in_flight_s == pytest.approx(30e-6)
    [use] = step.collectives
    assert (use.kind, use.count, use.bytes) == ("all-reduce", 1, 4000)  # f32 in the kernel's name


def test_an_nccl_kernel_without_an_element_type_is_refused():
    with pytest.raises(UnreadableTrace, match="no element type"):
        cut_steps(gpu_step("ncclDevKernel_AllReduce_Sum_RING_LL"))


def test_the_profiler_s_copies_of_the_ranges_on_the_gpu_streams_are_not_ranges():
    """kineto draws each host range again on the device's streams (gpu_user_annotation), later than
    the host opened it: a copy of hpml.recompute over the backward's kernels must not claim them,
    nor a copy of hpml.step make a step."""
    copies = [{**op(name, ts, dur, tid=7), "cat": "gpu_user_annotation", "pid": 0}
              for name, ts, dur in (("hpml.step", 10, 86), ("hpml.recompute", 45, 30))]
    [step] = cut_steps(gpu_step() + copies)
    assert step.parts_s["recompute"] == 0 and step.parts_s["backward"] == pytest.approx(20e-6)


def test_an_nccl_kernel_named_without_a_type_takes_its_c10d_operator_s():
    events = gpu_step("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)")
    [enqueue] = [e for e in events if e["name"] == "c10d::allreduce_"]
    enqueue.update(name="c10d::_allgather_base_", args={"Input Dims": [[2000], [1000]],
                                                        "Input type": ["c10::BFloat16", "c10::BFloat16"]})
    [use] = cut_steps(events)[0].collectives
    assert (use.kind, use.bytes) == ("all-gather", 4000)  # the gathered output, 2000 bf16 elements


def test_over_nccl_a_group_of_one_moves_nothing_and_the_contract_states_nothing():
    """A 1-process ZeRO-3 step over NCCL: DeepSpeed still calls the reduce-scatter, but NCCL
    only copies on the device (``ncclLaunchOneRank``): the cut finds no collective, and the
    contract over NCCL expects none, while over gloo (which runs it, as CPU traces show) it
    expects the reduce-scatter; with two DP ranks both backends expect the same."""
    from pathlib import Path

    from hpml_core.contract import collectives
    from hpml_core.contract.config import TrainConfig
    from hpml_core.contract.layout import Layout
    from hpml_core.model import model_dims

    events = gpu_step()
    for event in events:
        if event["name"] == "c10d::allreduce_":
            event.update(name="c10d::_reduce_scatter_base_", args={"Input Dims": [[1000], [1000]],
                                                                   "Input type": ["float", "float"]})
        if event["name"].startswith("ncclDevKernel"):
            event.update(name="Memcpy DtoD (Device -> Device)", cat="gpu_memcpy")
    [step] = cut_steps(events)
    assert step.collectives == [] and step.comm_in_flight_s == 0
    assert step.parts_s["backward"] == pytest.approx(40e-6)  # the copy is the backward's work

    zero3, dims = TrainConfig(mode="zero3", data=Path("unused")), model_dims("tiny", 512)
    assert collectives.per_step(zero3, dims, Layout(1, 1), "nccl") == []
    assert {c.kind for c in collectives.per_step(zero3, dims, Layout(1, 1), "gloo")} == {"reduce-scatter", "all-reduce"}
    under_tp = collectives.per_step(zero3, dims, Layout(2, 2), "nccl")  # DP 1 x TP 2: TP's all-reduces only
    assert under_tp and {c.group for c in under_tp} == {"tp"}
    for mode in ("ddp", "zero1", "zero2", "zero3", "fsdp2"):
        config = TrainConfig(mode=mode, precision="fp16", data=Path("unused"))
        assert collectives.per_step(config, dims, Layout(4, 2), "nccl") == \
            collectives.per_step(config, dims, Layout(4, 2), "gloo")
        assert collectives.per_step(config, dims, Layout(1, 1), "nccl") == []
