"""Fit the step-time model's rates to what a site's finished runs measured, so that ``hpml plan``
predicts from this site's speed instead of assumed rates: ``hpml calibrate EXP... --site SITE``.

It reads the latest attempt of every run of the given experiments under the site's results
folder, keeps the runs whose every rank completed with a profiled window (``--profile-steps``,
on by default), and fits, from each rank's each profiled step (``hpml_core.contract.step_parts``)
set against what the contract says that step did (``hpml_core.contract.step_time``: model FLOPs
per pass, the optimizer's bytes; ``hpml_core.contract.collectives``: each collective's bytes and
group), the rates ``hpml_core.contract.calibration`` describes:

- a rate through the origin (time = amount ÷ rate) by least squares, for each pass's TFLOP/s
  and the optimizer's GB/s; with ``--compile`` the recomputation is timed inside the backward,
  so its FLOPs count there;
- time in flight = count × latency + bytes sent ÷ bandwidth per collective kind and scope, by
  least squares; where the points do not separate the two (their counts and bytes in one
  proportion) or the latency comes out negative, the bandwidth alone (latency 0, said so);
- the share of each kind's time in flight that overlap hid, per layout, and the mean seconds per
  step of data and of the rest.

Every time is first brought to the timed steps' pace: a profiled step runs slower (or faster)
than a timed one by the profile's measured ``overhead``, so each part is divided by 1 + overhead
(the planner predicts the timed step, whose tokens/s a run reports).

A collective kind whose collectives in a step run both within and between nodes (a multi-node
DP × TP run's all-reduces) gives no point: its time cannot be split between the two links.

Written atomically to ``jobs.site.calibration_path(site)``, replacing the previous calibration.
Refused in one line, exit status 2 and nothing written: no completed profiled run, runs on two
kinds of device, or runs on a device other than the site's GPU.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from hpml_core.contract import attempts, collectives, gpus
from hpml_core.contract import rank_file as rf
from hpml_core.contract.atomic import atomic_write
from hpml_core.contract.calibration import COMPUTE_FITTED, OVERHEAD_PARTS, Calibration, Fit, LinkFit, rate_key
from hpml_core.contract.errors import UsageError
from hpml_core.contract.layout import Layout
from hpml_core.contract.models import model_dims
from hpml_core.contract.run_states import COMPLETED
from hpml_core.contract.step_time import compute_flops, optimizer_bytes, ring_share
from jobs import cli, experiment, site


@dataclass(frozen=True)
class RankSteps:
    """One rank of a completed, profiled run, with where it ran."""

    run: str  # <experiment>/<run>
    record: rf.RankFile
    ranks_per_node: int


def completed_ranks(exp: experiment.Experiment, profile: site.Site) -> list[RankSteps]:
    """Every rank of the experiment's runs whose latest attempt completed on every rank with a
    profiled window; unreadable files and incomplete runs are left out (``hpml report`` says why)."""
    return [rank for run in exp.runs
            for rank in profiled_run(profile.experiment_folder(exp.name) / run.name, f"{exp.name}/{run.name}")]


def profiled_run(folder: Path, name: str) -> list[RankSteps]:
    """The ranks of the run in ``folder`` if its latest attempt completed on every rank with a
    profiled window; none otherwise."""
    paths = attempts.latest_rank_files(folder)
    try:
        records = [rf.read(path) for path in paths.values()]
    except (OSError, ValueError, ValidationError):
        return []
    if (not records or len(records) != records[0].world_size
            or any(r.status != COMPLETED or r.profile is None or not r.profile.steps or r.precision is None
                   for r in records)):
        return []
    nodes = len({(r.slurm.node if r.slurm and r.slurm.node else r.hostname) for r in records})
    return [RankSteps(name, r, r.world_size // nodes) for r in records]


def check_device(ranks: list[RankSteps], profile: site.Site) -> tuple[str, str]:
    devices = sorted({(r.record.device_type, r.record.device_name) for r in ranks})
    if len(devices) > 1:
        raise UsageError("EXPERIMENT", "the runs ran on more than one kind of device ("
                         + "; ".join(name for _, name in devices) + "): calibrate each site's runs alone")
    device_type, device_name = devices[0]
    stated = profile.gpu()
    if stated is not None and (device_type != "cuda" or gpus.by_device_name(device_name) != stated):
        raise UsageError("--site", f"site {profile.name} runs on {stated.label}, but the runs ran on {device_name}: "
                         "they are another site's")
    return device_type, device_name


def rate_through_origin(amounts: list[float], seconds: list[float]) -> Fit:
    """The rate of time = amount ÷ rate by least squares (in the amounts' unit per second)."""
    per_second = sum(a * t for a, t in zip(amounts, seconds)) / sum(a * a for a in amounts)
    rate = 1 / per_second
    spread = max(abs(a / t - rate) / rate for a, t in zip(amounts, seconds)) if all(seconds) else float("inf")
    return Fit(value=rate, points=len(amounts), spread_pct=100 * spread)


def link_fit(counts: list[int], sent: list[float], seconds: list[float]) -> LinkFit:
    """time = count × latency + sent ÷ bandwidth by least squares; the bandwidth alone where the
    points cannot separate the latency or give a negative one."""
    cc = sum(c * c for c in counts)
    cs = sum(c * s for c, s in zip(counts, sent))
    ss = sum(s * s for s in sent)
    ct = sum(c * t for c, t in zip(counts, seconds))
    st = sum(s * t for s, t in zip(sent, seconds))
    det = cc * ss - cs * cs
    latency, per_byte, fitted = 0.0, st / ss, False
    if det > 1e-9 * cc * ss:  # counts and bytes not in one proportion: the latency can be told apart
        candidate, slope = (ct * ss - st * cs) / det, (cc * st - cs * ct) / det
        if candidate >= 0 and slope > 0:
            latency, per_byte, fitted = candidate, slope, True
    predicted = [c * latency + s * per_byte for c, s in zip(counts, sent)]
    spread = max(abs(p - t) / t for p, t in zip(predicted, seconds)) if all(seconds) else float("inf")
    return LinkFit(gb_per_s=1 / per_byte / 1e9, latency_s=latency, latency_fitted=fitted, points=len(counts),
                   spread_pct=100 * spread)


def share_fit(hidden: list[float], in_flight: list[float]) -> Fit:
    share = sum(hidden) / sum(in_flight)
    spread = max(abs(h / f - share) for h, f in zip(hidden, in_flight) if f > 0)
    return Fit(value=share, points=len(hidden), spread_pct=100 * spread)


def mean_fit(values: list[float]) -> Fit:
    mean = sum(values) / len(values)
    spread = max(abs(v - mean) for v in values) / mean if mean > 0 else 0.0
    return Fit(value=mean, points=len(values), spread_pct=100 * spread)


def _scopes(record: rf.RankFile, ranks_per_node: int) -> dict[str, str]:
    """Each group's link, as ``hpml_core.contract.step_time`` decides it."""
    layout = Layout(record.world_size, record.tp_size)
    across = layout.world_size > ranks_per_node
    return {"dp": "inter-node" if across and layout.dp_size > 1 else "intra-node", "tp": "intra-node",
            "world": "inter-node" if across else "intra-node"}


def fit(ranks: list[RankSteps], site_name: str, experiments: list[str], device_type: str, device_name: str,
        today: str) -> Calibration:
    """The calibration the ranks' profiled steps give (see the module's doc)."""
    compute: dict[tuple[str, str], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    optimizer: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    overhead: dict[tuple[str, str], list[float]] = defaultdict(list)
    links: dict[tuple[str, str], tuple[list[int], list[float], list[float]]] = defaultdict(lambda: ([], [], []))
    hidden: dict[tuple[str, str], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for rank in ranks:
        record = rank.record
        config, layout = record.config, Layout(record.world_size, record.tp_size)
        dims = model_dims(config.model, record.model.vocab_size)
        key = rate_key(config.mode, record.precision, device_type, rank.ranks_per_node, config.compile)
        flops = compute_flops(config, dims, layout)
        if config.compile:  # the recomputation runs inside the compiled backward: timed there
            flops = {"forward": flops["forward"], "backward": flops["backward"] + flops["recompute"], "recompute": 0.0}
        moved, _ = optimizer_bytes(config, dims, layout)
        scope = _scopes(record, rank.ranks_per_node)
        per_step = collectives.per_step(config, dims, layout, config.backend_on(record.device_type))
        group_size = {"dp": layout.dp_size, "tp": layout.tp_size, "world": layout.world_size}
        # the profiler slows (or, timing less, speeds) the window: its parts at the timed steps' pace
        pace = 1 / (1 + record.profile.overhead) if record.profile.overhead is not None else 1.0
        for profiled in record.profile.steps:
            step = profiled.model_copy(update={
                "parts_s": {part: pace * t for part, t in profiled.parts_s.items()},
                "collectives": [use.model_copy(update={"in_flight_s": pace * use.in_flight_s})
                                for use in profiled.collectives]})
            for part in COMPUTE_FITTED:
                if flops[part] > 0 and step.parts_s[part] > 0:
                    compute[key, part][0].append(flops[part] / 1e12)
                    compute[key, part][1].append(step.parts_s[part])
            if step.parts_s["optimizer"] > 0:
                optimizer[key][0].append(moved / 1e9)
                optimizer[key][1].append(step.parts_s["optimizer"])
            for part in OVERHEAD_PARTS:
                overhead[key, part].append(step.parts_s[part])
            for use in step.collectives:
                if use.in_flight_s <= 0:
                    continue
                hidden[config.mode, use.kind][0].append(max(0.0, use.in_flight_s - step.parts_s[use.kind]))
                hidden[config.mode, use.kind][1].append(use.in_flight_s)
                of_kind = [c for c in per_step if c.kind == use.kind]
                scopes = {scope[c.group] for c in of_kind}
                sent = sum(ring_share(c.kind, group_size[c.group]) * c.bytes for c in of_kind)
                if len(scopes) == 1 and sent > 0:  # one link carried them all
                    points = links[scopes.pop(), use.kind]
                    points[0].append(use.count)
                    points[1].append(sent)
                    points[2].append(use.in_flight_s)
    nested: dict = {"compute_tflops": defaultdict(dict), "overhead_s": defaultdict(dict), "links": defaultdict(dict),
                    "hidden_share": defaultdict(dict)}
    for (key, part), (amounts, seconds) in compute.items():
        nested["compute_tflops"][key][part] = rate_through_origin(amounts, seconds)
    for (key, part), values in overhead.items():
        nested["overhead_s"][key][part] = mean_fit(values)
    for (scope, kind), (counts, sent, seconds) in links.items():
        nested["links"][scope][kind] = link_fit(counts, sent, seconds)
    for (mode, kind), (hid, flying) in hidden.items():
        nested["hidden_share"][mode][kind] = share_fit(hid, flying)
    return Calibration(
        site=site_name, device_type=device_type, device_name=device_name, made_on=today, experiments=experiments,
        runs=sorted({rank.run for rank in ranks}),
        optimizer_gb_per_s={key: rate_through_origin(a, s) for key, (a, s) in optimizer.items()},
        **{name: dict(value) for name, value in nested.items()})


def write(calibration: Calibration, path: Path) -> None:
    text = ("# hpml calibrate: the step-time model's rates, fitted from finished runs "
            "(hpml_core/contract/calibration.py)\n" + yaml.safe_dump(calibration.model_dump(), sort_keys=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(text.encode()))


def _figure(fit_: Fit, unit: str) -> str:
    return f"{fit_.value:.4g} {unit} ({fit_.points} points, ±{fit_.spread_pct:.0f}%)"


def table(calibration: Calibration) -> Table:
    rates = Table(title=f"site {calibration.site} on {calibration.device_name}: {calibration.describe()}")
    for column in ("rate", "for", "fitted"):
        rates.add_column(column)
    for key, parts in calibration.compute_tflops.items():
        for part, fit_ in parts.items():
            rates.add_row(f"compute, {part}", key, _figure(fit_, "TFLOP/s per rank"))
    for key, fit_ in calibration.optimizer_gb_per_s.items():
        rates.add_row("optimizer", key, _figure(fit_, "GB/s"))
    for key, parts in calibration.overhead_s.items():
        for part, fit_ in parts.items():
            rates.add_row(part, key, f"{fit_.value * 1e3:.3g} ms per step ({fit_.points} points)")
    for scope, kinds in calibration.links.items():
        for kind, link in kinds.items():
            latency = f"{link.latency_s * 1e6:.3g} µs" if link.latency_fitted else "latency not determined (0)"
            rates.add_row(kind, scope, f"{link.gb_per_s:.4g} GB/s, {latency} ({link.points} points, "
                                       f"±{link.spread_pct:.0f}%)")
    for mode, kinds in calibration.hidden_share.items():
        for kind, fit_ in kinds.items():
            rates.add_row(f"{kind} hidden", mode, f"{fit_.value:.0%} of its time in flight ({fit_.points} points)")
    return rates


def calibrate(names: Iterable[str], profile: site.Site) -> tuple[Calibration, Path]:
    studies = [experiment.load(experiment.experiment_path(name), gpu=profile.gpu_memory()) for name in names]
    ranks = [rank for exp in studies for rank in completed_ranks(exp, profile)]
    if not ranks:
        raise UsageError("EXPERIMENT", f"no completed run with a profiled window under "
                         f"{profile.experiment_folder('')} for {', '.join(exp.name for exp in studies)} "
                         "(run hpml submit first; runs with --profile-steps 0 measure no parts)")
    device_type, device_name = check_device(ranks, profile)
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    calibration = fit(ranks, profile.name, [exp.name for exp in studies], device_type, device_name, today)
    path = site.calibration_path(profile.name)
    write(calibration, path)
    return calibration, path


def main(argv: list[str] | None = None) -> int:
    parser = cli.command_parser("calibrate", __doc__)
    parser.add_argument("experiments", nargs="+", metavar="EXPERIMENT",
                        help="experiment files or names in jobs/experiments/ whose runs have finished")
    cli.add_site(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        calibration, path = calibrate(args.experiments, cli.load_site(args))
        Console(width=160).print(table(calibration))
        print(f"wrote {path}")
        return 0

    return cli.run("calibrate", body)


if __name__ == "__main__":
    sys.exit(main())
