"""One row per run (``runs.csv``): its figures recomputed from the rank files' raw fields, never
copied from a rank's own summary, so a figure means one thing however the run was laid out.
tokens/s, achieved TFLOP/s and MFU come from ``hpml_core.contract.metrics``, as in the engine
and the bench. Every row has every column: a run that did not complete has None for its figures
(its status and reason say why), and a completed one missing a figure says why in the note
beside it (``throughput_note``, ``mfu_missing_reason``, ``prediction_note``,
``speed_prediction_note``).

Every figure's definition: docs/report.md.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace

from analysis.collect import Attempt, RunResult
from analysis.columns import APART
from analysis.time_parts import RunParts, run_parts
from hpml_core.contract import energy, gpus, metrics
from hpml_core.contract.layout import Layout
from hpml_core.contract.models import model_dims
from hpml_core.contract.precision import regime
from hpml_core.contract.rank_file import RankFile
from hpml_core.contract.step_time import Performance, StepPrediction, predict_step
from hpml_core.contract.units import GIB, MIB

# How a layout is named in the tables (hpml_core.contract.config.MODES); rank files written with the
# seed's names (baseline, hybrid) are read as ddp and zero3.
MODE_WORDS = {"single": "single", "ddp": "DDP", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "zero3": "ZeRO-3",
              "fsdp2": "FSDP2"}
NO_PREDICTION = "its rank files hold no memory prediction (written before hpml recorded it)"
CPU_PEAK = ("on a CPU the training peak is not compared: the prediction is for a GPU's allocator, and a CPU "
            "process's resident set is mostly the interpreter and libraries")


@dataclass(frozen=True)
class Setting:
    """What the run is, from its latest rank files; all None before it wrote any."""
    mode: str | None = None
    nodes: int | None = None
    world_size: int | None = None
    dp_size: int | None = None
    tp_size: int | None = None
    model: str | None = None
    seq_len: int | None = None
    batch_per_gpu: int | None = None
    grad_accum: int | None = None
    global_batch: int | None = None
    precision: str | None = None
    regime: str | None = None  # the precision regime in words
    regime_key: str | None = None  # what tells two regimes apart
    optimizer: str | None = None
    grad_ckpt: bool | None = None
    attn: str | None = None
    compile: bool | None = None
    device: str | None = None  # cuda or cpu
    device_name: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Hours:
    """The hours the run held its devices, failed attempts included."""
    device_hours: float | None = None
    device_hours_unit: str | None = None  # GPU-hours, or process-hours on a CPU
    device_hours_source: str | None = None  # Slurm elapsed, rank files' wall time, or both


@dataclass(frozen=True)
class ModelStateFigures:
    """The rank holding the most model state, measured from its tensors, and its prediction."""
    model_state_per_gpu_mib: float | None = None
    model_state_params_mib: float | None = None
    model_state_grads_mib: float | None = None
    model_state_optimizer_mib: float | None = None
    predicted_model_state_mib: float | None = None
    model_state_error_pct: float | None = None


@dataclass(frozen=True)
class Throughput:
    timed_steps: int | None = None
    slowest_step_time_median_s: float | None = None
    tokens_per_s: float | None = None
    samples_per_s: float | None = None
    tokens_per_s_per_gpu: float | None = None
    flops_per_token: int | None = None
    achieved_tflops_per_gpu: float | None = None
    peak_tflops_per_gpu: float | None = None
    peak_source: str | None = None
    mfu: float | None = None
    mfu_missing_reason: str | None = None
    timing: str | None = None  # how the engine timed a step
    joules_per_token: float | None = None  # the run's GPUs over the timed steps (hpml_core.contract.energy)
    energy_missing_reason: str | None = None


@dataclass(frozen=True)
class MemoryFigures:
    memory_metric: str | None = None  # which peak was measured (the training phase's, or the whole process's)
    peak_memory_per_gpu_max_gib: float | None = None
    peak_memory_per_gpu_mean_gib: float | None = None
    setup_memory_per_gpu_max_gib: float | None = None


@dataclass(frozen=True)
class Predictions:
    """The memory model's training peak and the step-time model's tokens/s, against the
    measurement; each note says why a comparison is missing."""
    predicted_peak_gib: float | None = None
    peak_error_pct: float | None = None
    prediction_note: str | None = None
    predicted_tokens_per_s: float | None = None
    tokens_per_s_error_pct: float | None = None
    speed_prediction_note: str | None = None
    # with the site's calibration: the same model at the site profile's own (assumed) rates
    assumed_tokens_per_s: float | None = None
    assumed_tokens_per_s_error_pct: float | None = None


@dataclass(frozen=True)
class RunRow:
    run: str
    configuration: str
    status: str
    reason: str | None
    attempts: int
    job_ids: str | None  # each attempt's Slurm job, oldest first, ";"-separated ("-": none)
    node_lists: str | None
    hours: Hours = field(default_factory=Hours)
    setting: Setting = field(default_factory=Setting)
    steps_completed: int | None = None
    final_loss: float | None = None
    throughput_attempt: int | None = None  # the attempt the figures come from
    throughput_note: str | None = None  # why they come from another than the last, or from none
    model_state: ModelStateFigures = field(default_factory=ModelStateFigures)
    throughput: Throughput = field(default_factory=Throughput)
    memory: MemoryFigures = field(default_factory=MemoryFigures)
    predictions: Predictions = field(default_factory=Predictions)
    parts: RunParts | None = field(default=None, metadata=APART)  # where the step goes: time_parts.csv
    parts_missing_reason: str | None = None


def describe(mode: str, world: int, dp: int, tp: int, device: str, batch: int, precision: str,
             regime_phrase: str | None = None, grad_accum: int = 1) -> str:
    """The description column: layout, batch (and accumulation, which sets the global batch of a
    strong-scaling baseline), and the precision with its regime in words (the two training paths
    mean different things by "bf16")."""
    units = "GPU" if device == "cuda" else "CPU process"
    size = f"{world} {units}{'es' if units.endswith('s') and world > 1 else 's' if world > 1 else ''}"
    if world == 1:
        layout = f"single {units}" if mode == "single" else f"{MODE_WORDS[mode]} on 1 {units}"
    elif tp == 1:
        layout = f"{MODE_WORDS[mode]} on {size}"
    else:
        over_dp = "all-reduce" if mode == "ddp" else MODE_WORDS[mode]
        layout = f"DP {dp} ({over_dp}) x TP {tp} on {size}"
    in_words = f" ({regime_phrase})" if regime_phrase and regime_phrase != precision else ""
    accumulated = f" x {grad_accum} accumulated" if grad_accum > 1 else ""
    return f"{layout}, batch {batch}/{'GPU' if device == 'cuda' else 'process'}{accumulated}, {precision}{in_words}"


def _nodes(files: list[RankFile]) -> int:
    """Distinct Slurm nodes, else hostnames."""
    return len({(f.slurm.node if f.slurm and f.slurm.node else f.hostname) for f in files})


def _setting(files: list[RankFile]) -> Setting:
    first, config = files[0], files[0].config
    held = first.precision or regime(first.mode, config.precision)  # older files: what the engine did then
    return Setting(mode=first.mode, nodes=_nodes(files), world_size=first.world_size, dp_size=first.dp_size,
                   tp_size=first.tp_size, model=first.model.name, seq_len=first.model.seq_len,
                   batch_per_gpu=first.batch_size, grad_accum=config.grad_accum, global_batch=first.global_batch,
                   precision=config.precision, regime=held.short(), regime_key=held.key(),
                   optimizer=config.optimizer, grad_ckpt=config.grad_ckpt, attn=config.attn, compile=config.compile,
                   device=first.device_type, device_name=first.device_name,
                   description=describe(first.mode, first.world_size, first.dp_size, first.tp_size,
                                        first.device_type, first.batch_size, config.precision, held.short(),
                                        config.grad_accum))


def _throughput_note(result: RunResult, measured: Attempt | None) -> str | None:
    """Where the run's figures come from, when it is not its last attempt (or nowhere)."""
    last = result.attempts[-1]
    if measured is last:
        return None
    why = next((f.throughput_missing_reason for f in last.ranks.values() if f.throughput_missing_reason), None)
    if measured is None:
        return f"no attempt has timed steps{f' ({why})' if why else ''}"
    return (f"throughput from attempt {measured.number} of {len(result.attempts)}"
            + (f" (attempt {last.number}: {why})" if why else ""))


def _model_state(result: RunResult) -> ModelStateFigures:
    """The model state of the rank holding the most, from the last attempt whose every rank
    recorded it (a run resumed into warm-up only records it in its last attempt), and that
    rank's predicted model state beside it."""
    for attempt in reversed(result.attempts):
        states = [f.model_state for f in attempt.ranks.values()]
        if sorted(attempt.ranks) == list(range(result.world_size)) and None not in states:
            holder = max(attempt.ranks.values(), key=lambda f: f.model_state.total_bytes)
            most = holder.model_state
            predicted = holder.prediction.model_state_bytes if holder.prediction is not None else None
            return ModelStateFigures(
                model_state_per_gpu_mib=most.total_bytes / MIB, model_state_params_mib=most.params_bytes / MIB,
                model_state_grads_mib=most.grads_bytes / MIB, model_state_optimizer_mib=most.optimizer_bytes / MIB,
                predicted_model_state_mib=None if predicted is None else predicted / MIB,
                model_state_error_pct=None if predicted is None else
                100 * (predicted - most.total_bytes) / most.total_bytes)
    return ModelStateFigures()


def _throughput(files: list[RankFile]) -> Throughput:
    first = files[0]
    slowest = max(f.throughput.step_time_median_s for f in files)
    # The global batch (batch per DP rank × DP × accumulation) is all the run trains on per step:
    # tensor-parallel ranks share their replica's samples, so their tokens count once.
    tokens_per_s = metrics.tokens_per_s(first.global_batch * first.model.seq_len, slowest)
    achieved = metrics.achieved_tflops_per_device(first.flops.flops_per_token, tokens_per_s, first.world_size)
    peak = first.flops.peak_tflops_per_s
    return Throughput(
        timed_steps=first.throughput.timed_steps, slowest_step_time_median_s=slowest, tokens_per_s=tokens_per_s,
        samples_per_s=first.global_batch / slowest, tokens_per_s_per_gpu=tokens_per_s / first.world_size,
        flops_per_token=first.flops.flops_per_token, achieved_tflops_per_gpu=achieved, peak_tflops_per_gpu=peak,
        peak_source=first.flops.peak_source, mfu=metrics.mfu(achieved, peak),
        mfu_missing_reason=None if peak else first.flops.mfu_missing_reason, timing=first.throughput.timing,
        **_energy(files))


def _energy(files: list[RankFile]) -> dict:
    """Joules per token from every rank's reading of its GPU, each GPU counted once; why not, else."""
    readings = [(f.energy.device, f.energy.joules) if f.energy else None for f in files]
    if None in readings:
        why = next((f.energy_missing_reason for f in files if f.energy is None and f.energy_missing_reason),
                   "not recorded (rank files written before hpml measured energy)")
        return {"energy_missing_reason": why}
    return {"joules_per_token": energy.run_joules_per_token(readings, files[0].energy.run_tokens)}


def _memory(files: list[RankFile]) -> MemoryFigures:
    """Training peak (maximum and mean over ranks) and setup peak (maximum), in GiB."""
    peaks = [f.memory.peak()[0] for f in files]
    setups = [f.memory.setup_peak() for f in files]
    return MemoryFigures(memory_metric=files[0].memory.peak()[1], peak_memory_per_gpu_max_gib=max(peaks) / GIB,
                         peak_memory_per_gpu_mean_gib=statistics.fmean(peaks) / GIB,
                         setup_memory_per_gpu_max_gib=None if None in setups else max(setups) / GIB)


def _peak_prediction(files: list[RankFile]) -> tuple[float | None, float | None, str | None]:
    """The predicted allocated bytes (maximum over ranks) against the measured training peak, on
    GPUs, in GiB and percent; why not, elsewhere."""
    predictions = [f.prediction for f in files]
    if None in predictions:
        return None, None, NO_PREDICTION
    if files[0].device_type != "cuda":
        return None, None, CPU_PEAK
    if files[0].memory.peak()[1] != "cuda_max_allocated" or predictions[0].device_type != "cuda":
        return None, None, "no training-phase max_memory_allocated to compare with"
    predicted, measured = max(p.allocated_bytes for p in predictions), max(f.memory.peak()[0] for f in files)
    return predicted / GIB, 100 * (predicted - measured) / measured, None


def _predicted_step(files: list[RankFile], performance: Performance | None) -> StepPrediction | None:
    """The step-time model's step for the attempt the figures come from (None: no site speed given)."""
    if performance is None:
        return None
    first = files[0]
    return predict_step(first.config, model_dims(first.config.model, first.model.vocab_size),
                        Layout(first.world_size, first.tp_size), first.world_size // _nodes(files),
                        gpus.by_device_name(first.device_name), performance)


def _speed_prediction(step: StepPrediction | None, tokens_per_s: float) -> tuple[float | None, float | None, str | None]:
    """The step-time model's tokens/s against the measured figure."""
    if step is None:
        return None, None, None
    if step.tokens_per_s is None:
        return None, None, step.missing_reason
    return step.tokens_per_s, 100 * (step.tokens_per_s - tokens_per_s) / tokens_per_s, None


def _predictions(files: list[RankFile], throughput: Throughput, model_state: ModelStateFigures,
                 step: StepPrediction | None) -> Predictions:
    peak, peak_error, note = _peak_prediction(files)
    if model_state.model_state_per_gpu_mib is not None and model_state.predicted_model_state_mib is None:
        note = NO_PREDICTION
    speed, speed_error, speed_note = _speed_prediction(step, throughput.tokens_per_s)
    return Predictions(predicted_peak_gib=peak, peak_error_pct=peak_error, prediction_note=note,
                       predicted_tokens_per_s=speed, tokens_per_s_error_pct=speed_error,
                       speed_prediction_note=speed_note)


def _device_hours(result: RunResult) -> Hours:
    """Each Slurm job Slurm knows, its elapsed time × the run's world size; each other attempt
    that left a rank file, its slowest rank's wall time × its world size. A requeued job keeps
    its id and Slurm reports its last run's elapsed time, so only that job's last attempt is
    covered by it."""
    last_of_job = {a.job_id: a.number for a in result.attempts if a.ranks and a.job_id}
    seconds = sum(result.slurm_elapsed_s.values()) * result.world_size
    sources = {"Slurm elapsed"} if result.slurm_elapsed_s else set()
    for attempt in result.attempts:
        if not attempt.ranks or (attempt.job_id in result.slurm_elapsed_s
                                 and last_of_job[attempt.job_id] == attempt.number):
            continue
        seconds += max(f.wall_time_s for f in attempt.ranks.values()) * result.world_size
        sources.add("rank files' wall time")
    if not sources:
        return Hours()
    devices = {f.device_type for a in result.attempts for f in a.ranks.values()}
    # A job that died before any rank wrote a file: Slurm allocated it GPUs.
    unit = "GPU-hours" if "cuda" in devices or not devices else "process-hours"
    return Hours(seconds / 3600, unit, " + ".join(sorted(sources)))


def run_row(result: RunResult, performance: Performance | None = None) -> RunRow:
    """``performance``: the site's stated speed, for the predicted tokens/s."""
    row = RunRow(run=result.name, configuration=result.configuration, status=result.status, reason=result.reason,
                 attempts=len(result.attempts),
                 job_ids=";".join(a.job_id or "-" for a in result.attempts) or None,
                 node_lists=";".join(a.node_list or "-" for a in result.attempts) or None,
                 hours=_device_hours(result))
    if not result.ranks:
        return row
    latest = [result.ranks[rank] for rank in sorted(result.ranks)]
    row = replace(row, setting=_setting(latest), steps_completed=latest[0].steps_completed)
    if not result.completed:
        return row
    curve, measured = result.loss_curve(), result.measured
    row = replace(row, final_loss=curve[-1][1] if curve else None,
                  throughput_attempt=measured.number if measured else None,
                  throughput_note=_throughput_note(result, measured), model_state=_model_state(result))
    if measured is None:
        return row
    files = [measured.ranks[rank] for rank in sorted(measured.ranks)]
    throughput, step = _throughput(files), _predicted_step(files, performance)
    parts, parts_missing = run_parts(files, step, None if performance else "no site speed given")
    predictions = _predictions(files, throughput, row.model_state, step)
    if performance is not None and performance.calibration is not None:  # the planner before calibration
        assumed, error, _ = _speed_prediction(_predicted_step(files, replace(performance, calibration=None)),
                                              throughput.tokens_per_s)
        predictions = replace(predictions, assumed_tokens_per_s=assumed, assumed_tokens_per_s_error_pct=error)
    return replace(row, throughput=throughput, memory=_memory(files), predictions=predictions,
                   parts=parts, parts_missing_reason=parts_missing)


def run_rows(results: list[RunResult], performance: Performance | None = None) -> list[RunRow]:
    return [run_row(result, performance) for result in results]
