"""Where a run's step time goes, by kind of work: matrix products, attention, elementwise work,
the loss over the vocabulary, the optimizer, or a device waiting on the host. Read from the
Chrome trace the engine kept of its profiled window (``hpml_core/profile_window.py``: a few
steps after the timed ones), so it costs no device time of its own and describes exactly the
run whose tokens/s it explains. Writes ``OUT/profile.json`` (time per kind, per step, and the
device's idle share of the steps' wall time) and ``OUT/profile.txt`` (the kernels or operators
that took the most).

    python -m hpml_core.bench.step_profile RUN_DIR --out OUT

On a GPU the kernels' own device time counts (every kernel, copy and memset on the device's
timeline within a step); on a CPU, each ``aten::`` operator's self time on the rank's main
thread (its time less that of the operators it called). Kernels on different streams can
overlap, so busy over wall bounds the idle share from below.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from hpml_core.bench import keep_earlier, source
from hpml_core.contract import rank_file
from hpml_core.contract.atomic import atomic_write, atomic_write_json
from hpml_core.contract.attempts import latest_rank_files
from hpml_core.contract.errors import EXIT_USAGE
from hpml_core.contract.step_parts import RANGE_PREFIX, STEP_RANGE
from hpml_core.trace_parts import DEVICE_WORK

# Kernel and operator names by kind of work, first match wins. The names are cuBLAS's,
# CUTLASS's, FlashAttention's, Triton's (torch.compile) and ATen's; a kernel matching none is
# counted as "other".
KINDS = (
    ("matrix products", re.compile(r"gemm|matmul|cutlass|xmma|nvjet|cublas|addmm|\bmm\b|\bbmm\b", re.I)),
    ("attention", re.compile(r"flash|fmha|attention|efficient_attention|cudnn_.*sdpa|cudnn::fusion", re.I)),
    ("optimizer", re.compile(r"adam|multi_tensor|foreach|sgd", re.I)),
    ("loss (cross-entropy over the vocabulary)",
     re.compile(r"cross_entropy|log_softmax|LogSoftMax|nll_loss|logsumexp", re.I)),
    ("communication", re.compile(r"nccl|gloo|all_reduce|allreduce|all_gather|reduce_scatter", re.I)),
    ("compiled fused kernels (Triton)", re.compile(r"^triton_", re.I)),
    ("elementwise and normalization (eager)", re.compile(r"elementwise|vectorized|layer_norm|gelu|reduce_kernel|"
                                                         r"copy|memcpy|memset|cast|fill|index|embedding", re.I)),
)


class NoTrace(ValueError):
    """The run kept no trace this can read."""


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "other")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hpml_core.bench.step_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run's folder (python -m hpml_core.train --out)")
    parser.add_argument("--rank", type=int, default=0, help="whose trace (default 0)")
    parser.add_argument("--out", type=Path, default=Path("results/bench/profile"))
    parser.add_argument("--rows", type=int, default=30, help="rows of profile.txt")
    return parser.parse_args(argv)


def _end(event: dict) -> float:
    return event["ts"] + event.get("dur", 0)


def _within(event: dict, ranges: list[dict]) -> bool:
    return any(r["ts"] <= event["ts"] < _end(r) for r in ranges)


def device_work(events: list[dict], steps: list[dict]) -> list[tuple[str, str, float]]:
    """(name, kind, µs) of every kernel, copy and memset the device ran within a step, its kind by its name."""
    return [(e["name"], kind_of(e["name"]), e.get("dur", 0)) for e in events
            if e.get("cat") in DEVICE_WORK and _within(e, steps)]


def operator_self_times(events: list[dict], steps: list[dict]) -> list[tuple[str, str, float]]:
    """(name, kind, µs) of every ``aten::`` operator's self time on the steps' thread within a
    step: its time less its children's, so that a call and the calls it makes are not counted
    twice. An operator inside the engine's ``hpml.optimizer`` range is the optimizer's, whatever
    its name (a CPU's AdamW is a row of elementwise operators), else its kind is its name's."""
    optimizer = [e for e in events if e["name"] == f"{RANGE_PREFIX}optimizer"]
    thread = steps[0].get("tid")
    ops = sorted((e for e in events if e.get("tid") == thread and e.get("cat") == "cpu_op"
                  and any(s["ts"] <= e["ts"] < _end(s) for s in steps)), key=lambda e: (e["ts"], -e.get("dur", 0)))
    found, stack = [], []  # stack: [event, its children's µs]
    for op in ops:
        while stack and _end(stack[-1][0]) <= op["ts"]:
            done, children = stack.pop()
            found.append((done, done.get("dur", 0) - children))
        if stack:
            stack[-1][1] += op.get("dur", 0)
        stack.append([op, 0.0])
    found += [(done, done.get("dur", 0) - children) for done, children in stack]
    return [(op["name"], "optimizer" if _within(op, optimizer) else kind_of(op["name"]), us)
            for op, us in found if op["name"].startswith("aten::")]


def read_trace(run_dir: Path, rank: int) -> tuple[rank_file.RankFile, list[dict]]:
    files = latest_rank_files(run_dir)
    if rank not in files:
        raise NoTrace(f"{run_dir}: no rank file of rank {rank}")
    record = rank_file.read(files[rank])
    if record.profile is None or record.profile.trace_file is None:
        raise NoTrace(f"{run_dir}: rank {rank} kept no trace ({record.profile_missing_reason or 'no profile'})")
    try:
        events = json.loads(gzip.decompress((run_dir / record.profile.trace_file).read_bytes()))["traceEvents"]
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise NoTrace(f"{run_dir / record.profile.trace_file}: not a readable trace ({type(exc).__name__}: {exc})")
    if not isinstance(events, list):
        raise NoTrace(f"{run_dir / record.profile.trace_file}: its traceEvents are not a list")
    return record, [e for e in events if isinstance(e, dict) and e.get("ph") == "X" and isinstance(e.get("name"), str)
                    and all(isinstance(e.get(key, 0), (int, float)) for key in ("ts", "dur")) and "ts" in e]


def where_time_goes(record: rank_file.RankFile, events: list[dict], rows: int) -> dict:
    steps = [e for e in events if e["name"] == STEP_RANGE and e.get("cat") != "gpu_user_annotation"]
    if not steps:
        raise NoTrace(f"the trace holds no {STEP_RANGE} range")
    on_gpu = any(e.get("cat") == "kernel" for e in events)
    timed = device_work(events, steps) if on_gpu else operator_self_times(events, steps)
    per_name: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for name, kind, us in timed:
        per_name[name, kind][0] += us / 1e6
        per_name[name, kind][1] += 1
    count, wall_s = len(steps), sum(s["dur"] for s in steps) / 1e6
    busy_s = sum(s for s, _ in per_name.values())
    by_kind: dict[str, float] = defaultdict(float)
    for (_, kind), (s, _) in per_name.items():
        by_kind[kind] += s / count
    config = record.config
    return {
        "device": record.device_name, "run_id": record.run_id, "rank": record.rank,
        "model": config.model, "batch_size": config.batch_size, "seq_len": config.seq_len,
        "precision": config.precision, "compile": config.compile, "fp8": config.fp8, "grad_ckpt": config.grad_ckpt,
        "profiled_steps": count,
        "measured": ("device time of each kernel, copy and memset, from the run's kept trace (torch.profiler's "
                     "CUDA activity)" if on_gpu else
                     "self time of each aten operator on the rank's main thread, from the run's kept trace"),
        "wall_s_per_step": wall_s / count,
        "busy_s_per_step": busy_s / count,
        "idle_share_of_wall": max(0.0, 1 - busy_s / wall_s) if on_gpu and wall_s > 0 else None,
        "by_kind_s_per_step": dict(sorted(by_kind.items(), key=lambda item: -item[1])),
        "top": [{"name": name, "kind": kind, "s_per_step": s / count, "calls_per_step": calls / count,
                 "share_of_busy": s / busy_s if busy_s else 0.0}
                for (name, kind), (s, calls) in sorted(per_name.items(), key=lambda item: -item[1][0])[:rows]],
    }


def text(result: dict) -> str:
    lines = [f"{result['device']}: {result['model']}, batch {result['batch_size']}, sequence {result['seq_len']}, "
             f"{result['precision']}{', FP8 linears' if result['fp8'] else ''}, compile {result['compile']}; "
             f"{result['profiled_steps']} steps of {result['run_id']}, rank {result['rank']}; {result['measured']}",
             f"per step: wall {result['wall_s_per_step'] * 1e3:.1f} ms, busy {result['busy_s_per_step'] * 1e3:.1f} ms"
             + (f", device idle ≥ {result['idle_share_of_wall']:.0%}" if result["idle_share_of_wall"] is not None
                else ""), ""]
    busy = result["busy_s_per_step"] or 1.0
    lines += [f"{kind:45s} {s * 1e3:9.2f} ms/step  {s / busy:6.1%}" for kind, s in result["by_kind_s_per_step"].items()]
    lines += ["", f"{'ms/step':>9}  {'share':>6}  {'calls':>6}  name"]
    lines += [f"{row['s_per_step'] * 1e3:9.3f}  {row['share_of_busy']:6.1%}  {row['calls_per_step']:6.1f}  "
              f"{row['name'][:110]}" for row in result["top"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        record, events = read_trace(args.run, args.rank)
        result = where_time_goes(record, events, args.rows)
    except (OSError, ValueError) as exc:  # NoTrace, or a rank file that is not one
        print(f"step_profile: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(keep_earlier(args.out / "profile.json"), {**result, "source": source.describe()})
    written = text(result)
    atomic_write(keep_earlier(args.out / "profile.txt"), lambda f: f.write(written.encode()))
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
