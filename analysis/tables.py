"""The report's tables: ``summary.csv`` and ``runs.csv`` (every column, units in the names),
``summary.md`` (the original study's table: Configuration | Description | Memory | MFU, with the
setup peak and the model state beside the memory, plus tokens/s, weak and strong scaling
efficiency and status; each figure's spread over the repeats) and ``summary.tex`` (booktabs, for
a paper). Each comparison's note names its baseline and the device it ran on.

A missing figure is printed as "n/a", with its reason in the notes below the table, never as 0.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.aggregate import BEYOND, NO_PREDICTION, NO_SPREAD, WITHIN
from analysis.collect import Problem

HEADERS = ("Configuration", "Description", "Memory (GiB/GPU)", "Model state (MiB/GPU)",
           "Predicted − measured (state; peak; tokens/s)", "MFU", "Tokens/s",
           "Weak scaling eff.", "Strong scaling eff.", "Status")
# Which comparison each noise column marks, in the notes' words.
COMPARISONS = {"speedup": ("speedup", ""), "scaling_efficiency": ("weak scaling efficiency", ""),
               "memory_reduction": ("memory reduction", ""), "model_state_reduction": ("model-state reduction", ""),
               "speedup_strong": ("strong speedup", "_strong"),
               "scaling_efficiency_strong": ("strong scaling efficiency", "_strong")}
WHOLE_PROCESS = {"cuda_max_allocated_process", "cpu_peak_rss"}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _spread(row, column: str, digits: int = 0, percent: bool = False) -> str:
    """median, with [min–max] when repeats differ."""
    scale = 100 if percent else 1
    median, low, high = (row.get(f"{column}_{part}") for part in ("median", "min", "max"))
    if _missing(median):
        return "n/a"
    text = f"{median * scale:,.{digits}f}" + ("%" if percent else "")
    if row["runs_completed"] > 1 and not math.isclose(low, high):
        text += f" [{low * scale:,.{digits}f}–{high * scale:,.{digits}f}]"
    return text


def _memory_cell(row) -> str:
    """The training peak with its spread, and the setup peak beside it."""
    text = _spread(row, "peak_memory_per_gpu_max_gib", 2)
    if row.get("memory_metric") in WHOLE_PROCESS:
        return text + " (whole process)"
    setup = row.get("setup_memory_per_gpu_max_gib_median")
    return text if _missing(setup) else f"{text}; setup {setup:,.2f}"


def _model_state_cell(row) -> str:
    """Model state per GPU, with its reduction against the weak-scaling baseline."""
    text = _spread(row, "model_state_per_gpu_mib", 1)
    reduction = row.get("model_state_reduction")
    if _missing(reduction) or row.get("baseline_label") == row["label"]:
        return text
    change = -reduction
    return f"{text} ({'±0%' if abs(change) < 0.005 else f'{change:+.0%}'.replace('-', '−')})"


def _signed_percent(value) -> str:
    return "n/a" if _missing(value) else f"{value:+.1f}%".replace("-", "−")


def _prediction_cell(row) -> str:
    """The predictions' errors, in percent of the measurement: the memory model's on the model
    state and (GPUs) the training peak; the step-time model's on tokens/s."""
    errors = [row.get(f"{figure}_error_pct_median") for figure in ("model_state", "peak", "tokens_per_s")]
    if all(_missing(error) for error in errors):
        return "n/a"
    return "; ".join(_signed_percent(error) for error in errors)


def _efficiency_cell(row, suffix: str) -> str:
    """An efficiency with its interval and whether it is within noise."""
    value = row.get(f"scaling_efficiency{suffix}")
    if _missing(value):
        return "n/a"
    if row.get(f"baseline{suffix}_label") == row["label"]:
        return "100% (baseline)"
    low, high, noise = (row.get(f"scaling_efficiency{suffix}_{part}") for part in ("min", "max", "noise"))
    text = f"{value:.0%}"
    if noise in (WITHIN, BEYOND):
        text += f" [{low * 100:.0f}–{high * 100:.0f}]"
    return text + (f", {WITHIN}" if noise == WITHIN else "")


def display_rows(configs: pd.DataFrame) -> list[list[str]]:
    """The summary table's cells, as text, shared by Markdown, HTML and the terminal."""
    return [[row["label"], "-" if _missing(row["description"]) else row["description"], _memory_cell(row),
             _model_state_cell(row), _prediction_cell(row), _spread(row, "mfu", 1, percent=True),
             _spread(row, "tokens_per_s"),
             _efficiency_cell(row, ""), _efficiency_cell(row, "_strong"), row["status"]]
            for row in configs.to_dict("records")]


def _memory_notes(configs: pd.DataFrame) -> list[str]:
    """What the memory column measured, and which configurations fell back to the whole process."""
    if "memory_metric" not in configs:
        return []
    metrics = configs.dropna(subset=["memory_metric"]).groupby("memory_metric", sort=False)["label"].apply(list)
    lines = []
    if "cuda_max_allocated" in metrics:
        lines.append("Memory: training peak, CUDA max_memory_allocated from the first timed step to the last, "
                     "maximum over the ranks; setup: the same from process start to the end of setup (model built, "
                     "parallelized, checkpoint restored).")
    if "cpu_rss_hwm" in metrics:
        lines.append("Memory (CPU runs): training peak, each process's resident-set high-water mark from the first "
                     "timed step to the last, maximum over the ranks; setup: the same up to the end of setup. On a CPU "
                     "it is mostly the interpreter and libraries: model state is what tells the layouts apart.")
    for metric in WHOLE_PROCESS & set(metrics.index):
        what = "CUDA max_memory_allocated" if metric.startswith("cuda") else "peak RSS"
        lines.append(f"Memory of {', '.join(metrics[metric])}: the whole process's peak ({what}), setup included, "
                     "and no setup figure: their rank files have no training/setup split (written before hpml "
                     "measured phases).")
    return lines


def _prediction_notes(configs: pd.DataFrame) -> list[str]:
    """What the prediction column compares, and why a comparison is missing."""
    if "model_state_error_pct_median" not in configs:
        return []
    lines = ["Predicted − measured: the memory model's prediction (hpml_core/contract/memory_model.py, recorded in each "
             "rank file) against the measurement, in percent of the measurement, median over the completed repeats: "
             "model state (parameters + gradients + optimizer, the rank holding the most), and on GPUs the training "
             "peak (predicted bytes inside max_memory_allocated, maximum over the ranks, against the measured "
             "training peak). Figure predicted_vs_measured."]
    for note, group in configs.dropna(subset=["prediction_note"]).groupby("prediction_note", sort=False):
        what = "Prediction" if note == NO_PREDICTION else "Predicted peak"
        lines.append(f"{what} n/a for {', '.join(group['label'])}: {note}.")
    return lines


def _speed_prediction_notes(configs: pd.DataFrame, speed_assumed: str | None) -> list[str]:
    """What the predicted tokens/s assumed, and where there is none."""
    if speed_assumed is None:
        return []
    lines = [f"Predicted tokens/s: the step-time model (hpml_core/contract/step_time.py: model FLOPs at a stated rate, "
             f"plus the bytes each layout sends over stated bandwidths, not overlapped), at {speed_assumed}."]
    if "speed_prediction_note" in configs:
        for note, group in configs.dropna(subset=["speed_prediction_note"]).groupby("speed_prediction_note", sort=False):
            lines.append(f"Predicted tokens/s n/a for {', '.join(group['label'])}: {note}.")
    return lines


def _hours_notes(configs: pd.DataFrame) -> list[str]:
    """Device hours spent, per configuration and for the study."""
    if "device_hours_total" not in configs:
        return []
    spent = configs.dropna(subset=["device_hours_total"])
    if not len(spent):
        return []
    mixed = spent["device_hours_unit"].nunique() > 1
    per = "; ".join(f"{row['label']} {row['device_hours_total']:.3g}"
                    + (f" {row['device_hours_unit']}" if mixed else "") for row in spent.to_dict("records"))
    totals = ", ".join(f"{group['device_hours_total'].sum():.3g} {unit}"
                       for unit, group in spent.groupby("device_hours_unit", sort=False))
    sources = set(configs["device_hours_source"].dropna()) if "device_hours_source" in configs else set()
    how = []
    if any("Slurm" in source for source in sources):
        how.append("each Slurm job, failed, out-of-memory and killed ones included: Slurm's elapsed time (sacct, "
                   "start-up included) × the run's GPUs")
    if any("wall time" in source for source in sources):
        how.append("each other attempt that wrote a rank file (runs without Slurm, a requeued job's earlier runs): "
                   "its slowest rank's wall time (from the engine's start of setup to its rank file) × its world "
                   "size; an attempt without Slurm that wrote no rank file is not counted")
    return [f"Spent: {totals} in all ({per}); process-hours for CPU runs; " + "; ".join(how) + "."]


def _spread_note(configs: pd.DataFrame) -> str:
    most = int(configs["runs_completed"].max()) if len(configs) else 0
    if most < 2:
        return "No spread: 1 repeat per configuration; no comparison can be called within noise or beyond it."
    return ("Spread: each figure is the median over a configuration's completed repeats on one device "
            "(n up to {n}), [min–max] beside it; min–max rather than a 95% interval, which with 3 repeats would be "
            "±4.3·s/√3, wider than the data, and assume a normality 3 points cannot show. A comparison is within "
            "noise when the configuration's min–max range overlaps its baseline's (its interval, from the two "
            "ranges, holds 1 for a speedup, 100% for an efficiency, 0 for a reduction).").format(n=most)


def _baseline_notes(configs: pd.DataFrame) -> list[str]:
    """Each baseline, named with its device, and the configurations compared with it."""
    lines = []
    for suffix, view, same in (("", "weak", "same batch per GPU and accumulation; speedup T_N / T_1 and memory and "
                                            "model-state reductions 1 − M_N / M_1 against it too"),
                               ("_strong", "strong", "same global batch, by accumulation; speedup T_N / T_1 too")):
        column = f"baseline{suffix}_label"
        if column not in configs:
            continue
        compared = configs[configs[column].notna() & (configs[column] != configs["label"])]  # not itself
        for (label, device), group in compared.groupby([column, f"baseline{suffix}_device"], sort=False):
            lines.append(f"Scaling efficiency ({view}) T_N / (N × T_1) against {label!r} on {device} (1 process, "
                         f"{same}) for: {', '.join(group['label'])}.")
    return lines


def _noise_notes(configs: pd.DataFrame) -> list[str]:
    """Which comparisons are within noise, each with its baseline and device."""
    if not len(configs) or int(configs["runs_completed"].max()) < 2:
        return []
    within, marks = [], []
    for row in configs.to_dict("records"):
        for column, (words, suffix) in COMPARISONS.items():
            marks.append(row.get(f"{column}_noise"))
            if marks[-1] == WITHIN:
                within.append(f"{words} of {row['label']} against {row[f'baseline{suffix}_label']!r} on "
                              f"{row[f'baseline{suffix}_device']}")
    counts = (f"{marks.count(BEYOND)} beyond noise, {marks.count(NO_SPREAD)} with a single completed repeat on one "
              "side (no spread)")
    if not within:
        return [f"No comparison is within noise ({counts})."]
    return [f"Within noise (the two ranges overlap): {'; '.join(within)}. Others: {counts}."]


def notes(configs: pd.DataFrame, problems: list[Problem], state_note: str | None = None,
          speed_assumed: str | None = None) -> list[str]:
    """What the table's figures are, and why any is missing; ``state_note``: how the states
    were decided, when not with Slurm's word (it did not answer); ``speed_assumed``: the site's
    stated speed the predicted tokens/s were made at."""
    lines = [f"States: {state_note}."] if state_note else []
    if not len(configs):
        return lines + [f"Unreadable: {problem.path}: {problem.reason}" for problem in problems]
    lines.append(_spread_note(configs))
    lines += _memory_notes(configs)
    lines.append("Model state: parameter + gradient + optimizer bytes held by the rank holding the most, measured from "
                 "its tensors; (−x%): its reduction 1 − S_N / S_1 against the weak-scaling baseline.")
    lines += _prediction_notes(configs)
    lines += _speed_prediction_notes(configs, speed_assumed)
    lines += _hours_notes(configs)
    lines.append("MFU: model FLOP/s per GPU (PaLM: 6N + 12·L·H·Q·T per token) over the GPU's dense peak for the "
                 "precision. Tokens/s: each token once, over the slowest rank's median step time.")
    if "peak_source" in configs:
        peaks = configs.dropna(subset=["peak_source"]).groupby(["peak_source", "peak_tflops_per_gpu"], sort=False)
        for (source, tflops), group in peaks:
            lines.append(f"Peak used for MFU: {source}, {tflops:g} TFLOP/s ({', '.join(group['label'])}).")
    for timing in sorted(set(configs["timing"].dropna())) if "timing" in configs else []:
        lines.append(f"Step time: {timing}.")
    for reason in sorted(set(configs["mfu_missing_reason"].dropna())) if "mfu_missing_reason" in configs else []:
        lines.append(f"MFU n/a: {reason}")
    if "regime_key" in configs:
        for key, group in configs.dropna(subset=["regime_key"]).groupby("regime_key", sort=False):
            lines.append(f"Precision regime {group['regime'].iloc[0]!r} ({key}): {', '.join(group['label'])}.")
    lines += _baseline_notes(configs)
    lines += _noise_notes(configs)
    for row in configs.to_dict("records"):
        for suffix, view in (("", "weak"), ("_strong", "strong")):
            if not _missing(row.get(f"baseline{suffix}_note")) and not _missing(row.get("tokens_per_s_median")):
                lines.append(f"{row['label']}: scaling efficiency ({view}) n/a: {row[f'baseline{suffix}_note']}.")
        if not _missing(row.get("throughput_note")):
            lines.append(f"{row['throughput_note']}.")  # run by run, named
        if not _missing(row.get("reason")):
            lines.append(f"{row['label']}: {row['reason']}")
    lines += [f"Unreadable: {problem.path}: {problem.reason}" for problem in problems]
    return lines


def markdown(configs: pd.DataFrame, notes_: list[str], title: str) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in display_rows(configs)]
    lines += ["", *[f"- {note}" for note in notes_], ""]
    return "\n".join(lines)


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                          ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}"),
                          ("–", "--"), ("×", r"$\times$")):
        text = text.replace(char, escaped)
    return text


def latex(configs: pd.DataFrame, title: str) -> str:
    """A booktabs table for an IEEE paper (\\usepackage{booktabs}); table* spans both columns."""
    body = [" & ".join(_latex_escape(cell) for cell in row) + r" \\" for row in display_rows(configs)]
    return "\n".join([
        r"\begin{table*}[t]", r"\centering", rf"\caption{{{_latex_escape(title)}}}", r"\label{tab:hpml-summary}",
        r"\begin{tabular}{ll" + "r" * (len(HEADERS) - 3) + "l}", r"\toprule",
        " & ".join(_latex_escape(header) for header in HEADERS) + r" \\", r"\midrule", *body, r"\bottomrule",
        r"\end{tabular}", r"\end{table*}", "",
    ])
