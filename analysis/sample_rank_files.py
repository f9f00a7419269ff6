"""Schema-built rank files with chosen numbers, for the report's tests (tests/test_report.py) and
``make bench-report``: built from the rank-file schema (hpml_core.spec.rank_file), so they are the
files the engine writes, with numbers from which every figure of the report can be computed by
hand. Part of the package, not of the tests, because the benchmark runs from an install.

The per-rank throughput fields that the report must *not* use (each rank's own tokens/s, the
engine's precomputed run figures) hold decoy values: a report that summed ranks' figures, or
counted a tensor-parallel rank's tokens as its own, would show them.
"""

from __future__ import annotations

from pathlib import Path

from hpml_core.spec import rank_file as rf
from hpml_core.spec.config import TrainConfig

GIB = 1024**3
FLOPS_PER_TOKEN = 5_000_000_000
A100_BF16_PEAK = 312.0
DECOY = 1.0


def rank_file(*, run: str, rank: int, mode: str, world: int, tp: int, batch: int, seq_len: int = 1024,
              status: str = "completed", step_median: float = 0.5, memory_gib: float = 10.0,
              losses: tuple[float, ...] = (9.0, 8.0, 7.0), error: str | None = None, device: str = "cuda",
              node: str = "n1", attempt: int = 1, start_step: int = 0, timed: int | None = None,
              job_id: str | None = "1", node_list: str = "n1") -> rf.RankFile:
    """One rank file of attempt ``attempt``, which ran ``losses`` from step ``start_step``; of
    those, the last ``timed`` (default: 5 when it completed, none otherwise) were timed, each at
    ``step_median`` seconds. No timed step: no throughput, and the engine's reason why.
    ``job_id`` None: a run without Slurm."""
    dp = world // tp
    completed = status == "completed"
    timed = (5 if completed else 0) if timed is None else timed
    global_batch = batch * dp
    steps_done = start_step + len(losses)
    config = TrainConfig(mode=mode, model="gpt2-large", tp_size=tp, batch_size=batch, seq_len=seq_len, steps=10,
                         warmup_steps=5, precision="bf16", data=Path("/data/wikitext-103"), out=Path(f"/r/{run}"),
                         run_id=run)
    throughput = rf.Throughput(
        timing="CUDA events", timed_steps=timed, step_times_s=[step_median] * timed, step_time_median_s=step_median,
        step_time_mean_s=step_median, run_step_time_median_s=DECOY, tokens_per_step=global_batch * seq_len,
        samples_per_step=global_batch, rank_tokens_per_s=DECOY, rank_samples_per_s=DECOY, run_tokens_per_s=DECOY,
        run_samples_per_s=DECOY) if timed else None
    flops = rf.Flops(formula="PaLM", n_params=700_000_000, flops_per_token=FLOPS_PER_TOKEN,
                     achieved_tflops_per_s=DECOY, peak_tflops_per_s=A100_BF16_PEAK if device == "cuda" else None,
                     peak_source="A100 SXM bf16 dense" if device == "cuda" else None, mfu=DECOY if device == "cuda" else None,
                     mfu_missing_reason=None if device == "cuda" else "device is cpu: no GPU peak") if timed else None
    memory_bytes = int(memory_gib * GIB)
    return rf.RankFile(
        run_id=run, status=status, error=error, config=config, mode=mode, world_size=world, dp_size=dp, tp_size=tp,
        attempt=attempt, rank=rank, local_rank=rank % 4, dp_rank=rank // tp, tp_rank=rank % tp, launcher="srun",
        hostname="host",
        device_type=device, device_name="NVIDIA A100-SXM4-80GB" if device == "cuda" else "CPU",
        versions=rf.Versions(python="3.11", torch="2.13.0", deepspeed="0.19.8", transformers=None, cuda="12.8"),
        slurm=rf.Slurm(job_id=job_id, array_job_id=None, array_task_id=None, node_list=node_list, node=node,
                       restart_count=attempt - 1) if job_id else None,
        model=rf.ModelInfo(name="gpt2-large", n_layer=36, n_head=20, n_embd=1280, vocab_size=50304, seq_len=seq_len,
                           params_total=774_000_000, params_non_embedding=708_000_000, params_matmul=708_000_000),
        batch_size=batch, global_batch=global_batch, total_steps=10, steps_completed=steps_done,
        resumed_from_step=start_step or None, started_at="2026-11-24T00:00:00+00:00",
        finished_at="2026-11-24T00:01:00+00:00",
        wall_time_s=60.0, throughput=throughput, flops=flops,
        throughput_missing_reason=None if timed or not completed else
        f"every step left after resuming at step {start_step} was warm-up",
        memory=rf.Memory(cuda_max_allocated_bytes=memory_bytes if device == "cuda" else None,
                         cuda_max_reserved_bytes=memory_bytes if device == "cuda" else None,
                         cpu_peak_rss_bytes=3 * GIB),
        model_state=None, loss=rf.Loss(start_step=start_step, values=list(losses), averaged_over_dp=completed),
    )


def write_run(folder: Path, run: str, *, ranks: list[int] | None = None, step_medians: list[float] | None = None,
              memory_gib: list[float] | None = None, **fields) -> None:
    """Write the rank files of one run: all of ``range(world)`` unless ``ranks`` names some."""
    world = fields["world"]
    for rank in ranks if ranks is not None else range(world):
        record = rank_file(run=run, rank=rank, step_median=(step_medians or [0.5] * world)[rank],
                           memory_gib=(memory_gib or [10.0] * world)[rank], **fields)
        rf.write(folder / run, record)
