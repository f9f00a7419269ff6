"""What the memory of a training step holds at its peak: the engine (one process, or each rank
under a launcher), one step after warm-up profiled with ``torch.profiler``'s memory timeline
(every allocation and release, each tensor put in a category: parameter, optimizer state,
gradient, activation, autograd detail, temporary, input), set beside the memory model's lines
for the same run. Writes ``OUT/peak-rank0.json`` and ``OUT/peak.txt``, so that a prediction that
misses a GPU's measured peak says which kind of tensor it missed.

    python -m hpml_core.bench.peak_memory --model gpt2-large --data DATA -- --precision bf16 --grad-ckpt
    python -m hpml_core.local_ranks 2 -m hpml_core.bench.peak_memory --out OUT -- --mode zero1 ...

The flags after ``--`` are the engine's (``python -m hpml_core.train``; ``--mode single`` unless
they say otherwise); under a launcher each rank measures its own peak and writes
``OUT/peak-rank<k>.json`` (rank 0 also ``peak.txt``).
The categories are the profiler's own inference from the operators' inputs and outputs; a tensor
it cannot place is "unknown". On a GPU the step's ``max_memory_allocated`` is recorded beside
the timeline's peak, as a check of the two.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from hpml_core import launch
from hpml_core.bench import keep_earlier, source
from hpml_core.contract.atomic import atomic_write, atomic_write_json
from hpml_core.contract.memory_model import predict
from hpml_core.contract.units import MIB
from hpml_core.mesh import build_mesh
from hpml_core.plan import make_plan
from hpml_core.train import build

# The columns of the profiler's timeline (torch.profiler._memory_profiler's categories, in its
# order, after a leading column it leaves empty), named in hpml's words.
CATEGORIES = ("parameters", "optimizer states", "inputs", "temporaries", "activations", "gradients",
              "autograd details", "unknown")


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m hpml_core.bench.peak_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench/peak"))
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps run before the profiled one")
    args, engine = parser.parse_known_args(argv[:split])
    return args, engine + argv[split + 1:]


def timeline_peak(prof: profile, device: torch.device, scratch: Path) -> tuple[int, dict[str, int], float]:
    """The most bytes alive at once on ``device``, by category, and when (a fraction of the step)."""
    path = scratch / "timeline.json"
    with warnings.catch_warnings():  # deprecated in favour of CUDA memory snapshots, which a CPU has not
        warnings.simplefilter("ignore", FutureWarning)
        prof.export_memory_timeline(str(path), device=str(device))
    times, sizes = json.loads(path.read_text())
    totals = [sum(row) for row in sizes]
    at = max(range(len(totals)), key=totals.__getitem__)
    span = (times[-1] - times[0]) or 1
    return totals[at], dict(zip(CATEGORIES, sizes[at][1:])), (times[at] - times[0]) / span


def main(argv: list[str] | None = None) -> int:
    args, engine_args = parse(argv)
    steps = args.warmup_steps + 1
    plan = make_plan(["--mode", "single", *engine_args, "--steps", str(steps), "--warmup-steps",
                      str(args.warmup_steps), "--profile-steps", "0"], launch.detect())
    device = launch.select_device(plan.env)
    cuda = device.type == "cuda"
    if plan.env.world_size > 1:
        launch.init_process_group(plan.env, device, plan.config.backend_on(device.type))
    with tempfile.TemporaryDirectory() as scratch:
        stepper = build(plan, device, build_mesh(plan.layout, plan.env.rank), Path(scratch))
        for step in range(args.warmup_steps):
            stepper.step(plan.batches.micro_batches(step, device))
        # The batch is fetched first: the data's own host tensors (the epoch's sample order) are
        # not the model's memory, and on a GPU not in its allocator.
        batch = list(plan.batches.micro_batches(args.warmup_steps, device))
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=True) as prof:
            stepper.step(batch)
            if cuda:
                torch.cuda.synchronize(device)
        max_allocated = torch.cuda.max_memory_allocated(device) if cuda else None
        try:  # the profiler's inference, which some graphs defeat (DeepSpeed's ZeRO-2 on the CPU)
            peak, by_category, when = timeline_peak(prof, device, Path(scratch))
            timeline_missing = None
        except (AssertionError, RuntimeError, ValueError, KeyError) as exc:
            peak, by_category, when = None, None, None
            timeline_missing = f"the profiler's memory timeline failed: {type(exc).__name__}: {str(exc)[:200]}"
    predicted = predict(plan.config, plan.dims, plan.layout, device.type, dp_rank=plan.position.dp_rank)
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "engine_args": engine_args, "mode": plan.config.mode, "rank": plan.env.rank,
        "world_size": plan.env.world_size, "tp_size": plan.layout.tp_size,
        "model": plan.config.model, "batch_size": plan.config.batch_size,
        "seq_len": plan.config.seq_len, "precision": plan.config.precision, "grad_ckpt": plan.config.grad_ckpt,
        "compile": plan.config.compile,
        "measured": "torch.profiler's memory timeline of one step after warm-up: the most bytes of tensors alive at "
                    "once, by the profiler's category" + ("; max_memory_allocated over the same step" if cuda else ""),
        "peak_bytes": peak, "peak_at_fraction_of_step": when, "by_category_bytes": by_category,
        "timeline_missing_reason": timeline_missing, "max_memory_allocated_bytes": max_allocated,
        "predicted_allocated_bytes": predicted.allocated_bytes,
        "predicted_lines": [{"name": line.name, "bytes": line.bytes, "formula": line.formula}
                            for line in predicted.lines if line.in_allocated],
        "source": source.describe(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(keep_earlier(args.out / f"peak-rank{plan.env.rank}.json"), result)
    if plan.env.world_size > 1:
        torch.distributed.destroy_process_group()
    if plan.env.rank == 0:
        text = "\n".join(lines(result)) + "\n"
        atomic_write(keep_earlier(args.out / "peak.txt"), lambda f: f.write(text.encode()))
        print(text)
    return 0


def lines(result: dict) -> list[str]:
    """The peak by category beside the memory model's lines, in MiB."""
    peak, predicted = result["peak_bytes"], result["predicted_allocated_bytes"]
    out = [f"{result['device']}: {result['mode']} on {result['world_size']} (tp {result['tp_size']}), rank "
           f"{result['rank']}: {result['model']}, batch {result['batch_size']}, sequence {result['seq_len']}, "
           f"{result['precision']}, checkpointing {result['grad_ckpt']}, compile {result['compile']}",
           f"predicted {predicted / MIB:,.1f} MiB"
           + (f"; max_memory_allocated over the step {result['max_memory_allocated_bytes'] / MIB:,.1f} MiB "
              f"({predicted / result['max_memory_allocated_bytes'] - 1:+.1%})"
              if result["max_memory_allocated_bytes"] is not None else ""), ""]
    if peak is None:
        out += [f"no timeline: {result['timeline_missing_reason']}"]
    else:
        out += [f"the timeline's peak {peak / MIB:,.1f} MiB ({predicted / peak - 1:+.1%}) at "
                f"{result['peak_at_fraction_of_step']:.0%} of the step, by category:"]
        out += [f"  {name:18s} {size / MIB:12,.1f} MiB" for name, size in result["by_category_bytes"].items() if size]
    out += ["", "the memory model's lines:"]
    out += [f"  {line['name']:30s} {line['bytes'] / MIB:12,.1f} MiB" for line in result["predicted_lines"]]
    return out


if __name__ == "__main__":
    sys.exit(main())
