"""The profiled window: a few more optimizer steps after a run's last one, under ``torch.profiler``,
cut into where their time went (``hpml_core.trace_parts``) and kept as a compressed Chrome trace.

Why after the last step: the timed steps, the loss curve, the memory peaks, the final checkpoint
and the exported model are all done by then, so profiling changes none of them; the window's
steps train on (the next batches in the data's order) but their losses are not recorded.
Why a few steps: the trace of one step of GPT-2 Large holds tens of thousands of events, and a
study keeps one trace per rank of every run. What profiling costs is measured, not assumed: the
window's median step against the timed steps' median (``StepProfile.overhead``).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import statistics
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from hpml_core.plan import Plan
from hpml_core.stepper import Stepper
from hpml_core.trace_parts import CPU_HOW, GPU_HOW, cut_steps
from hpml_core.contract.atomic import atomic_write
from hpml_core.contract.step_parts import STEP_RANGE, StepProfile


def trace_name(rank: int) -> str:
    return f"trace-rank-{rank}.json.gz"


def profile_window(plan: Plan, stepper: Stepper, device: torch.device, attempt_dir: Path, run_dir: Path,
                   timed_median_s: float | None) -> tuple[StepProfile | None, str | None]:
    """Collective: ``plan.config.profile_steps`` steps under the profiler; (the profile, None) or
    (None, why there is none)."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities, record_shapes=True) as profiler:
        for i in range(plan.config.profile_steps):
            with record_function(STEP_RANGE):
                stepper.step(plan.batches.micro_batches(plan.total_steps + i, device))
                if cuda:  # the step's range ends when its kernels have
                    torch.cuda.synchronize(device)
    raw = attempt_dir / f".trace-rank-{plan.env.rank}.json"
    try:
        profiler.export_chrome_trace(str(raw))
        steps = cut_steps(json.loads(raw.read_text())["traceEvents"])
        trace = attempt_dir / trace_name(plan.env.rank)
        with raw.open("rb") as source:
            atomic_write(trace, lambda f: _compress(source, f))
    except Exception as exc:  # noqa: BLE001 - a trace hpml cannot cut costs the profile, never the run
        return None, f"the profiled window's trace could not be read: {type(exc).__name__}: {exc}"
    finally:
        raw.unlink(missing_ok=True)
    window_median = statistics.median(s.wall_s for s in steps)
    return StepProfile(
        steps=steps, how=f"{len(steps)} optimizer steps after the last timed one; {GPU_HOW if cuda else CPU_HOW}",
        overhead=window_median / timed_median_s - 1 if timed_median_s else None,
        trace_file=os.path.relpath(trace, run_dir), trace_bytes=trace.stat().st_size), None


def _compress(source, target) -> None:
    with gzip.GzipFile(fileobj=target, mode="wb", compresslevel=6, mtime=0) as packed:
        shutil.copyfileobj(source, packed)
