"""Each configuration against the 1-process configuration it is measured against: weak scaling
(the same work per GPU: the same batch per GPU and accumulation) and strong scaling (the same
global batch, in one process by accumulation). A baseline is looked for, never guessed: it must
share everything that changes a GPU's own speed and memory, the device and the precision regime
included (DeepSpeed's ZeRO stages and FSDP2 each train in another regime than the PyTorch path,
so they are compared with a 1-process run of their own mode). Where none exists the figures are None, and the note names the nearest
1-process configuration, what differs, and the run that would give one.

Every comparison is made from the medians with an interval from the two ranges, and is called
within noise only when the ranges overlap: a ratio of medians alone would claim more than
three repeats can show.

Every figure's definition: docs/report.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from analysis.columns import Baseline, Comparison, Spread
from analysis.configurations import ConfigurationRow

# What a baseline must share with the configuration (besides being one process): the settings
# that change a GPU's own speed and memory, and the device itself.
SHARED_KEY = ("model", "seq_len", "regime_key", "optimizer", "grad_ckpt", "attn", "compile", "device_name")
WEAK_KEY = (*SHARED_KEY[:2], "batch_per_gpu", "grad_accum", *SHARED_KEY[2:])
STRONG_KEY = (*SHARED_KEY[:2], "global_batch", *SHARED_KEY[2:])
WITHIN, BEYOND, NO_SPREAD = "within noise", "beyond noise", "no spread: 1 repeat"


@dataclass(frozen=True)
class Scaling:
    """A configuration's comparisons with its weak- and strong-scaling baselines. The notes say
    why a baseline, or the memory reduction, is missing."""
    baseline: Baseline
    baseline_note: str | None
    speedup: Comparison  # T_N / T_1
    scaling_efficiency: Comparison  # T_N / (N × T_1)
    memory_reduction: Comparison  # 1 − M_N / M_1, training peak
    model_state_reduction: Comparison  # 1 − S_N / S_1
    baseline_strong: Baseline
    baseline_strong_note: str | None
    speedup_strong: Comparison
    scaling_efficiency_strong: Comparison
    memory_reduction_note: str | None


@dataclass(frozen=True)
class SummaryRow:
    """A configuration's figures and its scaling: one row of summary.csv, of the tables, the
    figures and the page."""
    figures: ConfigurationRow
    scaling: Scaling

    @property
    def label(self) -> str:
        return self.figures.label

    @property
    def compared(self) -> bool:
        """Whether it has a baseline other than itself: a 1-process configuration is its own,
        and its 100 % is no result."""
        return any(base.label not in (None, self.label)
                   for base in (self.scaling.baseline, self.scaling.baseline_strong))


def _key(row: ConfigurationRow, field: str):
    return getattr(row.setting, field)


def _ratio(top: Spread, bottom: Spread) -> tuple[float, float, float]:
    """X_N / X_1 from the medians, with its interval from the two ranges."""
    return top.median / bottom.median, top.low / bottom.high, top.high / bottom.low


def _noise(interval: tuple, reference: float, row: ConfigurationRow, base: ConfigurationRow) -> str:
    """Whether the two ranges overlap: the ratio's interval holds ``reference``."""
    if row.runs_completed < 2 or base.runs_completed < 2:
        return NO_SPREAD
    return WITHIN if interval[1] <= reference <= interval[2] else BEYOND


def _compare(row: ConfigurationRow, base: ConfigurationRow | None, figure: Callable[[ConfigurationRow], Spread],
             scale: Callable[[float], float], reference: float) -> Comparison:
    """One figure against ``base`` (``scale``: the map of the ratio; ``reference``: the ratio
    meaning "no change"); the baseline itself compares as exactly no change."""
    if base is None:
        return Comparison()
    mine, theirs = figure(row), figure(base)
    if not (mine.known and theirs.known):
        return Comparison()
    ratio = (1.0, 1.0, 1.0) if base is row else _ratio(mine, theirs)
    low, high = sorted((scale(ratio[1]), scale(ratio[2])))
    return Comparison(scale(ratio[0]), low, high, None if base is row else _noise(ratio, reference, row, base))


def _candidates(rows: list[ConfigurationRow]) -> list[ConfigurationRow]:
    return [r for r in rows if r.setting.world_size == 1 and r.tokens_per_s.known]


def _matching(row: ConfigurationRow, rows: list[ConfigurationRow], key: tuple[str, ...]) -> ConfigurationRow | None:
    """The row itself when it is one process; else the first candidate sharing the key,
    preferring one of the same mode (the ZeRO stages share a regime, and one process of each does
    the same arithmetic, but not at the same speed), then one with the same batch per micro-step."""
    found = [r for r in _candidates(rows) if all(_key(r, k) == _key(row, k) for k in key)]
    found.sort(key=lambda r: (r is not row, r.setting.mode != row.setting.mode,
                              r.setting.batch_per_gpu != row.setting.batch_per_gpu))
    return found[0] if found else None


def _difference(field: str, base: ConfigurationRow, row: ConfigurationRow) -> str:
    """One field in which the nearest 1-process run differs, in words."""
    words = {"device_name": lambda b, r: f"ran on {b}, this on {r}",
             "regime_key": lambda b, r: f"trains in {base.setting.regime}, this in {row.setting.regime}",
             "batch_per_gpu": lambda b, r: f"has batch {b}/GPU, this {r}",
             "grad_accum": lambda b, r: f"accumulates {b} micro-steps, this {r}",
             "global_batch": lambda b, r: f"has global batch {b}, this {r}"}
    return words.get(field, lambda b, r: f"has {field} {b}, this {r}")(_key(base, field), _key(row, field))


def _missing_reason(row: ConfigurationRow, rows: list[ConfigurationRow], key: tuple[str, ...], view: str) -> str:
    """Why there is no baseline: the nearest 1-process configuration and what differs, and the
    run that would give one."""
    if not row.tokens_per_s.known:
        return "no completed run"
    setting = row.setting
    accumulation = setting.grad_accum if view == "weak" else setting.global_batch // setting.batch_per_gpu
    wanted = (f"add a 1-process {'single' if setting.mode in ('single', 'ddp') else setting.mode} run with batch "
              f"{setting.batch_per_gpu}, accumulation {accumulation}, on {setting.device_name}")
    candidates = _candidates(rows)
    if not candidates:
        return f"no completed 1-process run in the study: {wanted}"
    nearest = min(candidates, key=lambda r: sum(_key(r, k) != _key(row, k) for k in key))
    differences = "; ".join(_difference(k, nearest, row) for k in key if _key(nearest, k) != _key(row, k))
    return f"no completed 1-process run with the same {view}-scaling key; the nearest, {nearest.label!r}, " \
           f"{differences}: {wanted}"


def _baseline(base: ConfigurationRow | None) -> Baseline:
    return Baseline(base.configuration, base.setting.device_name, base.label) if base else Baseline()


def _scaling(row: ConfigurationRow, rows: list[ConfigurationRow]) -> Scaling:
    weak, strong = _matching(row, rows, WEAK_KEY), _matching(row, rows, STRONG_KEY)
    world = float(row.setting.world_size or 1)
    tokens = (lambda r: r.tokens_per_s)
    same, efficiency, reduction = (lambda x: x), (lambda x: x / world), (lambda x: 1 - x)
    memory_reduction = _compare(row, weak, lambda r: r.peak_memory_per_gpu_max_gib, reduction, 1.0)
    memory_note = None
    if weak is not None and weak.memory_metric != row.memory_metric:  # two different peaks: no ratio
        memory_reduction = Comparison()
        memory_note = f"the baseline's memory is {weak.memory_metric}, this {row.memory_metric}"
    return Scaling(
        baseline=_baseline(weak), baseline_note=None if weak else _missing_reason(row, rows, WEAK_KEY, "weak"),
        speedup=_compare(row, weak, tokens, same, 1.0),
        scaling_efficiency=_compare(row, weak, tokens, efficiency, world),
        memory_reduction=memory_reduction,
        model_state_reduction=_compare(row, weak, lambda r: r.model_state_per_gpu_mib, reduction, 1.0),
        baseline_strong=_baseline(strong),
        baseline_strong_note=None if strong else _missing_reason(row, rows, STRONG_KEY, "strong"),
        speedup_strong=_compare(row, strong, tokens, same, 1.0),
        scaling_efficiency_strong=_compare(row, strong, tokens, efficiency, world),
        memory_reduction_note=memory_note)


def summarize(rows: list[ConfigurationRow]) -> list[SummaryRow]:
    """Each configuration with its scaling against its baselines, in the rows' order."""
    return [SummaryRow(row, _scaling(row, rows)) for row in rows]
