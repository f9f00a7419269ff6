"""Where a training step's time goes: the engine in one process, profiled by
``torch.profiler`` over a few steps after warm-up. Writes ``OUT/profile.json`` (device time
per kind of work, and the device's idle share of the steps' wall time) and ``OUT/profile.txt``
(the operators and kernels that took the most device time), so that a benchmark that misses
its target says what limits it: matrix products, attention, elementwise work, the loss over
the vocabulary, the optimizer, or a device waiting on the host.

    python -m hpml_core.bench.step_profile --model gpt2-large --data DATA -- --precision bf16 --compile

The flags after ``--`` are the engine's (``python -m hpml_core.train``), for ``--mode single``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from hpml_core import launch
from hpml_core.bench import keep_earlier, source
from hpml_core.mesh import build_mesh
from hpml_core.contract.atomic import atomic_write, atomic_write_json
from hpml_core.plan import make_plan
from hpml_core.train import build

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
                                                         r"copy|cast|fill|index|embedding", re.I)),
)


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "other")


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m hpml_core.bench.step_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench/profile"))
    parser.add_argument("--profiled-steps", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps run before profiling (compilation)")
    parser.add_argument("--rows", type=int, default=30, help="rows of profile.txt")
    args, engine = parser.parse_known_args(argv[:split])
    return args, engine + argv[split + 1:]


def _self_device_us(event) -> float:
    """The event's own device time in µs (the attribute's name changed across torch releases)."""
    for attribute in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(event, attribute, None)
        if value is not None:
            return float(value)
    return 0.0


def main(argv: list[str] | None = None) -> int:
    args, engine_args = parse(argv)
    steps = args.warmup_steps + args.profiled_steps
    env = launch.detect()
    plan = make_plan(["--mode", "single", *engine_args, "--steps", str(steps), "--warmup-steps",
                      str(args.warmup_steps)], env)
    device = launch.select_device(plan.env)
    cuda = device.type == "cuda"
    with tempfile.TemporaryDirectory() as scratch:
        stepper = build(plan, device, build_mesh(plan.layout, 0), Path(scratch))
        for step in range(args.warmup_steps):
            stepper.step(plan.batches.micro_batches(step, device))
        if cuda:
            torch.cuda.synchronize(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            started = time.perf_counter()
            for step in range(args.warmup_steps, steps):
                stepper.step(plan.batches.micro_batches(step, device))
            if cuda:
                torch.cuda.synchronize(device)
            wall_s = time.perf_counter() - started
    events = prof.key_averages()
    if cuda:
        # Kernels only: what the device itself ran. A range such as Optimizer.step#AdamW.step is
        # also drawn on the device's timeline, spanning kernels already counted; such ranges
        # carry the name of an operator or range of the host's timeline, which no kernel does.
        host_names = {e.key for e in events if e.device_type == torch.autograd.DeviceType.CPU}
        timed = [(e.key, _self_device_us(e), e.count) for e in events if _self_device_us(e) > 0
                 and e.device_type == torch.autograd.DeviceType.CUDA and e.key not in host_names]
    else:  # the CPU runs the operators themselves; self time avoids counting a parent and its children twice
        timed = [(e.key, float(e.self_cpu_time_total), e.count) for e in events if e.self_cpu_time_total > 0]
    busy_s = sum(us for _, us, _ in timed) / 1e6
    by_kind: dict[str, float] = {}
    for name, us, _ in timed:
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + us / 1e6
    config = plan.config
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "engine_args": engine_args,
        "model": config.model, "batch_size": config.batch_size, "seq_len": config.seq_len,
        "precision": config.precision, "compile": config.compile, "grad_ckpt": config.grad_ckpt,
        "profiled_steps": args.profiled_steps,
        "measured": ("device (kernel) self time per kernel, from torch.profiler's CUDA activity" if cuda else
                     "CPU self time per operator, from torch.profiler's CPU activity"),
        "wall_s_per_step": wall_s / args.profiled_steps,
        "busy_s_per_step": busy_s / args.profiled_steps,
        # Kernels can overlap (streams), so busy over wall is a bound, not an exact idle share.
        "idle_share_of_wall": max(0.0, 1 - busy_s / wall_s) if cuda else None,
        "by_kind_s_per_step": {kind: s / args.profiled_steps for kind, s in sorted(by_kind.items(),
                                                                                  key=lambda item: -item[1])},
        "top": [{"name": name, "kind": kind_of(name), "s_per_step": us / 1e6 / args.profiled_steps,
                 "calls_per_step": count / args.profiled_steps, "share_of_busy": us / 1e6 / busy_s}
                for name, us, count in sorted(timed, key=lambda t: -t[1])[:args.rows]],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(keep_earlier(args.out / "profile.json"), {**result, "source": source.describe()})
    lines = [f"{result['device']}: {config.model}, batch {config.batch_size}, sequence {config.seq_len}, "
             f"{config.precision}, compile {config.compile}; {result['measured']}",
             f"per step: wall {result['wall_s_per_step'] * 1e3:.1f} ms, busy {result['busy_s_per_step'] * 1e3:.1f} ms"
             + (f", device idle ≥ {result['idle_share_of_wall']:.0%}" if cuda else ""), ""]
    lines += [f"{kind:45s} {s * 1e3:9.2f} ms/step  {s / result['busy_s_per_step']:6.1%}"
              for kind, s in result["by_kind_s_per_step"].items()]
    lines += ["", f"{'ms/step':>9}  {'share':>6}  {'calls':>6}  name"]
    lines += [f"{row['s_per_step'] * 1e3:9.3f}  {row['share_of_busy']:6.1%}  {row['calls_per_step']:6.1f}  "
              f"{row['name'][:110]}" for row in result["top"]]
    text = "\n".join(lines) + "\n"
    atomic_write(keep_earlier(args.out / "profile.txt"), lambda f: f.write(text.encode()))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
