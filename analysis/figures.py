"""The report's figures, each as PNG (for the HTML page and slides) and SVG (for a paper):
throughput and weak and strong scaling efficiency per configuration, peak memory per GPU
(training and setup) beside the model state, MFU against the batch per GPU, the loss curves of
every configuration on one axis, where each configuration's step goes (measured and predicted,
part by part), and the memory model's prediction against the measurement.
Every bar carries its spread over the repeats (min–max; a comparison's interval comes from both
ranges, and "≈" marks one within noise), and a configuration without the figure (not completed,
MFU not measurable) is labelled "n/a" in place of a bar. The efficiency panel shows only the
configurations compared with a baseline other than themselves: a 1-process configuration's
100 % is its definition, not a result."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.layout_engine import TightLayoutEngine  # noqa: E402

from analysis.baselines import WITHIN, SummaryRow  # noqa: E402
from analysis.collect import RunResult  # noqa: E402
from analysis.columns import Comparison, Spread  # noqa: E402
from hpml_core.contract.atomic import atomic_write  # noqa: E402
from analysis.time_parts import PART_COLORS, parts_present  # noqa: E402

Figure = Callable[[SummaryRow], Spread | Comparison]


def _point(figure: Spread | Comparison) -> tuple[float | None, float | None, float | None]:
    """(value, low, high) of a median with its range, or of a comparison with its interval."""
    return (figure.median if isinstance(figure, Spread) else figure.value), figure.low, figure.high


def _spread_label(rows: list[SummaryRow]) -> str:
    """What the error bars are, for an axis label."""
    most = max((row.figures.runs_completed for row in rows), default=0)
    return f"median, bars: min–max over up to {most} repeats" if most > 1 else "no spread: 1 repeat"


def _errors(values: list, low: list, high: list, scale: float) -> list | None:
    """Error bars from a median and its range; None when there is no spread to draw."""
    errors = [[(v - lo) * scale if v is not None and lo is not None else 0 for v, lo in zip(values, low)],
              [(hi - v) * scale if v is not None and hi is not None else 0 for v, hi in zip(values, high)]]
    return errors if any(errors[0]) or any(errors[1]) else None


def _rotate_labels(ax) -> None:
    ax.tick_params(axis="x", labelrotation=30)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")


def _bars(ax, rows: list[SummaryRow], series: list[tuple[Figure, str, str]], label: str, scale: float = 1.0) -> None:
    """Grouped bars, one group per configuration: ``series`` is (figure, legend, colour), the
    figure a median with its range or a comparison with its interval."""
    names = [row.label for row in rows]
    width = 0.8 / len(series)
    for index, (figure, legend, colour) in enumerate(series):
        values, low, high = zip(*(_point(figure(row)) for row in rows)) if rows else ((), (), ())
        offsets = [i + (index - (len(series) - 1) / 2) * width for i in range(len(names))]
        ax.bar(offsets, [v * scale if v is not None else 0.0 for v in values], width,
               yerr=_errors(list(values), list(low), list(high), scale), capsize=3, color=colour, label=legend)
        for offset, value in zip(offsets, values):
            if value is None:
                ax.text(offset, 0, "n/a", ha="center", va="bottom", color="#c44e52", fontsize=7, rotation=90)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(label)
    _rotate_labels(ax)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.set_ylim(top=ax.get_ylim()[1] * 1.15)  # room for the legend above the bars
        ax.legend(fontsize=8, loc="upper center", ncol=len(series))


def _nothing(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, folder: Path, name: str) -> list[Path]:
    # Laid out once, as fig.tight_layout() would, but without leaving a layout engine on the
    # figure, which would make each savefig below lay it out again (0.30 -> 0.25 s a figure).
    TightLayoutEngine().execute(fig)
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    for path in paths:
        atomic_write(path, lambda f, kind=path.suffix[1:]: fig.savefig(f, dpi=120, format=kind))
    plt.close(fig)
    return paths


def _mark_within_noise(ax, rows: list[SummaryRow], figures: list[Callable[[SummaryRow], Comparison]]) -> None:
    """A "≈" over each comparison that is within noise (its range overlaps the baseline's)."""
    width = 0.8 / len(figures)
    for index, figure in enumerate(figures):
        for position, row in enumerate(rows):
            comparison = figure(row)
            if comparison.noise == WITHIN and comparison.high is not None:
                ax.text(position + (index - (len(figures) - 1) / 2) * width, comparison.high * 100, "≈",
                        ha="center", va="bottom", fontsize=12, fontweight="bold")


def efficiency_rows(rows: list[SummaryRow]) -> list[SummaryRow]:
    """The configurations the efficiency panel shows: those with a baseline other than themselves."""
    return [row for row in rows if row.compared]


def throughput(rows: list[SummaryRow], folder: Path) -> list[Path]:
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    _bars(left, rows, [(lambda r: r.figures.tokens_per_s, "tokens/s", "#4c72b0")], f"tokens/s ({_spread_label(rows)})")
    left.set_title("Throughput")
    compared = efficiency_rows(rows)
    right.set_title("Scaling efficiency (bars: interval from min–max; ≈ within noise)")
    if not compared:
        _nothing(right, "no configuration has a 1-process baseline other than itself")
        return _save(fig, folder, "throughput")
    efficiencies = [lambda r: r.scaling.scaling_efficiency, lambda r: r.scaling.scaling_efficiency_strong]
    _bars(right, compared, [(efficiencies[0], "weak: 1 process, same batch per GPU", "#4c72b0"),
                            (efficiencies[1], "strong: 1 process, same global batch", "#55a868")],
          "scaling efficiency T_N / (N × T_1) (%)", scale=100)
    right.axhline(100, color="gray", linestyle="--", linewidth=1)
    _mark_within_noise(right, compared, efficiencies)
    return _save(fig, folder, "throughput")


def memory(rows: list[SummaryRow], folder: Path) -> list[Path]:
    """Left: the training peak per GPU (maximum over ranks) and the setup peak beside it; right:
    the model state per GPU (parameters, gradients, optimizer), which tells the layouts apart on
    any hardware."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    _bars(left, rows, [(lambda r: r.figures.peak_memory_per_gpu_max_gib, "training peak (max over ranks)", "#4c72b0"),
                       (lambda r: r.figures.setup_memory_per_gpu_max_gib, "setup peak", "#8c8c8c")],
          f"GiB per GPU ({_spread_label(rows)})")
    cpu = {row.figures.memory_metric for row in rows} & {"cpu_rss_hwm", "cpu_peak_rss"}
    left.set_title("Peak memory per GPU" + (" (CPU runs: resident set per process)" if cpu else ""))
    names = [row.label for row in rows]
    bottom = [0.0] * len(names)
    for part, figure, colour in (("params", lambda f: f.model_state_params_mib, "#4c72b0"),
                                 ("grads", lambda f: f.model_state_grads_mib, "#dd8452"),
                                 ("optimizer", lambda f: f.model_state_optimizer_mib, "#55a868")):
        values = [figure(row.figures).median or 0.0 for row in rows]
        right.bar(names, values, bottom=bottom, color=colour, label=part)
        bottom = [b + v for b, v in zip(bottom, values)]
    for index, row in enumerate(rows):
        if not row.figures.model_state_per_gpu_mib.known:
            right.text(index, 0, "n/a", ha="center", va="bottom", color="#c44e52")
    right.set_ylabel("MiB per GPU (the rank holding the most)")
    _rotate_labels(right)
    right.grid(axis="y", alpha=0.3)
    right.set_ylim(top=max(right.get_ylim()[1], 1e-9) * 1.15)  # room for the legend above the bars
    right.legend(fontsize=8, loc="upper center", ncol=3)
    right.set_title("Model state per GPU")
    return _save(fig, folder, "memory")


BATCH_IN_WORDS = re.compile(r", batch \d+/\w+( x \d+ accumulated)?")


def mfu_vs_batch(rows: list[SummaryRow], folder: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    measured = [row for row in rows if row.figures.mfu.known]
    if not measured:
        reasons = sorted({row.figures.mfu_missing_reason for row in rows if row.figures.mfu_missing_reason})
        _nothing(ax, "MFU not measured:\n" + "\n".join(reasons or ["no completed run"]))
    else:
        layouts: dict[str, list[SummaryRow]] = {}
        for row in measured:
            layouts.setdefault(BATCH_IN_WORDS.sub("", row.figures.setting.description), []).append(row)
        for layout, group in layouts.items():
            group = sorted(group, key=lambda r: r.figures.setting.batch_per_gpu)
            mfu = [row.figures.mfu for row in group]
            errors = _errors([m.median for m in mfu], [m.low for m in mfu], [m.high for m in mfu], 100)
            ax.errorbar([row.figures.setting.batch_per_gpu for row in group], [m.median * 100 for m in mfu],
                        yerr=errors, marker="o", capsize=3, label=layout)
        ax.set_xlabel("batch per GPU")
        ax.set_ylabel(f"MFU (%) ({_spread_label(rows)})")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax.set_title("MFU against batch size")
    return _save(fig, folder, "mfu_vs_batch")


def loss(results: list[RunResult], folder: Path) -> list[Path]:
    """One curve per configuration: its first repeat that recorded losses, from step 0 to the
    end over all its attempts (``RunResult.loss_curve``: rank 0's, the mean over data-parallel
    ranks); steps no attempt recorded are left as gaps in the line."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn: set[str] = set()
    for result in results:
        curve = result.loss_curve()
        if result.configuration in drawn or not curve:
            continue
        steps, values = [], []
        for step, value, _attempt in curve:
            if steps and step != steps[-1] + 1:
                steps.append(steps[-1] + 1)
                values.append(math.nan)  # a gap: matplotlib breaks the line there
            steps.append(step)
            values.append(value)
        ax.plot(steps, values, linewidth=1.2, label=result.configuration)
        drawn.add(result.configuration)
    if drawn:
        ax.set_xlabel("step (from 0)")
        ax.set_ylabel("training loss (mean over DP ranks)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no loss recorded yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Loss curves")
    return _save(fig, folder, "loss")


def _against(ax, rows: list[SummaryRow], predicted: Callable[[SummaryRow], Spread],
             measured: Callable[[SummaryRow], Spread], unit: str, missing: str) -> None:
    """Predicted (y) against measured (x), one point per configuration (medians), with y = x."""
    pairs = [(row.label, measured(row).median, predicted(row).median) for row in rows]
    pairs = [(label, x, y) for label, x, y in pairs if x is not None and y is not None]
    if not pairs:
        _nothing(ax, missing)
        return
    for label, x, y in pairs:
        ax.scatter([x], [y], s=30, label=label, zorder=3)
    top = max(max(x, y) for _, x, y in pairs) * 1.1
    ax.plot([0, top], [0, top], color="gray", linestyle="--", linewidth=1, label="predicted = measured")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel(f"measured ({unit})")
    ax.set_ylabel(f"predicted ({unit})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def predicted_vs_measured(rows: list[SummaryRow], folder: Path) -> list[Path]:
    """The predictions against the measurements, per configuration (medians over the repeats):
    the memory model's model state per GPU on any device and training peak (max_memory_allocated)
    on GPUs only; the step-time model's tokens/s."""
    fig, (left, right, speed) = plt.subplots(1, 3, figsize=(18, 4.8))
    _against(left, rows, lambda r: r.figures.predicted_model_state_mib, lambda r: r.figures.model_state_per_gpu_mib,
             "MiB per GPU", "no prediction beside a measured model state")
    left.set_title("Model state per GPU")
    notes = sorted({row.figures.prediction_note for row in rows if row.figures.prediction_note})
    _against(right, rows, lambda r: r.figures.predicted_peak_gib, lambda r: r.figures.peak_memory_per_gpu_max_gib,
             "GiB per GPU",
             "training peak not compared:\n" + "\n".join(notes or ["no completed GPU run with a prediction"]))
    right.set_title("Training peak per GPU (max_memory_allocated, GPUs only)")
    _against(speed, rows, lambda r: r.figures.predicted_tokens_per_s, lambda r: r.figures.tokens_per_s, "tokens/s",
             "no predicted tokens/s beside a measured one")
    speed.set_title("Tokens/s (step-time model at the site's stated speed)")
    return _save(fig, folder, "predicted_vs_measured")


def _stacked(ax, labels: list[str], parts: list[dict[str, float]], present: list[str], title: str) -> None:
    left = [0.0] * len(labels)
    for part in present:
        widths = [p.get(part, 0.0) for p in parts]
        ax.barh(labels, widths, left=left, color=PART_COLORS[part], label=part, edgecolor="white", linewidth=0.5)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel("ms per optimizer step")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)


def where_time_goes(rows: list[SummaryRow], folder: Path) -> list[Path]:
    """Each configuration's profiled step, part by part (its median repeat), and the step-time
    model's parts beside it; the parts' colours are analysis.time_parts.PART_COLORS everywhere."""
    shown = [row for row in rows if row.figures.parts is not None]
    fig, (measured, predicted) = plt.subplots(1, 2, figsize=(14, 1.8 + 0.45 * max(len(shown), 1)), sharey=True)
    if not shown:
        _nothing(measured, "no configuration has a profiled step (--profile-steps 0, or not completed)")
        _nothing(predicted, "")
        return _save(fig, folder, "where_time_goes")
    parts = [row.figures.parts for row in shown]
    present = parts_present(parts)
    labels = [row.label for row in shown]
    _stacked(measured, labels, [p.measured for p in parts], present, "Measured: profiled steps after the timed ones")
    _stacked(predicted, labels, [p.predicted or {} for p in parts], present,
             "Predicted: the step-time model at the site's speed")
    for position, p in enumerate(parts):
        if p.predicted is None:
            predicted.text(0, position, "  n/a", va="center", fontsize=8)
    measured.invert_yaxis()  # the experiment's order, top to bottom (the axes share it)
    measured.legend(fontsize=7, ncol=max(1, min(len(present), 5)), loc="upper left", bbox_to_anchor=(0, -0.12))  # below
    return _save(fig, folder, "where_time_goes")


def draw_all(rows: list[SummaryRow], results: list[RunResult], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [*throughput(rows, folder), *memory(rows, folder), *mfu_vs_batch(rows, folder),
            *loss(results, folder), *where_time_goes(rows, folder), *predicted_vs_measured(rows, folder)]
