"""Schema-built rank files with chosen numbers, for the report's tests (tests/test_report.py) and
``make bench-report``: built from the rank-file schema (hpml_core.contract.rank_file), so they are the
files the engine writes, with numbers from which every figure of the report can be computed by
hand. Part of the package, not of the tests, because the benchmark runs from an install.

The per-rank throughput fields that the report must *not* use (each rank's own tokens/s, the
engine's precomputed run figures) hold decoy values: a report that summed ranks' figures, or
counted a tensor-parallel rank's tokens as its own, would show them.
"""

from __future__ import annotations

from pathlib import Path

from hpml_core.contract import collectives
from hpml_core.contract import rank_file as rf
from hpml_core.contract.config import TrainConfig
from hpml_core.contract.layout import Layout
from hpml_core.contract.metrics import lookup_peak
from hpml_core.contract.models import model_dims
from hpml_core.contract.precision import regime
from hpml_core.contract.run_states import COMPLETED
from hpml_core.contract.step_parts import PARTS, CollectiveUse, ProfiledStep, StepProfile
from hpml_core.contract.units import GIB

FLOPS_PER_TOKEN = 5_000_000_000
A100_BF16_PEAK = 312.0
A100 = "NVIDIA A100-SXM4-80GB"
H100 = "NVIDIA H100 80GB HBM3"
PARAMS = 774_000_000
DECOY = 1.0


def model_state_bytes(mode: str, dp: int, tp: int) -> tuple[int, int, int]:
    """(parameter, gradient, optimizer) bytes a rank holds with AdamW in bf16, as the engine
    measures them (hpml_core.contract.model_state, with every parameter sharded by TP): the PyTorch
    path keeps fp32 weights and gradients and two fp32 moments (4 + 4 + 8 bytes per element);
    ZeRO-3 bf16 partitions and an fp32 master beside the moments (2 + 2 + 12), over DP."""
    elements = PARAMS // tp
    if mode == "zero3":
        elements = -(-elements // dp)
        return 2 * elements, 2 * elements, 12 * elements
    return 4 * elements, 4 * elements, 8 * elements


def _memory(device: str, training_gib: float, setup_gib: float | None, phases: bool) -> rf.Memory:
    """Training and setup peaks (``phases``), or only the whole process's peak, as rank files
    written before the engine measured phases: the larger of the two."""
    training, setup = int(training_gib * GIB), int((setup_gib if setup_gib is not None else training_gib / 2) * GIB)
    cuda = device == "cuda"

    def phase(value: int) -> rf.PhasePeak:
        return rf.PhasePeak(cuda_max_allocated_bytes=value if cuda else None,
                            cuda_max_reserved_bytes=value if cuda else None, cpu_rss_bytes=None if cuda else value)
    whole = max(training, setup)
    return rf.Memory(cuda_max_allocated_bytes=whole if cuda else None, cuda_max_reserved_bytes=whole if cuda else None,
                     cpu_peak_rss_bytes=whole if not cuda else 3 * GIB, setup=phase(setup) if phases else None,
                     training=phase(training) if phases else None)


def rank_file(*, run: str, rank: int, mode: str, world: int, tp: int, batch: int, seq_len: int = 1024,
              status: str = COMPLETED, step_median: float = 0.5, memory_gib: float = 10.0,
              losses: tuple[float, ...] = (9.0, 8.0, 7.0), error: str | None = None, device: str = "cuda",
              node: str = "n1", attempt: int = 1, start_step: int = 0, timed: int | None = None,
              job_id: str | None = "1", node_list: str = "n1", device_name: str | None = None, grad_accum: int = 1,
              precision: str = "bf16", setup_gib: float | None = None, phases: bool = True,
              regime_recorded: bool = True, model_state: tuple[int, int, int] | None = None,
              prediction: bool = True, predicted_state: int | None = None,
              predicted_gib: float | None = None, wall_time_s: float = 60.0,
              parts_ms: dict[str, float] | None = None, joules: float | None = None,
              gpu: str | None = None) -> rf.RankFile:
    """One rank file of attempt ``attempt``, which ran ``losses`` from step ``start_step``; of
    those, the last ``timed`` (default: 5 when it completed, none otherwise) were timed, each at
    ``step_median`` seconds. No timed step: no throughput, and the engine's reason why.
    ``job_id`` None: a run without Slurm. ``memory_gib`` is the training peak, ``setup_gib`` the
    setup peak (default: half of it); ``phases`` False and ``regime_recorded`` False write the
    files of an engine from before those fields. ``model_state`` (parameter, gradient,
    optimizer bytes; default ``model_state_bytes``) is recorded when the run completed.
    ``prediction`` False writes a file from before the engine recorded the memory model's
    prediction; otherwise it predicts ``predicted_state`` bytes of model state (default: the
    measured total, exact) and ``predicted_gib`` allocated (default: 0.9 × ``memory_gib``, 10 % under).
    ``parts_ms``: a profiled window of one step with these parts (ms; the others 0), whose
    collectives move exactly the contract's bytes; None: not profiled. ``joules``: what the rank's
    GPU (PCI bus id ``gpu``, default one per rank) drew over the timed steps, whose span is their
    step times; None: no energy reading, and the engine's reason for a GPU without NVML."""
    layout = Layout(world_size=world, tp_size=tp)
    completed = status == COMPLETED
    timed = (5 if completed else 0) if timed is None else timed
    global_batch = layout.global_batch(batch, grad_accum)
    steps_done = start_step + len(losses)
    device_name = device_name or (A100 if device == "cuda" else "CPU")
    peak = lookup_peak(device, device_name, precision)
    config = TrainConfig(mode=mode, model="gpt2-large", tp_size=tp, batch_size=batch, grad_accum=grad_accum,
                         seq_len=seq_len, steps=10, warmup_steps=5, precision=precision,
                         data=Path("/data/wikitext-103"), out=Path(f"/r/{run}"), run_id=run)
    params, grads, optimizer = model_state or model_state_bytes(mode, layout.dp_size, tp)
    state = predicted_state if predicted_state is not None else params + grads + optimizer
    allocated = int((predicted_gib if predicted_gib is not None else 0.9 * memory_gib) * GIB)
    context = 500 * 1024**2 if device == "cuda" else 0
    predicted = rf.MemoryPrediction(
        device_type=device, total_bytes=allocated + context, allocated_bytes=allocated, model_state_bytes=state,
        lines=[rf.PredictionLine(name="model state (sample)", bytes=state, formula="sample", in_allocated=True),
               rf.PredictionLine(name="the rest (sample)", bytes=allocated - state, formula="sample",
                                 in_allocated=True),
               *([rf.PredictionLine(name="CUDA context", bytes=context, formula="sample", in_allocated=False)]
                 if context else [])]) if prediction else None
    throughput = rf.Throughput(
        timing="CUDA events", timed_steps=timed, step_times_s=[step_median] * timed, step_time_median_s=step_median,
        step_time_mean_s=step_median, run_step_time_median_s=DECOY, tokens_per_step=global_batch * seq_len,
        samples_per_step=global_batch, rank_tokens_per_s=DECOY, rank_samples_per_s=DECOY, run_tokens_per_s=DECOY,
        run_samples_per_s=DECOY) if timed else None
    flops = rf.Flops(formula="PaLM", n_params=700_000_000, flops_per_token=FLOPS_PER_TOKEN,
                     achieved_tflops_per_s=DECOY, peak_tflops_per_s=peak.tflops, peak_source=peak.source,
                     mfu=DECOY if peak.tflops else None, mfu_missing_reason=peak.missing_reason) if timed else None
    dp_rank, tp_rank = layout.position(rank)
    energy = rf.Energy(device=gpu or f"00000000:{rank + 1:02X}:00.0", joules=joules, span_s=step_median * timed,
                       timed_steps=timed, run_tokens=global_batch * seq_len * timed, mean_power_w=DECOY,
                       run_joules_per_token=DECOY) if joules is not None and timed else None
    no_energy = (f"no energy counter on a {device} device (NVML measures NVIDIA GPUs)" if device != "cuda"
                 else "NVML's energy counter could not be read: NVMLError_LibraryNotFound: NVML Shared Library Not Found")
    return rf.RankFile(
        run_id=run, status=status, error=error, config=config, mode=mode, world_size=world,
        dp_size=layout.dp_size, tp_size=tp,
        attempt=attempt, rank=rank, local_rank=rank % 4, dp_rank=dp_rank, tp_rank=tp_rank, launcher="srun",
        hostname="host",
        device_type=device, device_name=device_name,
        versions=rf.Versions(python="3.11", torch="2.13.0", deepspeed="0.19.8", transformers=None, cuda="12.8"),
        slurm=rf.Slurm(job_id=job_id, array_job_id=None, array_task_id=None, node_list=node_list, node=node,
                       restart_count=attempt - 1) if job_id else None,
        model=rf.ModelInfo(name="gpt2-large", n_layer=36, n_head=20, n_embd=1280, vocab_size=50304, seq_len=seq_len,
                           params_total=774_000_000, params_non_embedding=708_000_000, params_matmul=708_000_000),
        batch_size=batch, global_batch=global_batch, total_steps=10, steps_completed=steps_done,
        resumed_from_step=start_step or None, started_at="2026-11-24T00:00:00+00:00",
        finished_at="2026-11-24T00:01:00+00:00",
        wall_time_s=wall_time_s, throughput=throughput, flops=flops,
        throughput_missing_reason=None if timed or not completed else
        f"every step left after resuming at step {start_step} was warm-up",
        precision=regime(mode, precision) if regime_recorded else None,
        memory=_memory(device, memory_gib, setup_gib, phases),
        model_state=rf.ModelState(
            param_elements_local=params // (4 if mode != "zero3" else 2), full_params_resident=0 if mode == "zero3"
            else PARAMS // tp, params_bytes=params, grads_bytes=grads, optimizer_bytes=optimizer,
            total_bytes=params + grads + optimizer, expected_bytes=params + grads + optimizer,
            expectation="16 B per element (sample)") if completed else None,
        prediction=predicted,
        loss=rf.Loss(start_step=start_step, values=list(losses), averaged_over_dp=completed),
        profile=(_profile(config, layout, config.backend_on(device), parts_ms) if parts_ms is not None and completed
                 else None),
        profile_missing_reason=None if parts_ms is not None else "--profile-steps 0",
        energy=energy, energy_missing_reason=None if energy else no_energy,
    )


def _profile(config: TrainConfig, layout: Layout, backend: str, parts_ms: dict[str, float]) -> StepProfile:
    """One profiled step of ``parts_ms``; its collectives the contract's, each in flight as long as its exposed part."""
    parts = {part: parts_ms.get(part, 0.0) / 1e3 for part in PARTS}
    expected = collectives.by_kind(collectives.per_step(config, model_dims(config.model, 50304), Layout(
        layout.world_size, layout.tp_size), backend))
    uses = [CollectiveUse(kind=kind, count=total.count or 1, bytes=total.bytes, in_flight_s=parts[kind])
            for kind, total in expected.items()]
    flying = sum(parts[kind] for kind in expected)
    step = ProfiledStep(wall_s=sum(parts.values()), parts_s=parts, collectives=uses, comm_in_flight_s=flying,
                        comm_hidden_s=0.0)
    return StepProfile(steps=[step], how="1 optimizer step after the last timed one; sample", overhead=0.05,
                       trace_file="attempts/1/trace-rank-0.json.gz", trace_bytes=100_000)


def write_run(folder: Path, run: str, *, ranks: list[int] | None = None, step_medians: list[float] | None = None,
              memory_gib: list[float] | None = None, wall_times_s: list[float] | None = None,
              joules: list[float | None] | None = None, gpus: list[str] | None = None, **fields) -> None:
    """Write the rank files of one run: all of ``range(world)`` unless ``ranks`` names some."""
    world = fields["world"]
    for rank in ranks if ranks is not None else range(world):
        record = rank_file(run=run, rank=rank, step_median=(step_medians or [0.5] * world)[rank],
                           memory_gib=(memory_gib or [10.0] * world)[rank],
                           wall_time_s=(wall_times_s or [60.0] * world)[rank],
                           joules=(joules or [None] * world)[rank], gpu=(gpus or [None] * world)[rank], **fields)
        rf.write(folder / run, record)
