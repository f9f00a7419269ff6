"""One row per configuration and device: the repeats of one run entry, summed up as the median
of their figures with the range measured. Repeats that ran on two devices are two rows, because
a median never mixes hardware; the range is min–max rather than a t-interval, because with three
repeats a 95 % interval is wider than the data and assumes a normality three points cannot show.
Only completed repeats count towards a figure; every repeat counts towards the hours spent.

Every figure's definition: docs/report.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from analysis.columns import APART, Spread
from analysis.runs import RunRow, Setting
from analysis.time_parts import RunParts, median_repeat
from hpml_core.contract.run_states import COMPLETED


@dataclass(frozen=True)
class ConfigurationRow:
    configuration: str
    label: str  # the name, with the device where the configuration ran on several
    status: str  # COMPLETED, "k/n COMPLETED", or the states of its runs
    runs_completed: int
    runs_total: int
    reason: str | None  # each run that did not complete, with its state and why
    setting: Setting  # of its first run that wrote rank files; all None before any did
    tokens_per_s: Spread
    samples_per_s: Spread
    tokens_per_s_per_gpu: Spread
    mfu: Spread
    joules_per_token: Spread
    peak_memory_per_gpu_max_gib: Spread
    setup_memory_per_gpu_max_gib: Spread
    model_state_per_gpu_mib: Spread
    model_state_params_mib: Spread
    model_state_grads_mib: Spread
    model_state_optimizer_mib: Spread
    final_loss: Spread
    predicted_model_state_mib: Spread
    model_state_error_pct: Spread
    predicted_peak_gib: Spread
    peak_error_pct: Spread
    predicted_tokens_per_s: Spread
    tokens_per_s_error_pct: Spread
    assumed_tokens_per_s: Spread  # the site's calibration present: at the profile's assumed rates
    assumed_tokens_per_s_error_pct: Spread
    peak_memory_per_gpu_mean_gib_median: float | None
    device_hours_total: float | None  # every run, whatever its state
    device_hours_unit: str | None
    device_hours_source: str | None
    # What the completed repeats say about how their figures were measured, or why one is missing.
    memory_metric: str | None
    peak_source: str | None
    peak_tflops_per_gpu: float | None
    timing: str | None
    prediction_note: str | None
    speed_prediction_note: str | None
    mfu_missing_reason: str | None
    energy_missing_reason: str | None
    throughput_note: str | None  # run by run, named
    parts: RunParts | None = field(default=None, metadata=APART)  # its median repeat's (analysis.time_parts)
    parts_missing_reason: str | None = None


def _status(runs: list[RunRow]) -> tuple[str, str | None]:
    done = sum(run.status == COMPLETED for run in runs)
    others = [run for run in runs if run.status != COMPLETED]
    reasons = "; ".join(f"{run.run}: {run.status}" + (f" ({run.reason})" if run.reason else "") for run in others)
    if done == len(runs):
        return COMPLETED, None
    if done == 0:
        return ", ".join(dict.fromkeys(run.status for run in others)), reasons
    return f"{done}/{len(runs)} {COMPLETED}", reasons


def _device_groups(runs: list[RunRow]) -> list[str]:
    """Each run's device group within its configuration: the device it ran on. A run that has
    not run anywhere yet joins its configuration's device when there is one, and stands apart
    (device unknown: "") when the configuration ran on several."""
    known: dict[str, dict[str, None]] = {}
    for run in runs:
        if run.setting.device_name is not None:
            known.setdefault(run.configuration, {})[run.setting.device_name] = None
    groups = []
    for run in runs:
        devices = list(known.get(run.configuration, {}))
        groups.append(run.setting.device_name or (devices[0] if len(devices) == 1 else ""))
    return groups


def _first(values) -> object | None:
    return next((value for value in values if value is not None), None)


def _configuration_row(name: str, label: str, runs: list[RunRow]) -> ConfigurationRow:
    done = [run for run in runs if run.status == COMPLETED]
    described = [run for run in runs if run.setting.description is not None]
    status, reason = _status(runs)

    def spread(figure: Callable[[RunRow], float | None]) -> Spread:
        return Spread.of(figure(run) for run in done)

    mean_memory = Spread.of(run.memory.peak_memory_per_gpu_mean_gib for run in done)
    hours = [run.hours.device_hours for run in runs if run.hours.device_hours is not None]
    sources = {part for run in runs if run.hours.device_hours_source
               for part in run.hours.device_hours_source.split(" + ")}
    peak_error = spread(lambda r: r.predictions.peak_error_pct)
    mfu = spread(lambda r: r.throughput.mfu)
    joules = spread(lambda r: r.throughput.joules_per_token)
    return ConfigurationRow(
        configuration=name, label=label, status=status, runs_completed=len(done), runs_total=len(runs), reason=reason,
        setting=described[0].setting if described else Setting(),
        tokens_per_s=spread(lambda r: r.throughput.tokens_per_s),
        samples_per_s=spread(lambda r: r.throughput.samples_per_s),
        tokens_per_s_per_gpu=spread(lambda r: r.throughput.tokens_per_s_per_gpu), mfu=mfu, joules_per_token=joules,
        peak_memory_per_gpu_max_gib=spread(lambda r: r.memory.peak_memory_per_gpu_max_gib),
        setup_memory_per_gpu_max_gib=spread(lambda r: r.memory.setup_memory_per_gpu_max_gib),
        model_state_per_gpu_mib=spread(lambda r: r.model_state.model_state_per_gpu_mib),
        model_state_params_mib=spread(lambda r: r.model_state.model_state_params_mib),
        model_state_grads_mib=spread(lambda r: r.model_state.model_state_grads_mib),
        model_state_optimizer_mib=spread(lambda r: r.model_state.model_state_optimizer_mib),
        final_loss=spread(lambda r: r.final_loss),
        predicted_model_state_mib=spread(lambda r: r.model_state.predicted_model_state_mib),
        model_state_error_pct=spread(lambda r: r.model_state.model_state_error_pct),
        predicted_peak_gib=spread(lambda r: r.predictions.predicted_peak_gib), peak_error_pct=peak_error,
        predicted_tokens_per_s=spread(lambda r: r.predictions.predicted_tokens_per_s),
        tokens_per_s_error_pct=spread(lambda r: r.predictions.tokens_per_s_error_pct),
        assumed_tokens_per_s=spread(lambda r: r.predictions.assumed_tokens_per_s),
        assumed_tokens_per_s_error_pct=spread(lambda r: r.predictions.assumed_tokens_per_s_error_pct),
        peak_memory_per_gpu_mean_gib_median=mean_memory.median,
        device_hours_total=sum(hours) if hours else None,
        device_hours_unit=_first(run.hours.device_hours_unit for run in runs),
        device_hours_source=" + ".join(sorted(sources)) or None,
        memory_metric=_first(run.memory.memory_metric for run in done),
        peak_source=_first(run.throughput.peak_source for run in done),
        peak_tflops_per_gpu=_first(run.throughput.peak_tflops_per_gpu for run in done),
        timing=_first(run.throughput.timing for run in done),
        # A repeat without the comparison does not make the median missing.
        prediction_note=None if peak_error.known else _first(run.predictions.prediction_note for run in done),
        speed_prediction_note=_first(run.predictions.speed_prediction_note for run in done),
        mfu_missing_reason=None if mfu.known else _first(run.throughput.mfu_missing_reason for run in done),
        energy_missing_reason=None if joules.known else _first(run.throughput.energy_missing_reason for run in done),
        throughput_note="; ".join(f"{run.run}: {run.throughput_note}" for run in done if run.throughput_note) or None,
        parts=median_repeat([run.parts for run in done if run.parts is not None]),
        parts_missing_reason=_first(run.parts_missing_reason for run in done))


def configuration_rows(runs: list[RunRow]) -> list[ConfigurationRow]:
    """In the experiment's order: a configuration's first run places it."""
    grouped: dict[tuple[str, str], list[RunRow]] = {}
    for run, device in zip(runs, _device_groups(runs)):
        grouped.setdefault((run.configuration, device), []).append(run)
    devices_of: dict[str, int] = {}
    for configuration, _ in grouped:
        devices_of[configuration] = devices_of.get(configuration, 0) + 1
    return [_configuration_row(name, f"{name} ({device or 'no device yet'})" if devices_of[name] > 1 else name, group)
            for (name, device), group in grouped.items()]
