"""Training job entry point: ``python -m hpml_core.train`` (or ``hpml train``).

Runs alone, under torchrun, under the deepspeed launcher or the local site's
(``hpml_core.local_ranks``), or as srun tasks (see ``hpml_core.launch``). Every bad input is
refused before a process group exists, with one line naming the flag and exit status 2
(``hpml_core.plan``, through the contract's checks). Then: build the model on the meta device,
parallelize it (``hpml_core.parallelize``: TP, each rank's part of the weights, checkpointing,
compile, DDP or ZeRO-3, returning the stepper that trains it), restore a checkpoint, and run the
loop below, which reads like nanoGPT's: get the batch, step, time it, log, checkpoint, stop when
asked. Memory peaks are recorded for the setup and for the training, from the first timed step
(``hpml_core.memory``).

Each launch that trains is one attempt of the run (``hpml_core.resuming``): every rank writes
``<run>/attempts/<n>/rank-<k>.json`` at the end, also when training failed (status FAILED,
exit 1), ran out of memory (OUT_OF_MEMORY, exit 3) or was stopped by a signal after a checkpoint
(STOPPED, exit 4). A write the file system refuses (a full disk, a quota, a permission: a
checkpoint, the rank file, the status file) ends the attempt FAILED with one line naming the path,
the bytes it needed and the bytes free, and exit 5, so that a full disk is not mistaken for a
training failure. A ``--resume`` of a run whose latest attempt completed does nothing and exits 0.
"""

from __future__ import annotations

import gc
import sys

if __name__ == "__main__":
    # The stop handler first, before the imports below spend seconds loading torch: a
    # SIGUSR1 or SIGTERM during them must stop the run at its first step, not kill it.
    from hpml_core import stopping

    stopping.install()
    gc.disable()  # until the imports are done (see "Start-up and exit" below)

import atexit
import os
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist

from hpml_core import checkpoint, export, launch, resuming, stopping
from hpml_core.energy import EnergyMeter
from hpml_core.memory import PhasePeaks
from hpml_core.mesh import Mesh, build_mesh
from hpml_core.model import GPT
from hpml_core.parallelize import parallelize
from hpml_core.plan import Plan, make_plan
from hpml_core.profile_window import profile_window
from hpml_core.rank_result import Measured, build_rank_file, cpu_name, loss_values, prediction_record, throughput
from hpml_core.contract import rank_file as rf
from hpml_core.contract.atomic import atomic_write_json
from hpml_core.contract.attempts import attempt_folder, losses_path
from hpml_core.contract.config import TrainConfig
from hpml_core.contract.errors import (EXIT_FAILED, EXIT_OOM, EXIT_STOPPED, EXIT_USAGE, EXIT_WRITE_REFUSED, UsageError,
                                      WriteRefused)
from hpml_core.contract.run_states import COMPLETED, FAILED, OUT_OF_MEMORY, RUNNING, STARTING, STOPPED
from hpml_core.contract.status_file import Progress
from hpml_core.contract.units import GIB
from hpml_core.stepper import Stepper
from hpml_core.stopping import StopRequest
from hpml_core.timing import StepTimer

# Start-up and exit. Every rank of every launch imports torch (under ZeRO, DeepSpeed too) and,
# with its first optimizer, torch's compiler: up to half a million objects that live as long as
# the process. While they are made, the cycle collector would walk them again and again (0.4 s
# of a rank's start-up), and at the exit once more (0.7 to 1 s), each measured on this project's
# 2-core machine (docs/testing.md). So it is off during the imports, and what they made is
# frozen, out of its reach, before it is on again. At the exit (``exit_quickly``) the
# interpreter would then tear down every module, object by object (0.2 s of CPU a rank): by
# then the rank's files are written and closed and its process group destroyed, so the atexit
# handlers run (logging's flush among them), the streams are flushed and the process ends there.
if __name__ == "__main__":
    gc.freeze()
    gc.enable()

# A progress line (and status.json) every tenth of the run, and at least this often.
REPORT_SECONDS = 30


def run_identity(config: TrainConfig, env: launch.ProcessEnv) -> tuple[str, Path]:
    """The run id and folder, the same on every rank (rank 0 decides when they are not given)."""
    run_id = config.run_id or (config.out.name if config.out else None)
    if run_id is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_id = f"{config.mode}-{config.model}-w{env.world_size}-tp{config.tp_size}-b{config.batch_size}-{stamp}"
        if dist.is_initialized():
            box = [run_id]
            dist.broadcast_object_list(box, src=0)
            run_id = box[0]
    return run_id, config.out or Path("results") / "runs" / run_id


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)  # the CPU allocator
    )


def _log(plan: Plan, message: str) -> None:
    if plan.env.rank == 0:
        print(f"[hpml] {message}", flush=True)


def build(plan: Plan, device: torch.device, mesh: Mesh, attempt_dir: Path) -> Stepper:
    """The GPT, built on the meta device (shapes only), then parallelized: each rank fills in
    only its own part of the weights the run's seed gives, so a sharded run starts from the
    single process's weights without any rank holding them all (ZeRO-3's configuration is
    recorded in the attempt's folder)."""
    with torch.device("meta"):
        model = GPT(plan.dims, attn=plan.config.attn)
    return parallelize(model, mesh, plan.config, device, attempt_dir)


def save_checkpoint(plan: Plan, stepper: Stepper, out: Path, step: int, measured: Measured, attempt: int) -> None:
    """Collective. The attempt's losses so far first, as its rank file will hold them (averaged
    over data-parallel ranks: one small all-reduce), written by rank 0 beside its rank file, then
    the checkpoint: an attempt killed before it writes its rank files (a lost node, the kernel's
    out-of-memory killer) leaves its loss curve up to a step no earlier than the newest checkpoint,
    the one the next attempt resumes from (``hpml_core.contract.attempts``)."""
    losses = rf.Loss(start_step=measured.start_step, values=loss_values(measured.losses, ranks_alive=True),
                     averaged_over_dp=True)
    if plan.env.rank == 0:
        atomic_write_json(losses_path(out, attempt), losses.model_dump())
    checkpoint.save(resuming.checkpoint_dir(plan.config, out), step, stepper, plan.env.rank,
                    checkpoint.fingerprint(plan.config, plan.layout.dp_size, plan.batches.data.meta),
                    plan.config.keep_checkpoints)


def train_steps(plan: Plan, stepper: Stepper, measured: Measured, device: torch.device, out: Path, attempt: int,
                stop: StopRequest, progress: Progress) -> bool:
    """Train from ``measured.start_step`` to the last step; False if a stop signal ended it
    early, after a checkpoint. Losses and step times go into ``measured`` as they come."""
    config, total = plan.config, plan.total_steps
    first_timed = measured.start_step + config.warmup_steps
    report_every = max(1, (total - measured.start_step) // 10)
    started = last_report = time.perf_counter()
    try:
        for step in range(measured.start_step, total):
            timed = step >= first_timed
            if step == first_timed:
                measured.memory.start_training()  # the training phase's peaks start here
                measured.energy.start()  # ...and the GPU's energy counter is read
            if timed:
                measured.timer.start()
            loss = stepper.step(plan.batches.micro_batches(step, device), measure=step == total - 1)
            if timed:
                measured.timer.stop()
            if timed and step == total - 1:
                measured.energy.stop()
            measured.losses.append(loss)
            done = step + 1
            saved = config.checkpoint_every > 0 and done % config.checkpoint_every == 0
            if saved:
                save_checkpoint(plan, stepper, out, done, measured, attempt)
            now = time.perf_counter()  # the host's clock: no wait for the device
            if done % report_every == 0 or done == total or now - last_report >= REPORT_SECONDS:
                _log(plan, f"step {done}/{total}  {now - started:.1f} s")
                progress.update(RUNNING, done)
                last_report = now
            if done < total and stop.agreed():
                if not saved:
                    save_checkpoint(plan, stepper, out, done, measured, attempt)
                _log(plan, f"stopped by {stop.signal_name} after step {done}; checkpoint saved, resume with --resume")
                return False
    finally:
        measured.memory.end_training()  # ...and end at the last step, however it ended
    measured.model_state = stepper.model_state
    return True


def train(plan: Plan, stop: StopRequest) -> int:
    started_at, t0 = datetime.now(timezone.utc), time.perf_counter()
    device = launch.select_device(plan.env)
    if plan.config.mode != "single":
        launch.init_process_group(plan.env, device, plan.config.backend_on(device.type))
    mesh = build_mesh(plan.layout, plan.env.rank)
    run_id, out = run_identity(plan.config, plan.env)
    attempt = resuming.open_attempt(out, plan.env.rank)
    config = plan.config.model_copy(update={"run_id": run_id, "out": out, "steps": plan.total_steps})
    plan = replace(plan, config=config)
    fallback = plan.resume_state.note() if plan.resume_state else None
    progress = Progress(out, plan.total_steps, attempt, enabled=plan.env.rank == 0, note=fallback)
    progress.update(STARTING, plan.resume_state.step if plan.resume_state else 0)
    if fallback:
        _log(plan, fallback)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    precision = config.precision + (" with FP8 linears" if config.fp8 else "")
    _log(plan, f"run {run_id}, attempt {attempt}: {config.mode}, {config.model}, world {plan.env.world_size} "
               f"(dp {plan.layout.dp_size} x tp {plan.layout.tp_size}), batch {config.batch_size}/rank, "
               f"{plan.total_steps} steps, {precision}, on {device_name}")

    status, error, run_throughput, refused = COMPLETED, None, None, False
    measured = Measured(StepTimer(device), PhasePeaks(device), EnergyMeter(device))
    try:
        stepper = build(plan, device, mesh, attempt_folder(out, attempt))
        if plan.resume_state:
            stepper.load_state(plan.resume_state)
            measured.start_step = plan.resume_state.step
        measured.memory.end_setup()
        if not train_steps(plan, stepper, measured, device, out, attempt, stop, progress):
            status, error = STOPPED, f"stopped by {stop.signal_name}; checkpoint saved"
        run_throughput = throughput(plan, measured.timer, device) if measured.timer.timed_steps else None
        if run_throughput is not None:  # collective on a GPU, as the throughput
            measured.energy_record, measured.energy_missing_reason = measured.energy.record(
                run_throughput.timed_steps, run_throughput.tokens_per_step * run_throughput.timed_steps)
        if config.save_model and status == COMPLETED:
            export.save_full_model(stepper, out, plan.env.rank, dims=plan.dims,
                                   vocab_size=config.vocab_size or plan.batches.data.vocab_size)  # unpadded
        if config.profile_steps and status == COMPLETED:  # after everything it could change
            measured.memory_before_window = measured.memory.record()
            timed_median = run_throughput.step_time_median_s if run_throughput else None
            measured.profile, measured.profile_missing_reason = profile_window(
                plan, stepper, device, attempt_folder(out, attempt), out, timed_median)
            _log(plan, window_line(measured.profile, measured.profile_missing_reason))
    except Exception as exc:  # recorded in the rank file; the exit status says it failed
        status, refused = OUT_OF_MEMORY if is_out_of_memory(exc) else FAILED, isinstance(exc, WriteRefused)
        error = str(exc) if refused else f"{type(exc).__name__}: {exc}".strip()
        if status == OUT_OF_MEMORY:
            error = f"out of memory at batch size {config.batch_size} per rank{predicted_against(plan, device)}: {error}"
        print(f"[hpml] rank {plan.env.rank}: {status}: {error}", file=sys.stderr, flush=True)

    record = build_rank_file(plan, measured, run_id, attempt, status, error, run_throughput, device, device_name,
                             started_at, time.perf_counter() - t0)
    path = rf.write(out, record)
    progress.update(status, record.steps_completed, error)
    if status == STOPPED and dist.is_initialized():
        # Every rank stopped at the agreed step and is healthy: wait until all have written their
        # checkpoint and rank file, so that the first rank to exit (which makes srun or the
        # launcher end the others) cannot cut another's files short.
        dist.barrier()
        dist.destroy_process_group()
    if status != COMPLETED:
        return EXIT_WRITE_REFUSED if refused else {OUT_OF_MEMORY: EXIT_OOM, STOPPED: EXIT_STOPPED}.get(status, EXIT_FAILED)
    _log(plan, summary(record))
    _log(plan, f"results: {path.parent}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def predicted_against(plan: Plan, device: torch.device) -> str:
    """On a GPU: what the memory model predicted for this rank, against the GPU's memory."""
    if device.type != "cuda":
        return ""
    predicted = prediction_record(plan, device.type).total_bytes  # as the rank file records it
    total = torch.cuda.get_device_properties(device).total_memory
    return f" (predicted {predicted / GIB:.1f} GiB of the GPU's {total / GIB:.1f} GiB)"


def window_line(profile: rf.StepProfile | None, missing_reason: str | None) -> str:
    """What the profiled window found on this rank, what it cost, and where its trace is."""
    if profile is None:
        return f"no profile: {missing_reason}"
    parts = profile.median_parts()
    wall = sum(parts.values())
    biggest = ", ".join(f"{name} {seconds / wall:.0%}" for name, seconds in
                        sorted(parts.items(), key=lambda kv: -kv[1])[:3])
    cost = (f"their median step {profile.overhead:+.0%} against the timed steps' median" if profile.overhead is not None
            else "their cost unknown: no step was timed")
    return (f"profiled {len(profile.steps)} steps after the timed ones ({cost}): {biggest}; "
            f"trace {profile.trace_bytes / 1e3:.0f} kB in {profile.trace_file}")


def summary(record: rf.RankFile) -> str:
    """The completed attempt's last line: final loss, throughput and MFU, or why they are missing."""
    loss = f"final loss {record.loss.values[-1]:.4f}" if record.loss.values else "no step left to train"
    if record.throughput is None:
        return f"{loss}; no throughput: {record.throughput_missing_reason}"
    f = record.flops
    mfu = f"{f.mfu:.1%}" if f.mfu is not None else f"n/a ({f.mfu_missing_reason})"
    return (f"{loss}; {record.throughput.run_tokens_per_s:,.0f} tokens/s, {f.achieved_tflops_per_s:.3g} TFLOP/s "
            f"per device, MFU {mfu}")


def main(argv: list[str] | None = None) -> int:
    stop = stopping.install()  # already there when run as a program; first thing when called in-process
    env = launch.detect()
    try:
        plan = make_plan(argv, env)
    except UsageError as exc:
        if env.rank == 0:
            print(f"hpml train: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except resuming.AlreadyCompleted as done:
        if env.rank == 0:
            print(f"[hpml] {done}", flush=True)
        return 0
    try:
        return train(plan, stop)
    except WriteRefused as exc:  # the attempt's folder, its rank file or its status file: said in one line
        print(f"[hpml] rank {env.rank}: {exc}", file=sys.stderr, flush=True)
        return EXIT_WRITE_REFUSED


def exit_quickly(code: int) -> None:
    """Exit with ``code`` without the interpreter's teardown (see "Start-up and exit" above): the
    atexit handlers run and the streams are flushed, as in a normal exit. A thread that is not a
    daemon would be waited for by a normal exit, so while one is alive the exit is the normal one."""
    gc.freeze()
    if any(thread.is_alive() and not thread.daemon for thread in threading.enumerate()
           if thread is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_quickly(main())
