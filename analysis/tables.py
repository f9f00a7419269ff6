"""The report's tables as text: one cell format shared by ``summary.md`` (the original study's
table, every figure beside its spread), ``summary.tex`` (booktabs, for a paper), the terminal and
the page's results and prediction tables, so a figure reads the same wherever it is printed. A
missing figure is "n/a", never 0: its reason is in the notes (analysis/notes.py)."""

from __future__ import annotations

import math

from analysis.baselines import BEYOND, WITHIN, SummaryRow
from analysis.columns import Baseline, Comparison, Spread
from analysis.notes import WHOLE_PROCESS, Notes
from analysis.time_parts import UNPREDICTED, parts_present

HEADERS = ("Configuration", "Description", "Memory (GiB/GPU)", "Model state (MiB/GPU)",
           "Predicted − measured (state; peak; tokens/s)", "MFU", "Tokens/s",
           "Weak scaling eff.", "Strong scaling eff.", "Status")
RESULT_HEADERS = ("Configuration", "Repeats", "Tokens/s", "MFU", "Energy (mJ/token)", "Memory (GiB/GPU)",
                  "Model state (MiB/GPU)", "Weak scaling eff.", "Strong scaling eff.")
# Each measurement beside its prediction and the error: (group, its columns).
PREDICTION_HEADERS = (("", ("Configuration",)), *((group, ("measured", "predicted", "error")) for group in (
    "Model state (MiB/GPU)", "Training peak (GiB/GPU)", "Tokens/s")))


def _spread(spread: Spread, repeats: int, digits: int = 0, percent: bool = False) -> str:
    """median, with [min–max] when repeats differ."""
    scale = 100 if percent else 1
    if not spread.known:
        return "n/a"
    text = f"{spread.median * scale:,.{digits}f}" + ("%" if percent else "")
    if repeats > 1 and not math.isclose(spread.low, spread.high):
        text += f" [{spread.low * scale:,.{digits}f}–{spread.high * scale:,.{digits}f}]"
    return text


def _memory_cell(row: SummaryRow) -> str:
    """The training peak with its spread, and the setup peak beside it."""
    figures = row.figures
    text = _spread(figures.peak_memory_per_gpu_max_gib, figures.runs_completed, 2)
    if figures.memory_metric in WHOLE_PROCESS:
        return text + " (whole process)"
    setup = figures.setup_memory_per_gpu_max_gib.median
    return text if setup is None else f"{text}; setup {setup:,.2f}"


def _model_state_cell(row: SummaryRow) -> str:
    """Model state per GPU, with its reduction against the weak-scaling baseline."""
    text = _spread(row.figures.model_state_per_gpu_mib, row.figures.runs_completed, 1)
    reduction = row.scaling.model_state_reduction.value
    if reduction is None or row.scaling.baseline.label == row.label:
        return text
    change = -reduction
    return f"{text} ({'±0%' if abs(change) < 0.005 else f'{change:+.0%}'.replace('-', '−')})"


def _millijoules_cell(row: SummaryRow) -> str:
    joules = row.figures.joules_per_token
    in_mj = Spread(*(None if value is None else value * 1000 for value in (joules.median, joules.low, joules.high)))
    return _spread(in_mj, row.figures.runs_completed, 2)


def _signed_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%".replace("-", "−")


def _prediction_cell(row: SummaryRow) -> str:
    """The predictions' errors, in percent of the measurement: the memory model's on the model
    state and (GPUs) the training peak; the step-time model's on tokens/s."""
    figures = row.figures
    errors = [figures.model_state_error_pct.median, figures.peak_error_pct.median,
              figures.tokens_per_s_error_pct.median]
    if all(error is None for error in errors):
        return "n/a"
    return "; ".join(_signed_percent(error) for error in errors)


def _efficiency_cell(row: SummaryRow, efficiency: Comparison, baseline: Baseline) -> str:
    """An efficiency with its interval and whether it is within noise."""
    if efficiency.value is None:
        return "n/a"
    if baseline.label == row.label:
        return "100% (baseline)"
    text = f"{efficiency.value:.0%}"
    if efficiency.noise in (WITHIN, BEYOND):
        text += f" [{efficiency.low * 100:.0f}–{efficiency.high * 100:.0f}]"
    return text + (f", {WITHIN}" if efficiency.noise == WITHIN else "")


def _weak(row: SummaryRow) -> str:
    return _efficiency_cell(row, row.scaling.scaling_efficiency, row.scaling.baseline)


def _strong(row: SummaryRow) -> str:
    return _efficiency_cell(row, row.scaling.scaling_efficiency_strong, row.scaling.baseline_strong)


def display_rows(rows: list[SummaryRow]) -> list[list[str]]:
    """The summary table's cells (HEADERS), as text: Markdown, LaTeX and the terminal."""
    return [[row.label, row.figures.setting.description or "-", _memory_cell(row), _model_state_cell(row),
             _prediction_cell(row), _spread(row.figures.mfu, row.figures.runs_completed, 1, percent=True),
             _spread(row.figures.tokens_per_s, row.figures.runs_completed), _weak(row), _strong(row),
             row.figures.status] for row in rows]


def result_rows(rows: list[SummaryRow]) -> list[tuple[str, str, list[str]]]:
    """The page's results table (RESULT_HEADERS after the configuration): (label, description,
    the other cells) per configuration."""
    out = []
    for row in rows:
        figures = row.figures
        out.append((row.label, figures.setting.description or "-", [
            f"{figures.runs_completed}/{figures.runs_total}", _spread(figures.tokens_per_s, figures.runs_completed),
            _spread(figures.mfu, figures.runs_completed, 1, percent=True), _millijoules_cell(row), _memory_cell(row),
            _model_state_cell(row), _weak(row), _strong(row)]))
    return out


def prediction_rows(rows: list[SummaryRow]) -> list[list[str]]:
    """The page's predicted-against-measured table (PREDICTION_HEADERS): each measurement, the
    prediction, and its error in percent of the measurement (medians over the repeats)."""
    out = []
    for row in rows:
        f, n = row.figures, row.figures.runs_completed
        out.append([row.label,
                    _spread(f.model_state_per_gpu_mib, n, 1), _spread(f.predicted_model_state_mib, n, 1),
                    _signed_percent(f.model_state_error_pct.median),
                    _spread(f.peak_memory_per_gpu_max_gib, n, 2), _spread(f.predicted_peak_gib, n, 2),
                    _signed_percent(f.peak_error_pct.median),
                    _spread(f.tokens_per_s, n), _spread(f.predicted_tokens_per_s, n),
                    _signed_percent(f.tokens_per_s_error_pct.median)])
    return out


def markdown(rows: list[SummaryRow], notes: Notes, title: str) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in display_rows(rows)]
    lines += ["", *[f"- {note}" for note in notes.all], ""]
    return "\n".join(lines)


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                          ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}"),
                          ("–", "--"), ("×", r"$\times$")):
        text = text.replace(char, escaped)
    return text


def latex(rows: list[SummaryRow], title: str) -> str:
    """A booktabs table for an IEEE paper (\\usepackage{booktabs}); table* spans both columns."""
    body = [" & ".join(_latex_escape(cell) for cell in row) + r" \\" for row in display_rows(rows)]
    return "\n".join([
        r"\begin{table*}[t]", r"\centering", rf"\caption{{{_latex_escape(title)}}}", r"\label{tab:hpml-summary}",
        r"\begin{tabular}{ll" + "r" * (len(HEADERS) - 3) + "l}", r"\toprule",
        " & ".join(_latex_escape(header) for header in HEADERS) + r" \\", r"\midrule", *body, r"\bottomrule",
        r"\end{tabular}", r"\end{table*}", "",
    ])


def _ms_share(ms: float, step_ms: float) -> str:
    return f"{ms:,.2f} ({ms / step_ms:.0%})" if step_ms else f"{ms:,.2f}"


def time_parts_table(rows: list[SummaryRow]) -> tuple[list[str], list[list[str]]]:
    """The page's where-the-time-goes table: each configuration's profiled step and its parts, in
    ms and percent of the step (its median repeat's; analysis.time_parts)."""
    shown = [row for row in rows if row.figures.parts is not None]
    present = parts_present([row.figures.parts for row in shown])
    headers = ["Configuration", "Step (ms)", *(f"{part} (ms)" for part in present), "Hidden comm. (ms)"]
    out = []
    for row in shown:
        parts = row.figures.parts
        measured = parts.measured
        out.append([row.label, f"{parts.step_ms:,.2f}", *(_ms_share(measured[p], parts.step_ms) for p in present),
                    f"{parts.hidden_ms:,.2f} of {parts.in_flight_ms:,.2f}" if parts.in_flight_ms else "-"])
    return headers, out


COLLECTIVE_HEADERS = ("Configuration", "Collective", "Measured", "Contract", "Equal")


def _count_bytes(count: int | None, size: int | None, bucketed: bool = False) -> str:
    if size is None:
        return "none"
    times = "in buckets" if bucketed else f"{count} ×" if count is not None else ""
    return f"{size:,} B ({times})" if times else f"{size:,} B"


def collective_rows(rows: list[SummaryRow]) -> list[list[str]]:
    """The bytes each configuration's collectives moved in a step, kind by kind, against the
    contract's (hpml_core.contract.collectives)."""
    out = []
    for row in rows:
        if row.figures.parts is None:
            continue
        for k in row.figures.parts.collectives:
            out.append([row.label, k.kind, _count_bytes(k.measured_count, k.measured_bytes),
                        _count_bytes(k.predicted_count, k.predicted_bytes, bucketed=k.predicted_count is None),
                        "yes" if k.matches else "NO"])
    return out


PART_PREDICTION_HEADERS = ("Configuration", "Part", "Measured (ms)", "Predicted (ms)", "Predicted − measured")


def part_prediction_rows(rows: list[SummaryRow]) -> list[list[str]]:
    """Each part the step-time model predicts, beside the profiled step's (parts neither has left out)."""
    out = []
    for row in rows:
        parts = row.figures.parts
        if parts is None or parts.predicted is None:
            continue
        measured, predicted = parts.measured, parts.predicted
        for part in [p for p in measured if measured[p] > 0 or predicted.get(p, 0) > 0] + ["step"]:
            m = parts.step_ms if part == "step" else measured[part]
            if part in UNPREDICTED and predicted.get(part, 0.0) == 0:
                out.append([row.label, part, f"{m:,.3f}", "not predicted", "n/a"])
                continue
            p = sum(predicted.values()) if part == "step" else predicted.get(part, 0.0)
            error = _signed_percent(100 * (p - m) / m) if m > 0 else "n/a"
            out.append([row.label, part, f"{m:,.3f}", f"{p:,.3f}", error])
    return out
