"""Whether a study's checkpoints fit the results disk, said before a job finds out: ``hpml plan``
prints it and ``hpml doctor --experiment`` checks it.

Each run that checkpoints (``checkpoint_every``) keeps its newest ``keep_checkpoints`` (the
experiment's, else the site's), each of the size ``hpml_core.contract.checkpoint_size`` predicts
from the model state; they stay after the run completes, so a study needs them all at once. A
run without ``checkpoint_every`` saves one only when a signal stops it (its time limit near). Rank
files and traces (one each per rank and attempt) are counted at the mean size of those the
study's attempts have already written, one attempt per run; before any, they are left out and
said so (under 1 MB per run on the demo, docs/time-parts.md: nothing next to a checkpoint). Free
space is asked of the results folder where it exists on this machine;
planned elsewhere (a laptop, for a cluster's scratch), it is unknown and said so."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from hpml_core.contract.checkpoint_size import checkpoint_bytes
from hpml_core.contract.units import size_words
from jobs.experiment import Experiment
from jobs.site import Site, expand_path


@dataclass(frozen=True)
class DiskNeed:
    needed: int  # bytes of every checkpoint the study's runs may keep at once, and their rank files and traces
    per_rank: float | None  # a rank file and a trace, as the study's attempts measured them (None: none yet)
    keeping: int  # runs that checkpoint (checkpoint_every), each keeping its newest few
    stop_only: int  # runs that save one only when a signal stops them
    largest: int  # bytes of the largest single checkpoint
    folder: Path
    free: int | None
    free_missing_reason: str | None

    @property
    def fits(self) -> bool | None:
        return None if self.free is None else self.needed <= self.free

    def line(self) -> str:
        files = (f"rank files and traces {size_words(round(self.per_rank))} per rank, as measured"
                 if self.per_rank is not None else "rank files and traces not counted: none written yet")
        need = (f"checkpoints need up to {size_words(self.needed)} (runs keeping their newest: {self.keeping}, "
                f"saving one if a signal stops them: {self.stop_only}; largest {size_words(self.largest)}, "
                f"predicted from the model state; {files})")
        if self.free is None:
            return f"disk: {need}; free space unknown: {self.free_missing_reason}"
        if self.fits:
            return f"disk: {need}; {size_words(self.free)} free in {self.folder}"
        return (f"disk: NOT ENOUGH: {need}, {size_words(self.free)} free in {self.folder}: keep fewer "
                "(keep_checkpoints: 1), checkpoint fewer runs, or free space before submitting")


def disk_need(exp: Experiment, site: Site) -> DiskNeed:
    sizes: dict[tuple, int] = {}
    needed = keeping = largest = 0
    for run in exp.runs:
        resolved = exp.resolved(run)
        key = (resolved.config, resolved.dims, resolved.layout)  # repeats share it
        if key not in sizes:
            sizes[key] = checkpoint_bytes(resolved.config, resolved.dims, resolved.layout)
        largest = max(largest, sizes[key])
        kept = run.train.get("keep_checkpoints", site.keep_checkpoints) if resolved.config.checkpoint_every else 1
        needed += kept * sizes[key]
        keeping += bool(resolved.config.checkpoint_every)
    per_rank = _measured_per_rank(site.experiment_folder(exp.name))
    if per_rank is not None:
        needed += round(per_rank * sum(run.world_size for run in exp.runs))
    root = Path(expand_path(site.project_dir)) / expand_path(site.results_root)
    free, reason = None, None
    if root.is_dir():
        try:
            free = shutil.disk_usage(root).free
        except OSError as exc:
            reason = f"cannot ask {root}: {exc.strerror or exc}"
    else:
        reason = f"{root} does not exist on this machine"
    return DiskNeed(needed, per_rank, keeping, len(exp.runs) - keeping, largest, root, free, reason)


def _measured_per_rank(folder: Path) -> float | None:
    """Mean bytes of a rank file plus a trace among the study's attempts (a rank without a trace
    counted with none); None before any rank file exists."""
    ranks = list(folder.glob("*/attempts/*/rank-*.json"))
    if not ranks:
        return None
    traces = list(folder.glob("*/attempts/*/trace-rank-*.json.gz"))
    return sum(path.stat().st_size for path in [*ranks, *traces]) / len(ranks)
