"""The report's figures, each as PNG (for the HTML page and slides) and SVG (for a paper):
throughput and weak and strong scaling efficiency per configuration, peak memory per GPU
(training and setup) beside the model state, MFU against the batch per GPU, the loss curves of
every configuration on one axis, and the memory model's prediction against the measurement.
Every bar carries its spread over the repeats (min–max; a comparison's interval comes from both
ranges, and "≈" marks one within noise), and a configuration without the figure (not completed, no baseline, MFU not measurable) is labelled
"n/a" in place of a bar."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.collect import RunResult  # noqa: E402

FIGURES = ("throughput", "memory", "mfu_vs_batch", "loss", "predicted_vs_measured")


def _value(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _spread_label(configs: pd.DataFrame) -> str:
    """What the error bars are, for an axis label."""
    most = int(configs["runs_completed"].max()) if len(configs) else 0
    return f"median, bars: min–max over up to {most} repeats" if most > 1 else "no spread: 1 repeat"


def _errors(values: list, low: list, high: list, scale: float) -> list | None:
    """Error bars from a median and its range; None when there is no spread to draw."""
    errors = [[(v - lo) * scale if v is not None and lo is not None else 0 for v, lo in zip(values, low)],
              [(hi - v) * scale if v is not None and hi is not None else 0 for v, hi in zip(values, high)]]
    return errors if any(errors[0]) or any(errors[1]) else None


def _bars(ax, configs: pd.DataFrame, series: list[tuple[str, str, str]], label: str, scale: float = 1.0) -> None:
    """Grouped bars, one group per configuration: ``series`` is (column, legend, colour), the
    column a median with ``_min``/``_max`` beside it (or a comparison with them)."""
    names = list(configs["label"])
    width = 0.8 / len(series)
    for index, (column, legend, colour) in enumerate(series):
        base = column.removesuffix("_median")
        values = [_value(v) for v in configs[column]]
        low = [_value(v) for v in configs[f"{base}_min"]] if f"{base}_min" in configs else values
        high = [_value(v) for v in configs[f"{base}_max"]] if f"{base}_max" in configs else values
        offsets = [i + (index - (len(series) - 1) / 2) * width for i in range(len(names))]
        ax.bar(offsets, [v * scale if v is not None else 0.0 for v in values], width,
               yerr=_errors(values, low, high, scale), capsize=3, color=colour, label=legend)
        for offset, value in zip(offsets, values):
            if value is None:
                ax.text(offset, 0, "n/a", ha="center", va="bottom", color="#c44e52", fontsize=7, rotation=90)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(label)
    ax.tick_params(axis="x", labelrotation=30)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.set_ylim(top=ax.get_ylim()[1] * 1.15)  # room for the legend above the bars
        ax.legend(fontsize=8, loc="upper center", ncol=len(series))


def _save(fig, folder: Path, name: str) -> list[Path]:
    fig.tight_layout()
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths


def _mark_within_noise(ax, configs: pd.DataFrame, columns: list[str]) -> None:
    """A "≈" over each comparison that is within noise (its range overlaps the baseline's)."""
    width = 0.8 / len(columns)
    for index, column in enumerate(columns):
        for position, (top, noise) in enumerate(zip(configs[f"{column}_max"], configs[f"{column}_noise"])):
            if noise == "within noise" and _value(top) is not None:
                ax.text(position + (index - (len(columns) - 1) / 2) * width, _value(top) * 100, "≈",
                        ha="center", va="bottom", fontsize=12, fontweight="bold")


def throughput(configs: pd.DataFrame, folder: Path) -> list[Path]:
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    _bars(left, configs, [("tokens_per_s_median", "tokens/s", "#4c72b0")], f"tokens/s ({_spread_label(configs)})")
    left.set_title("Throughput")
    _bars(right, configs, [("scaling_efficiency", "weak: 1 process, same batch per GPU", "#4c72b0"),
                           ("scaling_efficiency_strong", "strong: 1 process, same global batch", "#55a868")],
          "scaling efficiency T_N / (N × T_1) (%)", scale=100)
    right.axhline(100, color="gray", linestyle="--", linewidth=1)
    right.set_title("Scaling efficiency (bars: interval from min–max; ≈ within noise)")
    _mark_within_noise(right, configs, ["scaling_efficiency", "scaling_efficiency_strong"])
    return _save(fig, folder, "throughput")


def memory(configs: pd.DataFrame, folder: Path) -> list[Path]:
    """Left: the training peak per GPU (maximum over ranks) and the setup peak beside it; right:
    the model state per GPU (parameters, gradients, optimizer), which tells the layouts apart on
    any hardware."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    _bars(left, configs, [("peak_memory_per_gpu_max_gib_median", "training peak (max over ranks)", "#4c72b0"),
                          ("setup_memory_per_gpu_max_gib_median", "setup peak", "#8c8c8c")],
          f"GiB per GPU ({_spread_label(configs)})")
    metric = set(configs["memory_metric"].dropna())
    cpu = metric & {"cpu_rss_hwm", "cpu_peak_rss"}
    left.set_title("Peak memory per GPU" + (" (CPU runs: resident set per process)" if cpu else ""))
    names = list(configs["label"])
    bottom = [0.0] * len(names)
    for part, colour in (("params", "#4c72b0"), ("grads", "#dd8452"), ("optimizer", "#55a868")):
        values = [_value(v) or 0.0 for v in configs[f"model_state_{part}_mib_median"]]
        right.bar(names, values, bottom=bottom, color=colour, label=part)
        bottom = [b + v for b, v in zip(bottom, values)]
    for index, value in enumerate(configs["model_state_per_gpu_mib_median"]):
        if _value(value) is None:
            right.text(index, 0, "n/a", ha="center", va="bottom", color="#c44e52")
    right.set_ylabel("MiB per GPU (the rank holding the most)")
    right.tick_params(axis="x", labelrotation=30)
    for tick in right.get_xticklabels():
        tick.set_horizontalalignment("right")
    right.grid(axis="y", alpha=0.3)
    right.set_ylim(top=max(right.get_ylim()[1], 1e-9) * 1.15)  # room for the legend above the bars
    right.legend(fontsize=8, loc="upper center", ncol=3)
    right.set_title("Model state per GPU")
    return _save(fig, folder, "memory")


def mfu_vs_batch(configs: pd.DataFrame, folder: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    measured = configs.dropna(subset=["mfu_median"])
    if measured.empty:
        reasons = sorted(set(configs["mfu_missing_reason"].dropna())) or ["no completed run"]
        ax.text(0.5, 0.5, "MFU not measured:\n" + "\n".join(reasons), ha="center", va="center", wrap=True,
                transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        layouts = measured["description"].str.replace(r", batch \d+/\w+( x \d+ accumulated)?", "", regex=True)
        for layout, group in measured.groupby(layouts, sort=False):
            group = group.sort_values("batch_per_gpu")
            errors = _errors(list(group["mfu_median"]), list(group["mfu_min"]), list(group["mfu_max"]), 100)
            ax.errorbar(group["batch_per_gpu"], group["mfu_median"] * 100, yerr=errors, marker="o", capsize=3,
                        label=layout)
        ax.set_xlabel("batch per GPU")
        ax.set_ylabel(f"MFU (%) ({_spread_label(configs)})")
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


def _against(ax, configs: pd.DataFrame, predicted: str, measured: str, unit: str, missing: str) -> None:
    """Predicted (y) against measured (x), one point per configuration (medians), with y = x."""
    pairs = [(row["label"], _value(row[f"{measured}_median"]), _value(row[f"{predicted}_median"]))
             for row in configs.to_dict("records") if f"{predicted}_median" in row]
    pairs = [(label, x, y) for label, x, y in pairs if x is not None and y is not None]
    if not pairs:
        ax.text(0.5, 0.5, missing, ha="center", va="center", wrap=True, transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
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


def predicted_vs_measured(configs: pd.DataFrame, folder: Path) -> list[Path]:
    """The predictions against the measurements, per configuration (medians over the repeats):
    the memory model's model state per GPU on any device and training peak (max_memory_allocated)
    on GPUs only; the step-time model's tokens/s."""
    fig, (left, right, speed) = plt.subplots(1, 3, figsize=(18, 4.8))
    _against(left, configs, "predicted_model_state_mib", "model_state_per_gpu_mib", "MiB per GPU",
             "no prediction beside a measured model state")
    left.set_title("Model state per GPU")
    notes = sorted(set(configs["prediction_note"].dropna())) if "prediction_note" in configs else []
    _against(right, configs, "predicted_peak_gib", "peak_memory_per_gpu_max_gib", "GiB per GPU",
             "training peak not compared:\n" + "\n".join(notes or ["no completed GPU run with a prediction"]))
    right.set_title("Training peak per GPU (max_memory_allocated, GPUs only)")
    _against(speed, configs, "predicted_tokens_per_s", "tokens_per_s", "tokens/s",
             "no predicted tokens/s beside a measured one")
    speed.set_title("Tokens/s (step-time model at the site's stated speed)")
    return _save(fig, folder, "predicted_vs_measured")


def draw_all(configs: pd.DataFrame, results: list[RunResult], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [*throughput(configs, folder), *memory(configs, folder), *mfu_vs_batch(configs, folder),
            *loss(results, folder), *predicted_vs_measured(configs, folder)]
