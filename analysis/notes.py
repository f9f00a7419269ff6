"""The report's notes: what each figure of a table is, measured how, against which baseline, and
why any is missing. A figure is printed as "n/a" rather than 0 or a guess, so every n/a needs a
reason a reader can act on; the notes are where it is. They are grouped by the table they
explain, so the page can number them under it.

Every figure's definition: docs/report.md.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

import pandas as pd

from analysis.baselines import BEYOND, NO_SPREAD, WITHIN, SummaryRow
from analysis.collect import Problem
from analysis.runs import NO_PREDICTION
from analysis.time_parts import finding

WHOLE_PROCESS = ("cpu_peak_rss", "cuda_max_allocated_process")


@dataclass(frozen=True)
class Notes:
    results: list[str]  # under the results table: the measurements and the comparisons
    predictions: list[str]  # under the predicted-against-measured table
    runs: list[str]  # under the runs: how their states were decided, files that could not be read
    time: list[str] = field(default_factory=list)  # under where the time goes: one finding per configuration
    collectives: list[str] = field(default_factory=list)  # under the bytes measured against the contract's
    part_predictions: list[str] = field(default_factory=list)  # under the predicted parts

    @property
    def all(self) -> list[str]:
        return [*self.results, *self.time, *self.collectives, *self.predictions, *self.part_predictions, *self.runs]


def _grouped(rows: Iterable[SummaryRow], key: Callable[[SummaryRow], Hashable]) -> dict[Hashable, list[SummaryRow]]:
    """The rows by ``key``, in the order each value first appears; rows whose key is or holds
    None left out."""
    groups: dict[Hashable, list[SummaryRow]] = {}
    for row in rows:
        value = key(row)
        if value is not None and not (isinstance(value, tuple) and None in value):
            groups.setdefault(value, []).append(row)
    return groups


def _labels(rows: list[SummaryRow]) -> str:
    return ", ".join(row.label for row in rows)


def _memory_notes(rows: list[SummaryRow]) -> list[str]:
    """What the memory column measured, and which configurations fell back to the whole process."""
    metrics = _grouped(rows, lambda r: r.figures.memory_metric)
    lines = []
    if "cuda_max_allocated" in metrics:
        lines.append("Memory: training peak, CUDA max_memory_allocated from the first timed step to the last, "
                     "maximum over the ranks; setup: the same from process start to the end of setup (model built, "
                     "parallelized, checkpoint restored).")
    if "cpu_rss_hwm" in metrics:
        lines.append("Memory (CPU runs): training peak, each process's resident-set high-water mark from the first "
                     "timed step to the last, maximum over the ranks; setup: the same up to the end of setup. On a CPU "
                     "it is mostly the interpreter and libraries: model state is what tells the layouts apart.")
    for metric in (m for m in WHOLE_PROCESS if m in metrics):
        what = "CUDA max_memory_allocated" if metric.startswith("cuda") else "peak RSS"
        lines.append(f"Memory of {_labels(metrics[metric])}: the whole process's peak ({what}), setup included, "
                     "and no setup figure: their rank files have no training/setup split (written before hpml "
                     "measured phases).")
    return lines


def _prediction_notes(rows: list[SummaryRow], speed_assumed: str | None) -> list[str]:
    """What the prediction table compares, and why a comparison is missing."""
    lines = ["Predicted − measured: the memory model's prediction (hpml_core/contract/memory_model.py, recorded in "
             "each rank file) against the measurement, in percent of the measurement, median over the completed "
             "repeats: model state (parameters + gradients + optimizer, the rank holding the most), and on GPUs the "
             "training peak (predicted bytes inside max_memory_allocated, maximum over the ranks, against the "
             "measured training peak). Figure predicted_vs_measured."]
    for note, group in _grouped(rows, lambda r: r.figures.prediction_note).items():
        what = "Prediction" if note == NO_PREDICTION else "Predicted peak"
        lines.append(f"{what} n/a for {_labels(group)}: {note}.")
    if speed_assumed is not None:
        lines.append(f"Predicted tokens/s: the step-time model (hpml_core/contract/step_time.py: model FLOPs at a "
                     f"stated rate, the optimizer's bytes at a memory bandwidth, and the communication overlap leaves exposed; "
                     f"its parts: table 'Predicted parts against measured'), with rates "
                     f"{speed_assumed}.")
        for note, group in _grouped(rows, lambda r: r.figures.speed_prediction_note).items():
            lines.append(f"Predicted tokens/s n/a for {_labels(group)}: {note}.")
    lines += [line for line in (_planner_accuracy(rows), _planner_ranking(rows)) if line]
    return lines


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (ties take their mean rank): Pearson's of the ranks."""
    return float(pd.Series(xs).rank().corr(pd.Series(ys).rank()))


def _planner_ranking(rows: list[SummaryRow]) -> str | None:
    """Did the planner rank the layouts as the runs did? Over the multi-process configurations
    (what ``hpml tune`` chooses between; their 1-process baselines are not candidates) with
    both a predicted and a measured tokens/s (medians over the repeats), when there are 3 or more."""
    ranked = [(r.label, r.figures.predicted_tokens_per_s.median, r.figures.tokens_per_s.median) for r in rows
              if (r.figures.setting.world_size or 1) > 1 and r.figures.predicted_tokens_per_s.known
              and r.figures.tokens_per_s.known]
    if len(ranked) < 3:
        return None
    labels, predicted, measured = zip(*ranked)
    predicted_best = labels[predicted.index(max(predicted))]
    measured_best = labels[measured.index(max(measured))]
    shortfall = 100 * (1 - measured[labels.index(predicted_best)] / max(measured))
    verdict = ("the predicted best was the measured best" if predicted_best == measured_best else
               f"the predicted best, {predicted_best}, measured {shortfall:.1f}% fewer tokens/s than the measured "
               f"best, {measured_best}")
    return (f"The planner's ranking of the {len(ranked)} multi-process configurations by tokens/s: {verdict}; "
            f"Spearman's rank correlation of predicted and measured {spearman(list(predicted), list(measured)):+.2f}.")


def _median_abs(values: list[float | None]) -> tuple[float, int] | None:
    present = [abs(v) for v in values if v is not None]
    return (statistics.median(present), len(present)) if present else None


def _planner_accuracy(rows: list[SummaryRow]) -> str | None:
    """How good the planner was on this study: the median over configurations of each
    prediction's absolute error (each configuration's error being its repeats' median)."""
    figures = [("tokens/s, assumed rates", [r.figures.assumed_tokens_per_s_error_pct.median for r in rows]),
               ("tokens/s" + (", calibrated" if any(r.figures.assumed_tokens_per_s_error_pct.known for r in rows)
                              else ""), [r.figures.tokens_per_s_error_pct.median for r in rows]),
               ("memory, model state", [r.figures.model_state_error_pct.median for r in rows]),
               ("memory, training peak", [r.figures.peak_error_pct.median for r in rows])]
    said = [f"{what} {found[0]:.1f}% ({found[1]} configurations)"
            for what, values in figures if (found := _median_abs(values)) is not None]
    if not said:
        return None
    return ("How good the planner was on this study (median over configurations of |predicted − measured| "
            "/ measured): " + "; ".join(said) + ".")


def _hours_notes(rows: list[SummaryRow]) -> list[str]:
    """Device hours spent, per configuration and for the study."""
    spent = [row for row in rows if row.figures.device_hours_total is not None]
    if not spent:
        return []
    units = _grouped(spent, lambda r: r.figures.device_hours_unit)
    per = "; ".join(f"{row.label} {row.figures.device_hours_total:.3g}"
                    + (f" {row.figures.device_hours_unit}" if len(units) > 1 else "") for row in spent)
    totals = ", ".join(f"{sum(r.figures.device_hours_total for r in group):.3g} {unit}"
                       for unit, group in units.items())
    sources = {row.figures.device_hours_source for row in rows if row.figures.device_hours_source}
    how = []
    if any("Slurm" in source for source in sources):
        how.append("each Slurm job, failed, out-of-memory and killed ones included: Slurm's elapsed time (sacct, "
                   "start-up included) × the run's GPUs")
    if any("wall time" in source for source in sources):
        how.append("each other attempt that wrote a rank file (runs without Slurm, a requeued job's earlier runs): "
                   "its slowest rank's wall time (from the engine's start of setup to its rank file) × its world "
                   "size; an attempt without Slurm that wrote no rank file is not counted")
    return [f"Spent: {totals} in all ({per}); process-hours for CPU runs; " + "; ".join(how) + "."]


def _most_repeats(rows: list[SummaryRow]) -> int:
    return max((row.figures.runs_completed for row in rows), default=0)


def _spread_note(rows: list[SummaryRow]) -> str:
    most = _most_repeats(rows)
    if most < 2:
        return "No spread: 1 repeat per configuration; no comparison can be called within noise or beyond it."
    return ("Spread: each figure is the median over a configuration's completed repeats on one device "
            f"(n up to {most}), [min–max] beside it; min–max rather than a 95% interval, which with 3 repeats would be "
            "±4.3·s/√3, wider than the data, and assume a normality 3 points cannot show. A comparison is within "
            "noise when the configuration's min–max range overlaps its baseline's (its interval, from the two "
            "ranges, holds 1 for a speedup, 100% for an efficiency, 0 for a reduction).")


def _baseline_notes(rows: list[SummaryRow]) -> list[str]:
    """Each baseline, named with its device, and the configurations compared with it."""
    lines = []
    for view, base, same in (
            ("weak", lambda r: r.scaling.baseline, "same batch per GPU and accumulation; speedup T_N / T_1 and memory "
                                                   "and model-state reductions 1 − M_N / M_1 against it too"),
            ("strong", lambda r: r.scaling.baseline_strong, "same global batch, by accumulation; speedup T_N / T_1 "
                                                            "too")):
        compared = [row for row in rows if base(row).label not in (None, row.label)]  # not itself
        for (label, device), group in _grouped(compared, lambda r: (base(r).label, base(r).device)).items():
            lines.append(f"Scaling efficiency ({view}) T_N / (N × T_1) against {label!r} on {device} (1 process, "
                         f"{same}) for: {_labels(group)}.")
    return lines


def _noise_notes(rows: list[SummaryRow]) -> list[str]:
    """Which comparisons are within noise, each with its baseline and device."""
    if _most_repeats(rows) < 2:
        return []
    within, marks = [], []
    for row in rows:
        s = row.scaling
        for words, comparison, base in (
                ("speedup", s.speedup, s.baseline), ("weak scaling efficiency", s.scaling_efficiency, s.baseline),
                ("memory reduction", s.memory_reduction, s.baseline),
                ("model-state reduction", s.model_state_reduction, s.baseline),
                ("strong speedup", s.speedup_strong, s.baseline_strong),
                ("strong scaling efficiency", s.scaling_efficiency_strong, s.baseline_strong)):
            marks.append(comparison.noise)
            if comparison.noise == WITHIN:
                within.append(f"{words} of {row.label} against {base.label!r} on {base.device}")
    counts = (f"{marks.count(BEYOND)} beyond noise, {marks.count(NO_SPREAD)} with a single completed repeat on one "
              "side (no spread)")
    if not within:
        return [f"No comparison is within noise ({counts})."]
    return [f"Within noise (the two ranges overlap): {'; '.join(within)}. Others: {counts}."]


def _result_notes(rows: list[SummaryRow]) -> list[str]:
    lines = [_spread_note(rows), *_memory_notes(rows),
             "Model state: parameter + gradient + optimizer bytes held by the rank holding the most, measured from "
             "its tensors; (−x%): its reduction 1 − S_N / S_1 against the weak-scaling baseline.",
             *_hours_notes(rows),
             "MFU: model FLOP/s per GPU (PaLM: 6N + 12·L·H·Q·T per token) over the GPU's dense peak for the "
             "precision. Tokens/s: each token once, over the slowest rank's median step time."]
    peaks = _grouped(rows, lambda r: (r.figures.peak_source, r.figures.peak_tflops_per_gpu))
    for (source, tflops), group in peaks.items():
        lines.append(f"Peak used for MFU: {source}, {tflops:g} TFLOP/s ({_labels(group)}).")
    lines += [f"Step time: {timing}." for timing in sorted({r.figures.timing for r in rows if r.figures.timing})]
    lines += [f"MFU n/a: {reason}" for reason in sorted({r.figures.mfu_missing_reason for r in rows
                                                         if r.figures.mfu_missing_reason})]
    if any(r.figures.joules_per_token.known for r in rows):
        lines.append("Energy: the joules the run's GPUs drew over its timed steps (NVML's counter, each GPU once) "
                     "per token trained in them, in mJ; idle draw included.")
    lines += [f"Energy n/a: {reason}" for reason in sorted({r.figures.energy_missing_reason for r in rows
                                                            if r.figures.energy_missing_reason})]
    for key, group in _grouped(rows, lambda r: r.figures.setting.regime_key).items():
        lines.append(f"Precision regime {group[0].figures.setting.regime!r} ({key}): {_labels(group)}.")
    lines += _baseline_notes(rows)
    lines += _noise_notes(rows)
    for row in rows:
        for note, view in ((row.scaling.baseline_note, "weak"), (row.scaling.baseline_strong_note, "strong")):
            if note is not None and row.figures.tokens_per_s.known:
                lines.append(f"{row.label}: scaling efficiency ({view}) n/a: {note}.")
        if row.figures.throughput_note:
            lines.append(f"{row.figures.throughput_note}.")  # run by run, named
        if row.figures.reason:
            lines.append(f"{row.label}: {row.figures.reason}")
    return lines


def notes(rows: list[SummaryRow], problems: list[Problem], state_note: str | None = None,
          speed_assumed: str | None = None) -> Notes:
    """``state_note``: how the states were decided, when not with Slurm's word (it did not
    answer); ``speed_assumed``: the site's stated speed the predicted tokens/s were made at."""
    runs = [f"States: {state_note}."] if state_note else []
    runs += [f"Unreadable: {problem.path}: {problem.reason}" for problem in problems]
    if not rows:
        return Notes([], [], runs)
    return Notes(_result_notes(rows), _prediction_notes(rows, speed_assumed), runs, _time_notes(rows),
                 _collective_notes(rows), _part_prediction_notes(rows, speed_assumed))


def _time_notes(rows: list[SummaryRow]) -> list[str]:
    """One finding per multi-process configuration against its baseline; how the parts were measured."""
    by_label = {row.label: row for row in rows}
    lines = []
    for row in rows:
        parts = row.figures.parts
        if parts is None:
            if row.figures.runs_completed:
                lines.append(f"{row.label}: no profiled step: {row.figures.parts_missing_reason}.")
            continue
        if (row.figures.setting.world_size or 1) < 2:
            continue
        base = next((by_label.get(b.label) for b in (row.scaling.baseline, row.scaling.baseline_strong)
                     if b.label not in (None, row.label) and by_label.get(b.label)
                     and by_label[b.label].figures.parts is not None), None)
        if base is None:
            lines.append(f"{row.label}: no 1-process baseline with a profiled step to compare with.")
        else:
            lines.append(finding(row.label, parts, base.label, base.figures.parts))
    profiled = [row.figures.parts for row in rows if row.figures.parts is not None]
    if profiled:
        costs = [p.overhead for p in profiled if p.overhead is not None]
        cost = f"profiling cost {min(costs):+.0%} to {max(costs):+.0%} on the step" if costs else "profiling cost unknown"
        sizes = [p.trace_bytes / 1e3 for p in profiled]
        lines.append(
            "Parts: each configuration's median repeat; per run the mean over ranks of each rank's median profiled step "
            "(--profile-steps, after the timed steps: tokens/s is not affected). Exposed communication: a collective "
            "in flight while the rank computed nothing; hidden: in flight under compute. "
            f"{'; '.join(sorted({p.how for p in profiled}))}. "
            f"{cost[0].upper()}{cost[1:]}; traces {min(sizes):,.0f} to {max(sizes):,.0f} kB per run (attempts/<n>/trace-rank-<k>.json.gz, "
            "open in https://ui.perfetto.dev).")
    return lines


def _collective_notes(rows: list[SummaryRow]) -> list[str]:
    kinds = [(row.label, k) for row in rows if row.figures.parts for k in row.figures.parts.collectives]
    if not kinds:
        return []
    wrong = [f"{label} {k.kind}" for label, k in kinds if not k.matches]
    verdict = (f"Measured bytes differ from the contract's in: {', '.join(wrong)}." if wrong else
               "Every configuration's measured bytes equal the contract's, kind by kind.")
    return [verdict + " Bytes: each collective's whole buffer (an all-gather's output, a reduce-scatter's input), "
            "rank 0's first profiled step; contract: hpml_core.contract.collectives. DDP's and ZeRO-3's buckets make "
            "their count the engine's, so the contract states only their bytes."]


def _part_prediction_notes(rows: list[SummaryRow], speed_assumed: str | None) -> list[str]:
    missing = [f"{row.label}: {row.figures.parts.predicted_note}" for row in rows
               if row.figures.parts is not None and row.figures.parts.predicted is None]
    if not any(row.figures.parts is not None for row in rows):
        return []
    speed = f", with rates {speed_assumed}" if speed_assumed else ""
    calibrated = speed_assumed is not None and speed_assumed.startswith("calibrated")
    rest = ("data fetching and host overhead ('other') at the calibration's measured seconds per step, where it has them" if calibrated
            else "data fetching and host overhead ('other') are not predicted")
    return [f"Predicted by hpml_core.contract.step_time{speed}: compute from the FLOP formula, the optimizer from "
            f"its bytes at the memory bandwidth, exposed communication after the overlap it expects; {rest}.",
            *missing]
