"""Cut each profiled step of a Chrome trace into its parts (``hpml_core.contract.step_parts``).

Torch-free: it reads the trace ``torch.profiler`` exported (a list of events), so the cutting
is tested on traces written by hand as well as on real ones.

On a CPU (gloo) a rank's work is its main thread: an operator running there (``aten::…``) is
computing; a collective is in flight from the start to the end of its ``gloo:…`` event on one
of gloo's worker threads. The collective's kind and buffer are read from the ``c10d::…``
operator that enqueued it on the main thread (gloo runs a reduce-scatter as an all-reduce, so
its own name cannot tell), its element type from gloo's event. Each instant of a step goes to one
part: exposed communication when a collective is in flight and no operator runs, else the
innermost range the engine opened (``hpml.forward`` …), else ``other``.

On a GPU (NCCL) the device's timeline decides: a compute kernel or a copy running on any stream
is computing, and belongs to the range that was open when the host launched it (matched by the
profiler's correlation id; the backward's kernels are launched from autograd's own thread, so
ranges of every host thread count); an NCCL kernel is a collective in flight, named and sized by
the ``c10d::…`` operator that launched it, its element type read from the kernel's name. An
instant with no kernel running is ``other``: the device idled while the host prepared work. Ranks
that share one GPU talk over gloo (NCCL refuses two ranks on a device): their collectives are
gloo's, in flight on the host, exposed when no kernel runs meanwhile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpml_core.contract.step_parts import (COLLECTIVE_KINDS, PARTS, RANGE_PREFIX, STEP_RANGE, CollectiveUse,
                                           ProfiledStep)

# Innermost first: recomputation runs inside the backward, data fetching inside a step.
RANGE_PRIORITY = ("recompute", "optimizer", "backward", "forward", "data")
ELEMENT_BYTES = {"float": 4, "double": 8, "c10::BFloat16": 2, "c10::Half": 2, "long int": 8, "int": 4,
                 "short int": 2, "bool": 1, "unsigned char": 1, "signed char": 1}
# c10d operator: (kind, the gloo event it runs as, which of its inputs is the whole buffer)
C10D_OPS = {
    "c10d::allreduce_": ("all-reduce", "gloo:all_reduce", 0),
    "c10d::broadcast_": ("broadcast", "gloo:broadcast", 0),
    "c10d::_allgather_base_": ("all-gather", "gloo:all_gather", 0),
    "c10d::_reduce_scatter_base_": ("reduce-scatter", "gloo:all_reduce", 1),
}
CPU_HOW = ("CPU: main thread's aten operators = computing; gloo worker threads' collectives = in flight; "
           "kind and buffer from the c10d operator that enqueued each")
GPU_HOW = ("GPU: compute kernels and copies on the device's timeline = computing, each in the range that launched it; "
           "NCCL kernels = in flight, kind and buffer from the c10d operator that launched each")
# The element type in an NCCL kernel's name (ncclDevKernel_AllReduce_Sum_bf16_RING_LL)
NCCL_ELEMENT_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "i8": 1, "u8": 1, "i32": 4, "u32": 4, "i64": 8,
                      "u64": 8, "f8e4m3": 1, "f8e5m2": 1}
DEVICE_WORK = ("kernel", "gpu_memcpy", "gpu_memset")


@dataclass(frozen=True)
class Collective:
    kind: str
    bytes: int
    start: float  # microseconds, the trace's clock
    end: float


def _end(event: dict) -> float:
    return event["ts"] + event.get("dur", 0)


def _numel(dims) -> int:
    """Elements of one tensor's dims, or of a list of tensors' dims."""
    if dims and isinstance(dims[0], list):
        return sum(_numel(d) for d in dims)
    count = 1
    for d in dims:
        count *= d
    return count


def _complete(events: list[dict]) -> list[dict]:
    """The trace's complete events, without the copies of the engine's ranges that the profiler
    draws on the GPU's streams (``gpu_user_annotation``): the host's ranges are the ones that count."""
    return [e for e in events if e.get("ph") == "X" and "ts" in e and isinstance(e.get("name"), str)
            and e.get("cat") != "gpu_user_annotation"]


class UnreadableTrace(ValueError):
    """The trace lacks what the cutting needs (a collective hpml cannot name, a step range)."""


def gloo_collectives(events: list[dict]) -> list[Collective]:
    """Each gloo collective of the trace (on gloo's worker threads), named by the c10d operator
    that enqueued it (on the thread that called it)."""
    enqueued = sorted((e for e in events if e["name"].startswith("c10d::")), key=lambda e: e["ts"])
    running = sorted((e for e in events if e["name"].startswith("gloo:")), key=lambda e: e["ts"])
    unknown = sorted({e["name"] for e in enqueued} - set(C10D_OPS))
    if unknown:
        raise UnreadableTrace(f"collectives hpml cannot name: {', '.join(unknown)}")
    waiting = list(enqueued)
    found = []
    for work in running:
        numel = _numel((work.get("args", {}).get("Input Dims") or [[0]])[0])
        for op in waiting:  # the earliest enqueued, not yet matched, of this gloo name and size
            kind, gloo_name, buffer = C10D_OPS[op["name"]]
            dims = op.get("args", {}).get("Input Dims", [])
            whole = _numel(dims[buffer]) if len(dims) > buffer else 0
            matches_size = whole == numel or kind == "all-gather"  # gloo names an all-gather's input
            if gloo_name == work["name"] and op["ts"] <= work["ts"] and matches_size:
                waiting.remove(op)
                dtype = (work.get("args", {}).get("Input type") or ["?"])[0]
                if dtype not in ELEMENT_BYTES:
                    raise UnreadableTrace(f"{work['name']} of element type {dtype!r}")
                found.append(Collective(kind, whole * ELEMENT_BYTES[dtype], work["ts"], _end(work)))
                break
        else:
            raise UnreadableTrace(f"{work['name']} at {work['ts']} has no c10d operator that enqueued it")
    return found


def _cut(start: float, end: float, ranges: list[tuple[str, float, float]], computing: list[tuple[float, float]],
         collectives: list[Collective]) -> tuple[dict[str, float], float, float]:
    """(microseconds per part, in flight, hidden) of the step [start, end], by a sweep over its
    intervals' boundaries."""
    marks: list[tuple[float, int, str, int]] = []  # (time, +1/-1, what, collective index)
    for part, a, b in ranges:
        marks += [(max(a, start), 1, part, -1), (min(b, end), -1, part, -1)]
    for a, b in computing:
        marks += [(max(a, start), 1, "compute", -1), (min(b, end), -1, "compute", -1)]
    for i, c in enumerate(collectives):
        marks += [(max(c.start, start), 1, "comm", i), (min(c.end, end), -1, "comm", i)]
    marks = sorted(m for m in marks if start <= m[0] <= end)
    parts = dict.fromkeys(PARTS, 0.0)
    open_count = {name: 0 for name in (*RANGE_PRIORITY, "other", "compute")}  # other: a kernel launched outside them
    in_flight: set[int] = set()
    flying = hidden = 0.0
    now = start
    for time, delta, what, index in [*marks, (end, 0, "", -1)]:
        span = time - now
        if span > 0:
            if in_flight:
                flying += span
            if in_flight and not open_count["compute"]:
                parts[collectives[min(in_flight, key=lambda i: collectives[i].start)].kind] += span
            else:
                hidden += span if in_flight else 0.0
                parts[next((p for p in RANGE_PRIORITY if open_count[p]), "other")] += span
            now = time
        if what == "comm":
            (in_flight.add if delta > 0 else in_flight.discard)(index)
        elif what:
            open_count[what] += delta
    return parts, flying, hidden


def _ranges(events: list[dict]) -> list[tuple[str, float, float]]:
    return [(e["name"].removeprefix(RANGE_PREFIX), e["ts"], _end(e)) for e in events
            if e["name"].startswith(RANGE_PREFIX) and e["name"].removeprefix(RANGE_PREFIX) in RANGE_PRIORITY]


def _innermost(ranges: list[tuple[str, float, float]], time: float) -> str:
    open_ = {part for part, a, b in ranges if a <= time < b}
    return next((p for p in RANGE_PRIORITY if p in open_), "other")


def _nccl_kind_and_size(kernel: dict, ops: list[dict], launches: dict) -> Collective:
    launch = launches.get(kernel.get("args", {}).get("correlation"))
    if launch is None:
        raise UnreadableTrace(f"{kernel['name']} at {kernel['ts']} has no launch in the trace")
    op = next((o for o in ops if o.get("tid") == launch.get("tid") and o["ts"] <= launch["ts"] <= _end(o)), None)
    if op is None or op["name"] not in C10D_OPS:
        raise UnreadableTrace(f"{kernel['name']} was not launched by a c10d operator hpml can name"
                              + (f" ({op['name']})" if op else ""))
    kind, _, buffer = C10D_OPS[op["name"]]
    dims = op.get("args", {}).get("Input Dims", [])
    whole = _numel(dims[buffer]) if len(dims) > buffer else 0
    return Collective(kind, whole * _nccl_element_bytes(kernel["name"], op), kernel["ts"], _end(kernel))


def _nccl_element_bytes(kernel_name: str, op: dict) -> int:
    """From the kernel's name (ncclDevKernel_AllReduce_Sum_bf16_RING_LL), else from the c10d
    operator's input type (NCCL names some all-gathers and broadcasts without one; a list
    operator's type is "TensorList", which says nothing)."""
    named = next((part for part in re.split(r"[_(<]", kernel_name) if part in NCCL_ELEMENT_BYTES), None)
    if named is not None:
        return NCCL_ELEMENT_BYTES[named]
    types = [t for t in op.get("args", {}).get("Input type", []) if t in ELEMENT_BYTES]
    if types:
        return ELEMENT_BYTES[types[0]]
    raise UnreadableTrace(f"{kernel_name}: no element type in its name, nor in {op['name']}'s inputs")


def gpu_work(events: list[dict]) -> tuple[list[tuple[str, float, float]], list[Collective]]:
    """(part, start, end) of every compute kernel and copy, by the range open at its launch, and
    every NCCL kernel as a collective."""
    host = [e for e in events if e.get("cat") not in DEVICE_WORK]
    launches = {e["args"]["correlation"]: e for e in host if e.get("cat") in ("cuda_runtime", "cuda_driver")
                and "correlation" in e.get("args", {})}  # the driver's: Triton's kernels (torch.compile)
    ranges = _ranges(host)
    ops = [e for e in host if e["name"].startswith("c10d::")]
    work, collectives = [], []
    for kernel in (e for e in events if e.get("cat") in DEVICE_WORK and not e["name"].startswith("gloo:")):
        if "nccl" in kernel["name"].lower():
            collectives.append(_nccl_kind_and_size(kernel, ops, launches))
        else:
            launch = launches.get(kernel.get("args", {}).get("correlation"))
            part = _innermost(ranges, launch["ts"]) if launch else "other"
            work.append((part, kernel["ts"], _end(kernel)))
    return work, collectives


def cut_steps(events: list[dict]) -> list[ProfiledStep]:
    """Every ``hpml.step`` range of a rank's trace, cut into parts (seconds): on the device's
    timeline when the trace has GPU kernels, else on the CPU's."""
    events = _complete(events)
    steps = sorted((e for e in events if e["name"] == STEP_RANGE), key=lambda e: e["ts"])
    if not steps:
        raise UnreadableTrace(f"no {STEP_RANGE} range in the trace")
    on_gpu = any(e.get("cat") == "kernel" for e in events)
    main_tid = steps[0].get("tid")
    main = [e for e in events if e.get("tid") == main_tid]
    if on_gpu:  # ranks sharing one GPU talk over gloo (NCCL refuses them): their collectives are the host's
        work, collectives = gpu_work(events)
        collectives += gloo_collectives(events) if any(e["name"].startswith("gloo:") for e in events) else []
    else:
        collectives = gloo_collectives(events)
    profiled = []
    for step in steps:
        start, end = step["ts"], _end(step)
        if on_gpu:  # a kernel is both computing and in its part
            ranges = [w for w in work if start <= w[1] < end]
            computing = [(a, b) for _, a, b in ranges]
        else:
            inside = [e for e in main if start <= e["ts"] < end]
            ranges = _ranges(inside)
            computing = [(e["ts"], _end(e)) for e in inside if e["name"].startswith("aten::")]
        mine = [c for c in collectives if start <= c.start < end]
        parts, flying, hidden = _cut(start, end, ranges, computing, mine)
        uses = []
        for kind in COLLECTIVE_KINDS:
            of_kind = [c for c in mine if c.kind == kind]
            if of_kind:
                uses.append(CollectiveUse(kind=kind, count=len(of_kind), bytes=sum(c.bytes for c in of_kind),
                                          in_flight_s=sum(c.end - c.start for c in of_kind) / 1e6))
        profiled.append(ProfiledStep(wall_s=(end - start) / 1e6, parts_s={p: v / 1e6 for p, v in parts.items()},
                                     collectives=uses, comm_in_flight_s=flying / 1e6, comm_hidden_s=hidden / 1e6))
    return profiled
