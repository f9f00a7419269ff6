"""The report's figures, each as PNG (for the HTML page and slides) and SVG (for a paper):
throughput and scaling efficiency per configuration, peak memory per GPU, MFU against the batch
per GPU, and the loss curves of every configuration on one axis. A configuration without the
figure (not completed, no baseline, MFU not measurable) is labelled "n/a" in place of a bar."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.collect import RunResult  # noqa: E402

FIGURES = ("throughput", "memory", "mfu_vs_batch", "loss")


def _value(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _bars(ax, configs: pd.DataFrame, column: str, label: str, scale: float = 1.0, spread: bool = True) -> None:
    names = list(configs["configuration"])
    values = [_value(v) for v in configs[column]]
    heights = [v * scale if v is not None else 0.0 for v in values]
    errors = None
    if spread and column.endswith("_median"):
        base = column.removesuffix("_median")
        low = [_value(v) for v in configs[f"{base}_min"]]
        high = [_value(v) for v in configs[f"{base}_max"]]
        errors = [[(v - lo) * scale if v is not None else 0 for v, lo in zip(values, low)],
                  [(hi - v) * scale if v is not None else 0 for v, hi in zip(values, high)]]
        if not any(errors[0]) and not any(errors[1]):
            errors = None  # one repeat each: no spread to draw
    ax.bar(names, heights, yerr=errors, capsize=4, color="#4c72b0")
    for index, value in enumerate(values):
        if value is None:
            ax.text(index, 0, "n/a", ha="center", va="bottom", color="#c44e52")
    ax.set_ylabel(label)
    ax.tick_params(axis="x", labelrotation=30)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
    ax.grid(axis="y", alpha=0.3)


def _save(fig, folder: Path, name: str) -> list[Path]:
    fig.tight_layout()
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths


def throughput(configs: pd.DataFrame, folder: Path) -> list[Path]:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    _bars(left, configs, "tokens_per_s_median", "tokens/s (median, min–max)")
    left.set_title("Throughput")
    _bars(right, configs, "scaling_efficiency", "T_N / (N × T_1)", scale=100, spread=False)
    right.set_ylabel("scaling efficiency (%)")
    right.axhline(100, color="gray", linestyle="--", linewidth=1)
    right.set_title("Scaling efficiency against the single-GPU baseline")
    return _save(fig, folder, "throughput")


def memory(configs: pd.DataFrame, folder: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    _bars(ax, configs, "peak_memory_per_gpu_max_gib_median", "GiB per GPU (maximum over ranks)")
    means = [_value(v) for v in configs["peak_memory_per_gpu_mean_gib_median"]]
    ax.scatter([i for i, v in enumerate(means) if v is not None], [v for v in means if v is not None],
               color="#dd8452", zorder=3, label="mean over ranks")
    ax.legend(loc="upper right")
    metric = set(configs["memory_metric"].dropna())
    ax.set_title("Peak memory per GPU" + (" (CPU runs: peak RSS per process)" if "cpu_peak_rss" in metric else ""))
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
        layouts = measured["description"].str.replace(r", batch \d+/\w+", "", regex=True)
        for layout, group in measured.groupby(layouts, sort=False):
            group = group.sort_values("batch_per_gpu")
            ax.plot(group["batch_per_gpu"], group["mfu_median"] * 100, marker="o", label=layout)
        ax.set_xlabel("batch per GPU")
        ax.set_ylabel("MFU (%)")
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


def draw_all(configs: pd.DataFrame, results: list[RunResult], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [*throughput(configs, folder), *memory(configs, folder), *mfu_vs_batch(configs, folder),
            *loss(results, folder)]
