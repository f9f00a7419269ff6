"""Where each configuration's step goes: the parts of its profiled steps (``hpml_core.contract.
step_parts``, measured by the engine after the timed steps), the bytes its collectives moved
against the contract's (``hpml_core.contract.collectives``), the step-time model's parts beside
them (``hpml_core.contract.step_time``), and one finding per multi-process configuration against
its baseline, in words computed from those figures.

A run's parts are the mean over its ranks of each rank's median profiled step (so they add up to
the ranks' mean step); a configuration's are those of its repeat whose step is the median. Its
bytes are rank 0's first profiled step's. ``time_parts.csv`` and ``collectives.csv`` hold them.

Every figure's definition: docs/report.md#where-the-time-goes.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import pandas as pd

from hpml_core.contract import collectives
from hpml_core.contract.layout import Layout
from hpml_core.contract.models import model_dims
from hpml_core.contract.rank_file import RankFile
from hpml_core.contract.step_parts import COLLECTIVE_KINDS, PARTS
from hpml_core.contract.step_time import StepPrediction

# One colour per part, the same in every figure: compute in blues and greens, communication in
# warm colours, what is left in grey.
PART_COLORS = {"data": "#9ecae1", "forward": "#3182bd", "backward": "#08519c", "recompute": "#6baed6",
               "optimizer": "#31a354", "all-reduce": "#e6550d", "all-gather": "#fd8d3c", "reduce-scatter": "#a63603",
               "broadcast": "#fdd0a2", "other": "#bdbdbd"}
COMPUTE = ("forward", "backward", "recompute")
UNPREDICTED = ("data", "other")  # measured; predicted only where a calibration measured them (else 0)


@dataclass(frozen=True)
class KindBytes:
    """One collective kind in a step: measured (rank 0's first profiled step) against the contract."""
    kind: str
    measured_count: int | None
    measured_bytes: int | None
    predicted_count: int | None  # None: in buckets, or no prediction
    predicted_bytes: int | None

    @property
    def matches(self) -> bool:
        return (self.measured_bytes or 0) == (self.predicted_bytes or 0) and (
            self.predicted_count is None or self.measured_count == self.predicted_count)


@dataclass(frozen=True)
class RunParts:
    measured_ms: tuple[tuple[str, float], ...]  # (part, ms) in PARTS' order
    in_flight_ms: float
    hidden_ms: float
    collectives: tuple[KindBytes, ...]
    overhead: float | None  # the profiler's cost on the step, median over ranks
    trace_bytes: int  # all ranks' traces
    predicted_ms: tuple[tuple[str, float], ...] | None
    predicted_note: str | None
    how: str  # how the engine told computing from communicating (rank 0's profile)

    @property
    def measured(self) -> dict[str, float]:
        return dict(self.measured_ms)

    @property
    def predicted(self) -> dict[str, float] | None:
        return None if self.predicted_ms is None else dict(self.predicted_ms)

    @property
    def step_ms(self) -> float:
        return sum(ms for _, ms in self.measured_ms)

    def share(self, parts: tuple[str, ...]) -> float:
        return sum(self.measured[p] for p in parts) / self.step_ms if self.step_ms else 0.0


def run_parts(files: list[RankFile], step: StepPrediction | None, note: str | None) -> tuple[RunParts | None, str | None]:
    """The run's parts from its measured attempt's rank files, or why there are none."""
    profiles = [f.profile for f in files]
    if None in profiles:
        missing = next(f for f in files if f.profile is None)
        return None, f"rank {missing.rank}: {missing.profile_missing_reason or 'no profile (written before hpml profiled)'}"
    if not all(p.steps for p in profiles):
        return None, f"rank {next(f.rank for f in files if not f.profile.steps)}: its profile holds no step"
    medians = [p.median_parts() for p in profiles]
    measured = {part: 1e3 * statistics.fmean(m.get(part, 0.0) for m in medians) for part in PARTS}
    middle = [sorted(p.steps, key=lambda s: s.wall_s)[(len(p.steps) - 1) // 2] for p in profiles]
    first = files[0]
    expected = collectives.by_kind(collectives.per_step(first.config, model_dims(first.config.model, first.model.vocab_size),
                                                        Layout(first.world_size, first.tp_size),
                                                        first.config.backend_on(first.device_type)))
    got = profiles[0].collectives_per_step()
    kinds = tuple(KindBytes(kind, got[kind].count if kind in got else None, got[kind].bytes if kind in got else None,
                            expected[kind].count if kind in expected else None,
                            expected[kind].bytes if kind in expected else None)
                  for kind in COLLECTIVE_KINDS if kind in got or kind in expected)
    overheads = [p.overhead for p in profiles if p.overhead is not None]
    predicted = None if step is None or step.parts_s is None else tuple((p, 1e3 * s) for p, s in step.parts_s.items())
    return RunParts(
        measured_ms=tuple(measured.items()),
        in_flight_ms=1e3 * statistics.fmean(s.comm_in_flight_s for s in middle),
        hidden_ms=1e3 * statistics.fmean(s.comm_hidden_s for s in middle),
        collectives=kinds, overhead=statistics.median(overheads) if overheads else None,
        trace_bytes=sum(p.trace_bytes or 0 for p in profiles), predicted_ms=predicted,
        predicted_note=None if predicted else (note or (step.missing_reason if step else "no site speed given")),
        how=profiles[0].how.split("; ", 1)[-1]), None


def median_repeat(parts: list[RunParts]) -> RunParts | None:
    """The repeat whose measured step is the median (the lower one of an even count)."""
    if not parts:
        return None
    return sorted(parts, key=lambda p: p.step_ms)[(len(parts) - 1) // 2]


def _ms(value: float) -> str:
    return f"{value:.3g} ms" if value < 100 else f"{value:,.0f} ms"


def _exposed(parts: RunParts) -> list[tuple[str, float]]:
    found = [(kind, parts.measured[kind]) for kind in COLLECTIVE_KINDS if parts.measured[kind] > 0]
    return sorted(found, key=lambda kv: -kv[1])


def finding(label: str, parts: RunParts, base_label: str, base: RunParts) -> str:
    """One line: what the configuration's step spends that its baseline's does not."""
    exposed = _exposed(parts)
    step_ratio = parts.step_ms / base.step_ms if base.step_ms else float("nan")
    if exposed:
        top, top_ms = exposed[0]
        comm = f"{top_ms / parts.step_ms:.0%} of the step is exposed {top} ({_ms(top_ms)})"
        rest = [f"{kind} {ms / parts.step_ms:.0%}" for kind, ms in exposed[1:]]
        comm += f", {', '.join(rest)} more" if rest else ""
    else:
        comm = "no communication is exposed"
    base_exposed = sum(ms for _, ms in _exposed(base))
    base_share = base_exposed / base.step_ms if base.step_ms else 0.0
    base_comm = ("the baseline has none" if not base_exposed else f"the baseline's is {base_share:.0%}"
                 if base_share >= 0.005 else "the baseline's is under 1 %")
    hidden = f"; {_ms(parts.hidden_ms)} of {_ms(parts.in_flight_ms)} in flight hidden under compute" if parts.in_flight_ms else ""
    return (f"{label}: {comm}; {base_comm} ({base_label}). Compute (forward, backward, recompute) is "
            f"{parts.share(COMPUTE):.0%} of the step against {base.share(COMPUTE):.0%}; the step takes "
            f"{step_ratio:.2g}× the baseline's ({_ms(parts.step_ms)} against {_ms(base.step_ms)}){hidden}.")


def parts_present(parts: list[RunParts]) -> list[str]:
    """The parts any configuration has (measured or predicted), in PARTS' order."""
    present = {p for run in parts for p, ms in run.measured_ms if ms > 0}
    present |= {p for run in parts if run.predicted_ms for p, ms in run.predicted_ms if ms > 0}
    return [p for p in PARTS if p in present]


def parts_frame(labels: list[str], parts: list[RunParts | None]) -> pd.DataFrame:
    """``time_parts.csv``: one row per configuration and part, measured and predicted, in ms."""
    rows = []
    for label, run in zip(labels, parts):
        if run is None:
            continue
        predicted = run.predicted
        for part, ms in run.measured_ms:
            kind = ("communication, exposed" if part in COLLECTIVE_KINDS else part if part in UNPREDICTED
                    else "compute")
            rows.append({"configuration": label, "part": part, "kind": kind,
                         "measured_ms": ms, "measured_share": ms / run.step_ms if run.step_ms else None,
                         "predicted_ms": predicted[part] if predicted and (part not in UNPREDICTED or predicted[part] > 0)
                         else None})
    return pd.DataFrame(rows, columns=["configuration", "part", "kind", "measured_ms", "measured_share", "predicted_ms"])


def collectives_frame(labels: list[str], parts: list[RunParts | None]) -> pd.DataFrame:
    """``collectives.csv``: one row per configuration and collective kind, bytes measured and predicted."""
    rows = [{"configuration": label, "kind": k.kind, "measured_count": k.measured_count,
             "measured_bytes": k.measured_bytes, "predicted_count": k.predicted_count,
             "predicted_bytes": k.predicted_bytes, "matches": k.matches}
            for label, run in zip(labels, parts) if run is not None for k in run.collectives]
    return pd.DataFrame(rows, columns=["configuration", "kind", "measured_count", "measured_bytes", "predicted_count",
                                       "predicted_bytes", "matches"])
