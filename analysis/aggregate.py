"""From rank files to the figures of the report: one row per run, then one per configuration.

Per run (completed), recomputed from the rank files' raw fields rather than copied, so each
figure has one definition here, from the run's last attempt with step times (a run resumed with
only warm-up steps left takes them from an earlier one, and says so in ``throughput_note``):
- tokens/s = the global batch × sequence length (each token once, however many TP ranks share
  it) / the slowest rank's median step time; samples/s likewise with the global batch;
  tokens/s per GPU = tokens/s / world size.
- MFU = achieved model FLOP/s per device (flops per token × tokens/s / world size) / the dense
  peak the engine recorded for the device and precision; missing, with the engine's reason,
  where the peak is unknown (a CPU, a GPU not in the table).
- peak memory per GPU: CUDA max_memory_allocated per rank (on a CPU, the process's peak RSS,
  and the ``memory_metric`` column says so), its maximum and mean over the ranks.
- final loss: the last step's loss (rank 0's: the mean over data-parallel ranks), of the loss
  curve assembled from all attempts (``analysis.collect``).
- attempts: how many the run had, and each one's Slurm job id and node list.

Per configuration (repeats of one run entry): median, min and max over the completed repeats,
and against a baseline, the single-GPU configuration with the same model, sequence length,
batch per GPU, precision, activation checkpointing, attention and compilation: speedup
T_N / T_1, scaling efficiency T_N / (N × T_1) with N the world size, and memory reduction
1 − M_N / M_1 on the maximum peak memory per GPU.
"""

from __future__ import annotations

import statistics

import pandas as pd

from analysis.collect import Attempt, RunResult
from hpml_core.spec.run_states import COMPLETED

GIB = 1024**3
# The settings that change a GPU's own speed: a baseline must share them all.
BASELINE_KEY = ("model", "seq_len", "batch_per_gpu", "precision", "grad_ckpt", "attn", "compile")
SPREAD = ("tokens_per_s", "samples_per_s", "tokens_per_s_per_gpu", "mfu", "peak_memory_per_gpu_max_gib", "final_loss")
# How a layout is named in the tables (hpml_core.spec.config.MODES); rank files written with the
# seed's names (baseline, hybrid) are read as ddp and zero3.
MODE_WORDS = {"single": "single", "ddp": "DDP", "zero3": "ZeRO-3"}


def describe(mode: str, world: int, dp: int, tp: int, device: str, batch: int, precision: str) -> str:
    units = "GPU" if device == "cuda" else "CPU process"
    size = f"{world} {units}{'es' if units.endswith('s') and world > 1 else 's' if world > 1 else ''}"
    if mode == "single":
        layout = f"single {units}"
    elif tp == 1:
        layout = f"{MODE_WORDS[mode]} on {size}"
    else:
        over_dp = "ZeRO-3" if mode == "zero3" else "all-reduce"
        layout = f"DP {dp} ({over_dp}) x TP {tp} on {size}"
    return f"{layout}, batch {batch}/{'GPU' if device == 'cuda' else 'process'}, {precision}"


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


def run_row(result: RunResult) -> dict:
    row: dict = {"run": result.name, "configuration": result.configuration, "status": result.status,
                 "reason": result.reason, **_attempts_columns(result)}
    if not result.ranks:
        return row
    files = [result.ranks[rank] for rank in sorted(result.ranks)]
    first, config = files[0], files[0].config
    row.update(mode=first.mode, nodes=len({(f.slurm.node if f.slurm and f.slurm.node else f.hostname) for f in files}),
               world_size=first.world_size, dp_size=first.dp_size, tp_size=first.tp_size, model=first.model.name,
               seq_len=first.model.seq_len, batch_per_gpu=first.batch_size, grad_accum=config.grad_accum,
               global_batch=first.global_batch, precision=config.precision, grad_ckpt=config.grad_ckpt,
               attn=config.attn, compile=config.compile, device=first.device_type, device_name=first.device_name,
               steps_completed=first.steps_completed)
    row["description"] = describe(first.mode, first.world_size, first.dp_size, first.tp_size, first.device_type,
                                  first.batch_size, config.precision)
    curve = result.loss_curve()
    row["final_loss"] = curve[-1][1] if curve and result.completed else None
    if not result.completed:
        return row
    measured = result.measured
    row.update(throughput_attempt=measured.number if measured else None,
               throughput_note=_throughput_note(result, measured))
    if measured is None:
        return row
    files = [measured.ranks[rank] for rank in sorted(measured.ranks)]
    first = files[0]
    slowest = max(f.throughput.step_time_median_s for f in files)
    # The global batch (batch per DP rank × DP × accumulation) is all the run trains on per step:
    # tensor-parallel ranks share their replica's samples, so their tokens count once.
    tokens_per_s = first.global_batch * first.model.seq_len / slowest
    achieved = first.flops.flops_per_token * tokens_per_s / first.world_size / 1e12
    peak = first.flops.peak_tflops_per_s
    memory = [f.memory.peak()[0] for f in files]
    row.update(
        timed_steps=first.throughput.timed_steps, slowest_step_time_median_s=slowest,
        tokens_per_s=tokens_per_s, samples_per_s=first.global_batch / slowest,
        tokens_per_s_per_gpu=tokens_per_s / first.world_size, flops_per_token=first.flops.flops_per_token,
        achieved_tflops_per_gpu=achieved, peak_tflops_per_gpu=peak, peak_source=first.flops.peak_source,
        mfu=achieved / peak if peak else None, mfu_missing_reason=None if peak else first.flops.mfu_missing_reason,
        timing=first.throughput.timing, memory_metric=first.memory.peak()[1],
        peak_memory_per_gpu_max_gib=max(memory) / GIB, peak_memory_per_gpu_mean_gib=statistics.fmean(memory) / GIB,
    )
    return row


def runs_table(results: list[RunResult]) -> pd.DataFrame:
    return pd.DataFrame([run_row(result) for result in results])


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


def configurations_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration, in the experiment's order, with the figures over its repeats."""
    rows = []
    for name, group in runs.groupby("configuration", sort=False):
        done = group[group["status"] == COMPLETED]
        described = group.dropna(subset=["description"]) if "description" in group else group.iloc[0:0]
        status, reason = _status(group)
        row = {"configuration": name, "description": described["description"].iloc[0] if len(described) else None,
               "status": status, "runs_completed": len(done), "runs_total": len(group), "reason": reason}
        for column in ("mode", "nodes", "world_size", "dp_size", "tp_size", "model", "seq_len", "batch_per_gpu",
                       "grad_accum", "global_batch", "precision", "grad_ckpt", "attn", "compile", "device", "device_name"):
            row[column] = described[column].iloc[0] if len(described) and column in described else None
        for column in SPREAD:
            values = done[column].dropna() if column in done else pd.Series(dtype=float)
            row[f"{column}_median"] = values.median() if len(values) else None
            row[f"{column}_min"] = values.min() if len(values) else None
            row[f"{column}_max"] = values.max() if len(values) else None
        mean_memory = done["peak_memory_per_gpu_mean_gib"].dropna() if len(done) else pd.Series(dtype=float)
        row["peak_memory_per_gpu_mean_gib_median"] = mean_memory.median() if len(mean_memory) else None
        for column in ("memory_metric", "peak_source", "peak_tflops_per_gpu", "timing"):
            row[column] = done[column].iloc[0] if len(done) else None
        reasons = done["mfu_missing_reason"].dropna() if len(done) else pd.Series(dtype=object)
        row["mfu_missing_reason"] = reasons.iloc[0] if len(reasons) and row["mfu_median"] is None else None
        noted = done.dropna(subset=["throughput_note"]) if "throughput_note" in done else done.iloc[0:0]
        row["throughput_note"] = "; ".join(f"{r.run}: {r.throughput_note}" for r in noted.itertuples()) or None
        rows.append(row)
    table = pd.DataFrame(rows)
    return _against_baseline(table) if len(table) else table


def _against_baseline(table: pd.DataFrame) -> pd.DataFrame:
    baselines = table[(table["mode"] == "single") & (table["world_size"] == 1) & table["tokens_per_s_median"].notna()]
    table = table.astype({"tokens_per_s_median": float, "peak_memory_per_gpu_max_gib_median": float})
    columns = {"baseline": [], "baseline_note": [], "speedup": [], "scaling_efficiency": [], "memory_reduction": []}
    for row in table.itertuples():
        match = baselines
        for key in BASELINE_KEY:
            match = match[match[key] == getattr(row, key)]
        if pd.isna(row.tokens_per_s_median):
            found, note = None, "no completed run"
        elif match.empty:
            found = None
            note = ("no single-GPU run with the same model, sequence length, batch per GPU, precision, "
                    "checkpointing, attention and compilation")
        else:
            found, note = match.iloc[0], None
        columns["baseline"].append(found["configuration"] if found is not None else None)
        columns["baseline_note"].append(note)
        if found is None:
            for key in ("speedup", "scaling_efficiency", "memory_reduction"):
                columns[key].append(None)
            continue
        speedup = row.tokens_per_s_median / found["tokens_per_s_median"]
        columns["speedup"].append(speedup)
        columns["scaling_efficiency"].append(speedup / row.world_size)
        columns["memory_reduction"].append(1 - row.peak_memory_per_gpu_max_gib_median
                                           / found["peak_memory_per_gpu_max_gib_median"])
    for key, values in columns.items():
        table[key] = values
    return table
