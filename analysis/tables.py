"""The report's tables: ``summary.csv`` and ``runs.csv`` (every column, units in the names),
``summary.md`` (the original study's table: Configuration | Description | Memory | MFU, plus
throughput, scaling efficiency and status) and ``summary.tex`` (booktabs, for a paper).

A missing figure is printed as "n/a", with its reason in the notes below the table, never as 0.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.collect import Problem

HEADERS = ("Configuration", "Description", "Memory (GiB/GPU)", "MFU", "Tokens/s", "Samples/s", "Scaling eff.",
           "Status")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value, digits: int = 0) -> str:
    return "n/a" if _missing(value) else f"{value:,.{digits}f}"


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


def display_rows(configs: pd.DataFrame) -> list[list[str]]:
    """The summary table's cells, as text, shared by Markdown, HTML and the terminal."""
    rows = []
    for row in configs.to_dict("records"):
        efficiency = "n/a" if _missing(row["scaling_efficiency"]) else f"{row['scaling_efficiency']:.0%}"
        rows.append([row["configuration"], "-" if _missing(row["description"]) else row["description"], _spread(row, "peak_memory_per_gpu_max_gib", 2),
                     _spread(row, "mfu", 1, percent=True), _spread(row, "tokens_per_s"), _spread(row, "samples_per_s", 1),
                     efficiency, row["status"]])
    return rows


def notes(configs: pd.DataFrame, problems: list[Problem], state_note: str | None = None) -> list[str]:
    """What the table's figures are, and why any is missing; ``state_note``: how the states
    were decided, when not with Slurm's word (it did not answer)."""
    lines = [f"States: {state_note}."] if state_note else []
    metrics = set(configs["memory_metric"].dropna()) if "memory_metric" in configs else set()
    if "cpu_peak_rss" in metrics:
        lines.append("Memory: peak resident set of each process (CPU runs); GPU runs: CUDA max_memory_allocated. "
                     "Maximum over the ranks.")
    elif metrics:
        lines.append("Memory: CUDA max_memory_allocated, maximum over the ranks.")
    lines.append("MFU: model FLOP/s per GPU (PaLM: 6N + 12·L·H·Q·T per token) over the GPU's dense peak for the "
                 "precision. Tokens/s: each token once, over the slowest rank's median step time.")
    if "peak_source" in configs:
        peaks = configs.dropna(subset=["peak_source"]).groupby(["peak_source", "peak_tflops_per_gpu"], sort=False)
        for (source, tflops), group in peaks:
            lines.append(f"Peak used for MFU: {source}, {tflops:g} TFLOP/s ({', '.join(group['configuration'])}).")
    for timing in sorted(set(configs["timing"].dropna())) if "timing" in configs else []:
        lines.append(f"Step time: {timing}.")
    for reason in sorted(set(configs["mfu_missing_reason"].dropna())) if "mfu_missing_reason" in configs else []:
        lines.append(f"MFU n/a: {reason}")
    baselines = configs.dropna(subset=["baseline"]) if "baseline" in configs else configs.iloc[0:0]
    for baseline in sorted(set(baselines["baseline"])):
        users = ", ".join(baselines[baselines["baseline"] == baseline]["configuration"])
        lines.append(f"Scaling efficiency T_N / (N × T_1) against {baseline!r} for: {users}.")
    for row in configs.to_dict("records"):
        if not _missing(row.get("baseline_note")) and not _missing(row.get("tokens_per_s_median")):
            lines.append(f"{row['configuration']}: scaling efficiency n/a: {row['baseline_note']}.")
        if not _missing(row.get("throughput_note")):
            lines.append(f"{row['throughput_note']}.")  # run by run, named
        if not _missing(row.get("reason")):
            lines.append(f"{row['configuration']}: {row['reason']}")
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
        r"\begin{tabular}{llrrrrrl}", r"\toprule",
        " & ".join(_latex_escape(header) for header in HEADERS) + r" \\", r"\midrule", *body, r"\bottomrule",
        r"\end{tabular}", r"\end{table*}", "",
    ])
