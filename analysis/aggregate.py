"""From rank files to the figures of the report: one row per run, then one per configuration.
Every figure is defined here, once.

Per run (completed), recomputed from the rank files' raw fields rather than copied, from the
run's last attempt with step times (a run resumed with only warm-up steps left takes them from
an earlier one, and says so in ``throughput_note``):
- tokens/s = the global batch × sequence length (each token once, however many TP ranks share
  it) / the slowest rank's median step time; samples/s likewise with the global batch;
  tokens/s per GPU = tokens/s / world size.
- MFU = achieved model FLOP/s per device (flops per token × tokens/s / world size) / the dense
  peak the engine recorded for the device and precision; missing, with the engine's reason,
  where the peak is unknown (a CPU, a GPU not in the table).
- memory per GPU: the training peak (``Memory.peak()``: CUDA max_memory_allocated from the first
  timed step to the last; on a CPU the resident-set high-water mark over the same steps), its
  maximum and mean over the ranks; beside it the setup peak (``Memory.setup_peak()``: process
  start to the end of setup), maximum over the ranks. Rank files without the phase split fall
  back to the whole-process peak, setup included (``memory_metric`` names which), and have no
  setup figure.
- model state per GPU: the parameter, gradient and optimizer bytes a rank holds, measured from
  its tensors (``model_state``), of the rank holding the most (its parts are that rank's, so
  they add up), in MiB; taken from the last attempt whose ranks all recorded it.
- precision regime: the rank files' (``hpml_core.contract.precision``; derived from mode and
  precision for files written before the engine recorded it).
- final loss: the last step's loss (rank 0's: the mean over data-parallel ranks), of the loss
  curve assembled from all attempts (``analysis.collect``).
- attempts: how many the run had, and each one's Slurm job id and node list.
- predicted against measured memory: each rank file records the memory model's prediction for
  it (``hpml_core.contract.memory_model``, ``RankFile.prediction``). Model state: the predicted
  parameter + gradient + optimizer bytes of the rank whose measured model state is counted
  above, against that measurement, on every device; error % = 100 × (predicted − measured) /
  measured. Training peak (GPUs only): the predicted allocated bytes (every line inside
  ``max_memory_allocated``), maximum over the ranks, against the measured training peak; on a
  CPU it is n/a (the prediction is for a GPU's allocator; a CPU's resident set is mostly the
  interpreter), as for files without a prediction or a training peak (``prediction_note`` says why).
- predicted against measured tokens/s: the step-time model (``hpml_core.contract.step_time``) for
  the measured attempt's configuration, layout, nodes (distinct Slurm nodes, else hostnames) and
  device (its peak from ``hpml_core.contract.gpus`` by name; a CPU takes the site's
  ``device_tflops``), at the speed the report's site profile states; error % as above. The
  prediction is made when the report is, from the site profile as it is then.
- device hours (GPU-hours; process-hours on a CPU): every Slurm job of the run that Slurm knows
  (each attempt's, and the ledger's latest, which may have died before any rank wrote a file),
  failed, out-of-memory and killed ones included: Slurm's elapsed time (``sacct``; the job's
  whole run, start-up included) × the run's world size; every other attempt that left a rank file
  (runs without Slurm; a requeued job's earlier runs, since Slurm keeps only the last one's
  elapsed time): its slowest rank's wall time (``wall_time_s``, from the engine's start of setup
  to the rank file) × the world size. ``device_hours_source`` says which.

Per configuration: the repeats of one run entry on one device (repeats that ran on two devices
are two rows: a median never mixes hardware); its device hours are the sum over all its runs,
whatever their state. Each figure is the median over the completed
repeats, with its spread, min and max (with n = 3 repeats a 95 % t-interval, ±4.3·s/√3, is wider
than the data and assumes a normality three points cannot show; min–max is what was measured).

Against a baseline, always a completed 1-process configuration (any mode: ZeRO-3 trains in
another precision regime than the PyTorch path, so it is compared with a 1-process ZeRO-3 run)
on the same device, with the same model, sequence length, precision regime, optimizer,
activation checkpointing, attention and compilation; a configuration that is itself 1-process is
its own baseline:
- weak scaling: the baseline also has the same batch per GPU and accumulation (the same work per
  GPU per optimizer step; accumulation is in the key because it changes how often the optimizer
  and the gradient reduction run per sample). speedup = T_N / T_1 (tokens/s), scaling efficiency
  = T_N / (N × T_1), N the world size; memory reduction = 1 − M_N / M_1 on the training peak
  (maximum over ranks; missing, with ``memory_reduction_note``, where the two measured different
  peaks, e.g. a training peak against an older file's whole-process one) and model-state
  reduction = 1 − S_N / S_1, against this baseline.
- strong scaling: the baseline trains the same global batch (batch × DP × accumulation) in one
  process, by accumulation (of several, the one with the same batch per micro-step, else the
  first): speedup_strong = T_N / T_1, scaling_efficiency_strong = speedup_strong / N.
Each comparison is computed from the medians, with an interval from the two ranges (a ratio
X_N / X_1 lies in [min X_N / max X_1, max X_N / min X_1]), and is "within noise" when the
configuration's range overlaps the baseline's: for the speedup, the ranges of T_N and T_1; for
the efficiency, of T_N and N × T_1; for a reduction, of M_N and M_1 (equivalently: the interval
holds 1, 100 %, 0). With one completed repeat on either side it is "no spread: 1 repeat".
Where no baseline exists the figures are missing, with the nearest 1-process configuration and
what differs (device, regime, batch...), never a guess.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import pandas as pd

from analysis.collect import Attempt, RunResult
from hpml_core.contract import gpus, metrics
from hpml_core.contract.layout import Layout
from hpml_core.contract.models import model_dims
from hpml_core.contract.precision import regime
from hpml_core.contract.rank_file import RankFile
from hpml_core.contract.run_states import COMPLETED
from hpml_core.contract.step_time import Performance, predict_step
from hpml_core.contract.units import GIB, MIB


# What a baseline must share with the configuration (besides being one process): the settings
# that change a GPU's own speed and memory, and the device itself.
SHARED_KEY = ("model", "seq_len", "regime_key", "optimizer", "grad_ckpt", "attn", "compile", "device_name")
WEAK_KEY = (*SHARED_KEY[:2], "batch_per_gpu", "grad_accum", *SHARED_KEY[2:])
STRONG_KEY = (*SHARED_KEY[:2], "global_batch", *SHARED_KEY[2:])
MODEL_STATE_PARTS = ("params", "grads", "optimizer")
SPREAD = ("tokens_per_s", "samples_per_s", "tokens_per_s_per_gpu", "mfu", "peak_memory_per_gpu_max_gib",
          "setup_memory_per_gpu_max_gib", "model_state_per_gpu_mib",
          *(f"model_state_{part}_mib" for part in MODEL_STATE_PARTS), "final_loss", "predicted_model_state_mib",
          "model_state_error_pct", "predicted_peak_gib", "peak_error_pct", "predicted_tokens_per_s",
          "tokens_per_s_error_pct")
DESCRIBED = ("mode", "nodes", "world_size", "dp_size", "tp_size", "model", "seq_len", "batch_per_gpu", "grad_accum",
             "global_batch", "precision", "regime", "regime_key", "optimizer", "grad_ckpt", "attn", "compile", "device")
COUNTS = {"nodes", "world_size", "dp_size", "tp_size", "seq_len", "batch_per_gpu", "grad_accum", "global_batch"}
# How a layout is named in the tables (hpml_core.contract.config.MODES); rank files written with the
# seed's names (baseline, hybrid) are read as ddp and zero3.
MODE_WORDS = {"single": "single", "ddp": "DDP", "zero3": "ZeRO-3"}
WITHIN, BEYOND, NO_SPREAD = "within noise", "beyond noise", "no spread: 1 repeat"


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
        over_dp = "ZeRO-3" if mode == "zero3" else "all-reduce"
        layout = f"DP {dp} ({over_dp}) x TP {tp} on {size}"
    in_words = f" ({regime_phrase})" if regime_phrase and regime_phrase != precision else ""
    accumulated = f" x {grad_accum} accumulated" if grad_accum > 1 else ""
    return f"{layout}, batch {batch}/{'GPU' if device == 'cuda' else 'process'}{accumulated}, {precision}{in_words}"


def _attempts_columns(result: RunResult) -> dict:
    """How many attempts the run had, and each one's Slurm job and node list, oldest first
    (";"-separated; "-" for an attempt without Slurm)."""
    return {"attempts": len(result.attempts),
            "job_ids": ";".join(a.job_id or "-" for a in result.attempts) or None,
            "node_lists": ";".join(a.node_list or "-" for a in result.attempts) or None}


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


def _setting_columns(files: list[RankFile]) -> dict:
    """What the run is: layout, model, batch, precision and its regime, device."""
    first, config = files[0], files[0].config
    held = first.precision or regime(first.mode, config.precision)  # older files: what the engine did then
    return dict(mode=first.mode, nodes=len({(f.slurm.node if f.slurm and f.slurm.node else f.hostname) for f in files}),
                world_size=first.world_size, dp_size=first.dp_size, tp_size=first.tp_size, model=first.model.name,
                seq_len=first.model.seq_len, batch_per_gpu=first.batch_size, grad_accum=config.grad_accum,
                global_batch=first.global_batch, precision=config.precision, regime=held.short(),
                regime_key=held.key(), optimizer=config.optimizer, grad_ckpt=config.grad_ckpt, attn=config.attn,
                compile=config.compile, device=first.device_type, device_name=first.device_name,
                steps_completed=first.steps_completed,
                description=describe(first.mode, first.world_size, first.dp_size, first.tp_size, first.device_type,
                                     first.batch_size, config.precision, held.short(), config.grad_accum))


def _memory_columns(files: list[RankFile]) -> dict:
    """Training peak (maximum and mean over ranks) and setup peak (maximum), in GiB."""
    peaks = [f.memory.peak()[0] for f in files]
    setups = [f.memory.setup_peak() for f in files]
    return dict(memory_metric=files[0].memory.peak()[1], peak_memory_per_gpu_max_gib=max(peaks) / GIB,
                peak_memory_per_gpu_mean_gib=statistics.fmean(peaks) / GIB,
                setup_memory_per_gpu_max_gib=None if None in setups else max(setups) / GIB)


NO_PREDICTION = "its rank files hold no memory prediction (written before hpml recorded it)"
CPU_PEAK = ("on a CPU the training peak is not compared: the prediction is for a GPU's allocator, and a CPU "
            "process's resident set is mostly the interpreter and libraries")


def _model_state_columns(result: RunResult) -> dict:
    """The model state of the rank holding the most, from the last attempt whose every rank
    recorded it (a run resumed into warm-up only records it in its last attempt), and that
    rank's predicted model state beside it."""
    for attempt in reversed(result.attempts):
        states = [f.model_state for f in attempt.ranks.values()]
        if sorted(attempt.ranks) == list(range(result.world_size)) and None not in states:
            holder = max(attempt.ranks.values(), key=lambda f: f.model_state.total_bytes)
            most = holder.model_state
            row = {"model_state_per_gpu_mib": most.total_bytes / MIB,
                   "model_state_params_mib": most.params_bytes / MIB,
                   "model_state_grads_mib": most.grads_bytes / MIB,
                   "model_state_optimizer_mib": most.optimizer_bytes / MIB}
            if holder.prediction is not None:
                predicted = holder.prediction.model_state_bytes
                row.update(predicted_model_state_mib=predicted / MIB,
                           model_state_error_pct=100 * (predicted - most.total_bytes) / most.total_bytes)
            return row
    return {}


def _peak_prediction_columns(files: list[RankFile]) -> dict:
    """The predicted allocated bytes (maximum over ranks) against the measured training peak, on
    GPUs; why not, elsewhere."""
    predictions = [f.prediction for f in files]
    if None in predictions:
        return {"prediction_note": NO_PREDICTION}
    if files[0].device_type != "cuda":
        return {"prediction_note": CPU_PEAK}
    if files[0].memory.peak()[1] != "cuda_max_allocated" or predictions[0].device_type != "cuda":
        return {"prediction_note": "no training-phase max_memory_allocated to compare with"}
    predicted, measured = max(p.allocated_bytes for p in predictions), max(f.memory.peak()[0] for f in files)
    return {"predicted_peak_gib": predicted / GIB, "peak_error_pct": 100 * (predicted - measured) / measured,
            "prediction_note": None}


def _speed_prediction_columns(files: list[RankFile], tokens_per_s: float, performance: Performance | None) -> dict:
    """The step-time model's tokens/s for the attempt the figures come from, against them."""
    if performance is None:
        return {}
    first = files[0]
    nodes = len({(f.slurm.node if f.slurm and f.slurm.node else f.hostname) for f in files})
    step = predict_step(first.config, model_dims(first.config.model, first.model.vocab_size),
                        Layout(first.world_size, first.tp_size), first.world_size // nodes,
                        gpus.by_device_name(first.device_name), performance)
    if step.tokens_per_s is None:
        return {"speed_prediction_note": step.missing_reason}
    return {"predicted_tokens_per_s": step.tokens_per_s,
            "tokens_per_s_error_pct": 100 * (step.tokens_per_s - tokens_per_s) / tokens_per_s}


def _device_hours(result: RunResult) -> dict:
    """The hours the run held its devices (see the module's doc): each Slurm job Slurm knows, its
    elapsed time × the run's world size; each other attempt that left a rank file, its slowest
    rank's wall time × its world size. A requeued job keeps its id and Slurm reports its last
    run's elapsed time, so only that job's last attempt is covered by it."""
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
        return {"device_hours": None, "device_hours_unit": None, "device_hours_source": None}
    devices = {f.device_type for a in result.attempts for f in a.ranks.values()}
    # A job that died before any rank wrote a file: Slurm allocated it GPUs.
    unit = "GPU-hours" if "cuda" in devices or not devices else "process-hours"
    return {"device_hours": seconds / 3600, "device_hours_unit": unit,
            "device_hours_source": " + ".join(sorted(sources))}


def run_row(result: RunResult, performance: Performance | None = None) -> dict:
    row: dict = {"run": result.name, "configuration": result.configuration, "status": result.status,
                 "reason": result.reason, **_attempts_columns(result), **_device_hours(result)}
    if not result.ranks:
        return row
    row.update(_setting_columns([result.ranks[rank] for rank in sorted(result.ranks)]))
    curve = result.loss_curve()
    row["final_loss"] = curve[-1][1] if curve and result.completed else None
    if not result.completed:
        return row
    measured = result.measured
    row.update(throughput_attempt=measured.number if measured else None,
               throughput_note=_throughput_note(result, measured), **_model_state_columns(result))
    if measured is None:
        return row
    files = [measured.ranks[rank] for rank in sorted(measured.ranks)]
    first = files[0]
    slowest = max(f.throughput.step_time_median_s for f in files)
    # The global batch (batch per DP rank × DP × accumulation) is all the run trains on per step:
    # tensor-parallel ranks share their replica's samples, so their tokens count once.
    tokens_per_s = metrics.tokens_per_s(first.global_batch * first.model.seq_len, slowest)
    achieved = metrics.achieved_tflops_per_device(first.flops.flops_per_token, tokens_per_s, first.world_size)
    peak = first.flops.peak_tflops_per_s
    row.update(
        timed_steps=first.throughput.timed_steps, slowest_step_time_median_s=slowest,
        tokens_per_s=tokens_per_s, samples_per_s=first.global_batch / slowest,
        tokens_per_s_per_gpu=tokens_per_s / first.world_size, flops_per_token=first.flops.flops_per_token,
        achieved_tflops_per_gpu=achieved, peak_tflops_per_gpu=peak, peak_source=first.flops.peak_source,
        mfu=metrics.mfu(achieved, peak), mfu_missing_reason=None if peak else first.flops.mfu_missing_reason,
        timing=first.throughput.timing, **_memory_columns(files), **_peak_prediction_columns(files),
        **_speed_prediction_columns(files, tokens_per_s, performance),
    )
    if "model_state_per_gpu_mib" in row and "predicted_model_state_mib" not in row:
        row["prediction_note"] = NO_PREDICTION
    return row


def runs_table(results: list[RunResult], performance: Performance | None = None) -> pd.DataFrame:
    """One row per run; ``performance``: the site's stated speed, for predicted tokens/s."""
    return pd.DataFrame([run_row(result, performance) for result in results])


def loss_table(results: list[RunResult]) -> pd.DataFrame:
    """``loss.csv``: each run's loss curve from step 0, and the attempt each value comes from."""
    rows = [{"run": r.name, "step": step, "loss": loss, "attempt": attempt}
            for r in results for step, loss, attempt in r.loss_curve()]
    return pd.DataFrame(rows, columns=["run", "step", "loss", "attempt"])


def step_times_table(results: list[RunResult]) -> pd.DataFrame:
    """``step_times.csv``: every timed step of every attempt of every run, by rank."""
    rows = [{"run": r.name, "attempt": attempt, "rank": rank, "step": step, "step_time_s": seconds}
            for r in results for attempt, rank, step, seconds in r.step_times()]
    return pd.DataFrame(rows, columns=["run", "attempt", "rank", "step", "step_time_s"])


def _status(group: pd.DataFrame) -> tuple[str, str | None]:
    done = int((group["status"] == COMPLETED).sum())
    others = group[group["status"] != COMPLETED]
    reasons = "; ".join(f"{r.run}: {r.status}" + (f" ({r.reason})" if isinstance(r.reason, str) and r.reason else "")
                        for r in others.itertuples())
    if done == len(group):
        return COMPLETED, None
    if done == 0:
        return ", ".join(others["status"].unique()), reasons
    return f"{done}/{len(group)} {COMPLETED}", reasons


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and value != value)


def _device_groups(runs: pd.DataFrame) -> pd.Series:
    """Each run's device group within its configuration: the device it ran on. A run that has
    not run anywhere yet joins its configuration's device when there is one, and stands apart
    (device unknown) when the configuration ran on several."""
    devices = runs["device_name"] if "device_name" in runs else pd.Series([None] * len(runs), index=runs.index)
    groups = []
    for configuration, device in zip(runs["configuration"], devices):
        if _present(device):
            groups.append(device)
            continue
        known = devices[(runs["configuration"] == configuration) & devices.notna()].unique()
        groups.append(known[0] if len(known) == 1 else "")
    return pd.Series(groups, index=runs.index)


def _configuration_row(name: str, device: str, group: pd.DataFrame) -> dict:
    done = group[group["status"] == COMPLETED]
    described = group.dropna(subset=["description"]) if "description" in group else group.iloc[0:0]
    status, reason = _status(group)
    row = {"configuration": name, "device_name": device or None,
           "description": described["description"].iloc[0] if len(described) else None,
           "status": status, "runs_completed": len(done), "runs_total": len(group), "reason": reason}
    for column in DESCRIBED:
        value = described[column].iloc[0] if len(described) and column in described else None
        row[column] = int(value) if column in COUNTS and _present(value) else value
    for column in SPREAD:
        values = done[column].dropna() if column in done else pd.Series(dtype=float)
        row[f"{column}_median"] = values.median() if len(values) else None
        row[f"{column}_min"] = values.min() if len(values) else None
        row[f"{column}_max"] = values.max() if len(values) else None
    mean_memory = done["peak_memory_per_gpu_mean_gib"].dropna() if len(done) else pd.Series(dtype=float)
    row["peak_memory_per_gpu_mean_gib_median"] = mean_memory.median() if len(mean_memory) else None
    hours = group["device_hours"].dropna() if "device_hours" in group else pd.Series(dtype=float)
    units = group["device_hours_unit"].dropna() if "device_hours_unit" in group else pd.Series(dtype=object)
    row["device_hours_total"] = hours.sum() if len(hours) else None
    row["device_hours_unit"] = units.iloc[0] if len(units) else None
    sources = group["device_hours_source"].dropna() if "device_hours_source" in group else pd.Series(dtype=object)
    row["device_hours_source"] = " + ".join(sorted({part for s in sources for part in s.split(" + ")})) or None
    for column in ("memory_metric", "peak_source", "peak_tflops_per_gpu", "timing", "prediction_note",
                   "speed_prediction_note"):
        present = done[column].dropna() if column in done else pd.Series(dtype=object)
        row[column] = present.iloc[0] if len(present) else None
    if _present(row["peak_error_pct_median"]):
        row["prediction_note"] = None  # a repeat without the comparison does not make the median missing
    reasons = done["mfu_missing_reason"].dropna() if "mfu_missing_reason" in done else pd.Series(dtype=object)
    row["mfu_missing_reason"] = reasons.iloc[0] if len(reasons) and row["mfu_median"] is None else None
    noted = done.dropna(subset=["throughput_note"]) if "throughput_note" in done else done.iloc[0:0]
    row["throughput_note"] = "; ".join(f"{r.run}: {r.throughput_note}" for r in noted.itertuples()) or None
    return row


def configurations_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration and device, in the experiment's order, with the figures over its
    repeats and against its baselines."""
    if runs.empty:
        return pd.DataFrame()
    runs = runs.assign(device_group=_device_groups(runs))
    rows = [_configuration_row(name, device, group)
            for (name, device), group in runs.groupby(["configuration", "device_group"], sort=False)]
    several = {row["configuration"] for row in rows
               if sum(other["configuration"] == row["configuration"] for other in rows) > 1}
    for row in rows:
        row["label"] = f"{row['configuration']} ({row['device_name'] or 'no device yet'})" \
            if row["configuration"] in several else row["configuration"]
    for row in rows:
        row.update(_against_baselines(row, rows))
    return pd.DataFrame(rows)


# --- baselines and comparisons ---

def _spread_of(row: dict, column: str) -> tuple[float, float, float] | None:
    values = tuple(row.get(f"{column}_{part}") for part in ("median", "min", "max"))
    return tuple(map(float, values)) if all(_present(v) for v in values) else None


def _ratio(top: tuple, bottom: tuple) -> tuple[float, float, float]:
    """X_N / X_1 from the medians, with its interval from the two ranges."""
    return top[0] / bottom[0], top[1] / bottom[2], top[2] / bottom[1]


def _noise(interval: tuple, reference: float, row: dict, base: dict) -> str:
    """Whether the two ranges overlap: the ratio's interval holds ``reference``."""
    if row["runs_completed"] < 2 or base["runs_completed"] < 2:
        return NO_SPREAD
    return WITHIN if interval[1] <= reference <= interval[2] else BEYOND


def _comparisons(row: dict, base: dict, figures: dict[str, tuple[str, Callable, float]]) -> dict:
    """Each figure (name -> column, map of the ratio, the ratio meaning "no change") against ``base``,
    with its interval and noise mark; the baseline itself compares as exactly no change."""
    out: dict = {}
    for name, (column, scale, reference) in figures.items():
        mine, theirs = _spread_of(row, column), _spread_of(base, column)
        if mine is None or theirs is None:
            out.update({name: None, f"{name}_min": None, f"{name}_max": None, f"{name}_noise": None})
            continue
        ratio = (1.0, 1.0, 1.0) if base is row else _ratio(mine, theirs)
        low, high = sorted((scale(ratio[1]), scale(ratio[2])))
        out.update({name: scale(ratio[0]), f"{name}_min": low, f"{name}_max": high,
                    f"{name}_noise": None if base is row else _noise(ratio, reference, row, base)})
    return out


def _candidates(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["world_size"] == 1 and _present(r["tokens_per_s_median"])]


def _matching(row: dict, rows: list[dict], key: tuple[str, ...]) -> dict | None:
    """The row itself when it is one process; else the first candidate sharing the key,
    preferring one with the same batch per micro-step."""
    found = [r for r in _candidates(rows) if all(r[k] == row[k] for k in key)]
    found.sort(key=lambda r: (r is not row, r["batch_per_gpu"] != row["batch_per_gpu"]))
    return found[0] if found else None


def _difference(field: str, base: dict, row: dict) -> str:
    """One field in which the nearest 1-process run differs, in words."""
    words = {"device_name": lambda b, r: f"ran on {b}, this on {r}",
             "regime_key": lambda b, r: f"trains in {base['regime']}, this in {row['regime']}",
             "batch_per_gpu": lambda b, r: f"has batch {b}/GPU, this {r}",
             "grad_accum": lambda b, r: f"accumulates {b} micro-steps, this {r}",
             "global_batch": lambda b, r: f"has global batch {b}, this {r}"}
    return words.get(field, lambda b, r: f"has {field} {b}, this {r}")(base[field], row[field])


def _missing_reason(row: dict, rows: list[dict], key: tuple[str, ...], view: str) -> str:
    """Why there is no baseline: the nearest 1-process configuration and what differs, and the
    run that would give one."""
    if not _present(row["tokens_per_s_median"]):
        return "no completed run"
    accumulation = row["grad_accum"] if view == "weak" else row["global_batch"] // row["batch_per_gpu"]
    wanted = (f"add a 1-process {'zero3' if row['mode'] == 'zero3' else 'single'} run with batch "
              f"{row['batch_per_gpu']}, accumulation {accumulation}, on {row['device_name']}")
    candidates = _candidates(rows)
    if not candidates:
        return f"no completed 1-process run in the study: {wanted}"
    nearest = min(candidates, key=lambda r: sum(r[k] != row[k] for k in key))
    differences = "; ".join(_difference(k, nearest, row) for k in key if nearest[k] != row[k])
    return f"no completed 1-process run with the same {view}-scaling key; the nearest, {nearest['label']!r}, " \
           f"{differences}: {wanted}"


def _against_baselines(row: dict, rows: list[dict]) -> dict:
    """The weak- and strong-scaling baselines of ``row`` and the comparisons against each."""
    out: dict = {}
    weak, strong = _matching(row, rows, WEAK_KEY), _matching(row, rows, STRONG_KEY)
    world = float(row["world_size"] or 1)
    for view, base, key, figures in (
            ("", weak, WEAK_KEY, {
                "speedup": ("tokens_per_s", lambda x: x, 1.0),
                "scaling_efficiency": ("tokens_per_s", lambda x: x / world, world),
                "memory_reduction": ("peak_memory_per_gpu_max_gib", lambda x: 1 - x, 1.0),
                "model_state_reduction": ("model_state_per_gpu_mib", lambda x: 1 - x, 1.0)}),
            ("_strong", strong, STRONG_KEY, {
                "speedup_strong": ("tokens_per_s", lambda x: x, 1.0),
                "scaling_efficiency_strong": ("tokens_per_s", lambda x: x / world, world)})):
        out[f"baseline{view}"] = base["configuration"] if base else None
        out[f"baseline{view}_device"] = base["device_name"] if base else None
        out[f"baseline{view}_label"] = base["label"] if base else None
        out[f"baseline{view}_note"] = None if base else _missing_reason(row, rows, key, "strong" if view else "weak")
        out.update(_comparisons(row, base, figures) if base else
                   {f"{name}{part}": None for name in figures for part in ("", "_min", "_max", "_noise")})
    out["memory_reduction_note"] = None
    if weak is not None and weak["memory_metric"] != row["memory_metric"]:  # two different peaks: no ratio
        out.update(memory_reduction=None, memory_reduction_min=None, memory_reduction_max=None,
                   memory_reduction_noise=None,
                   memory_reduction_note=f"the baseline's memory is {weak['memory_metric']}, this {row['memory_metric']}")
    return out
