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
