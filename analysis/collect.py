"""Read what an experiment left on disk and assemble each run's record from all its attempts.

Sources, per run folder: the rank files of every attempt (``<run>/attempts/<n>/rank-<k>.json``,
``hpml_core.contract.attempts``; each validated against the schema of ``hpml_core.contract.rank_file``)
and the run's state and why, decided by ``jobs.observe`` exactly as for ``hpml status``: Slurm
is asked once, with the same timeouts, and when it does not answer the states are as last
recorded, which the report's notes then say (as they say which part did not answer, when its
accounting or its controller alone is unreachable). The decisions are used, never recorded:
the report writes nothing but its own folder, so it can run on a results folder it may only
read.

A run's record holds each attempt (its number, its rank files, its Slurm job and nodes); the
loss curve from step 0 to the end, rank 0's losses of each attempt placed at their steps (of an
attempt killed before rank 0 wrote its file, the losses it wrote with its last checkpoint,
``<run>/attempts/<n>/losses.json``), a later attempt winning where two overlap (a resumed
attempt repeats the steps after its checkpoint) and gaps left as gaps; the step times of every
attempt, each labelled with it; and the attempt whose step times give the run's throughput: the
last one that has them (an attempt resumed with only warm-up steps left has none, and its rank
files say why); and the Slurm jobs that ran it (each attempt's, and the one the ledger records,
which may have died before any rank wrote a file), with the elapsed time ``sacct`` gives each,
for the hours the run spent.

Nothing is dropped: a run with no rank files, a missing rank or an unreadable file keeps its
row, with its state and why, and every unreadable or schema-invalid file is listed by path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from hpml_core.contract import attempts as attempt_files
from hpml_core.contract import rank_file
from hpml_core.contract.rank_file import Loss, RankFile
from hpml_core.contract.run_states import COMPLETED
from jobs import observe, slurm_query

REPEAT_SUFFIX = re.compile(r"-r\d+$")
ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str


@dataclass
class Attempt:
    number: int
    ranks: dict[int, RankFile]  # its valid rank files, by rank
    checkpointed_losses: Loss | None = None  # its losses.json: its losses up to its last checkpoint

    def _slurm(self, field_name: str) -> str | None:
        values = [getattr(f.slurm, field_name) for f in self.ranks.values() if f.slurm is not None]
        return next((value for value in values if value), None)

    @property
    def job_id(self) -> str | None:
        """The Slurm job as sacct names it (an array task's as ``<array>_<task>``)."""
        return self._slurm("job")

    @property
    def node_list(self) -> str | None:
        return self._slurm("node_list")

    def measured(self, world_size: int) -> bool:
        """Whether every rank left step times: the figures of the run can come from this attempt."""
        return sorted(self.ranks) == list(range(world_size)) and all(
            f.throughput is not None for f in self.ranks.values())


@dataclass
class RunResult:
    name: str
    configuration: str  # the name without its repeat suffix: repeats of one configuration share it
    status: str  # a state of hpml_core.contract.run_states
    reason: str | None
    world_size: int
    attempts: list[Attempt] = field(default_factory=list)  # oldest first
    slurm_elapsed_s: dict[str, float] = field(default_factory=dict)  # job id -> Slurm's elapsed, jobs it knows

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED

    @property
    def ranks(self) -> dict[int, RankFile]:
        """The rank files of the latest attempt that left any."""
        return next((a.ranks for a in reversed(self.attempts) if a.ranks), {})

    @property
    def measured(self) -> Attempt | None:
        """The attempt the run's throughput, MFU and memory come from: the last with step times."""
        return next((a for a in reversed(self.attempts) if a.measured(self.world_size)), None)

    def loss_curve(self) -> list[tuple[int, float, int]]:
        """(step, loss, attempt) from step 0 on: rank 0's losses (the mean over data-parallel
        ranks) of each attempt at their steps, or, for an attempt killed before rank 0 wrote its
        file, those it wrote with its last checkpoint; where attempts overlap, the later one's."""
        by_step: dict[int, tuple[float, int]] = {}
        for attempt in self.attempts:
            loss = attempt.ranks[0].loss if 0 in attempt.ranks else attempt.checkpointed_losses
            if loss is not None:
                for offset, value in enumerate(loss.values):
                    by_step[loss.start_step + offset] = (value, attempt.number)
        return [(step, *by_step[step]) for step in sorted(by_step)]

    def step_times(self) -> list[tuple[int, int, int, float]]:
        """(attempt, rank, step, seconds) of every timed step of every attempt: an attempt's
        timed steps are its last ones (its first ``warmup_steps`` are not timed)."""
        found = []
        for attempt in self.attempts:
            for rank, record in sorted(attempt.ranks.items()):
                if record.throughput is None:
                    continue
                times = record.throughput.step_times_s
                first = record.loss.start_step + len(record.loss.values) - len(times)
                found += [(attempt.number, rank, first + index, seconds) for index, seconds in enumerate(times)]
        return found


def configuration_of(run_name: str, repeated: bool) -> str:
    return REPEAT_SUFFIX.sub("", run_name) if repeated else run_name


def _read_attempt(run_dir: Path, number: int, problems: list[Problem], read: dict[Path, RankFile | None]) -> Attempt:
    """The attempt's valid rank files, each file read going into ``read`` (None: not valid),
    and its checkpointed losses when rank 0 left no file (otherwise its file has them all)."""
    ranks = {}
    for rank, path in attempt_files.rank_files(run_dir, number).items():
        read[path] = record = _valid(path, RankFile, "rank-file", problems)
        if record is not None:
            ranks[rank] = record
    losses = attempt_files.losses_path(run_dir, number)
    checkpointed = _valid(losses, Loss, "loss-file", problems) if 0 not in ranks and losses.exists() else None
    return Attempt(number, ranks, checkpointed)


def _valid(path: Path, schema: type[ModelT], name: str, problems: list[Problem]) -> ModelT | None:
    """``path`` read as ``schema``, or None with the reason in ``problems``."""
    try:
        return schema.model_validate_json(path.read_bytes())
    except OSError as exc:
        problems.append(Problem(str(path), f"unreadable: {exc.strerror}"))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "file"
        kind = "not JSON" if first["type"] == "json_invalid" else f"{where}: {first['msg']}"
        problems.append(Problem(str(path), f"does not match the {name} schema ({kind})"))
    return None


def collect(folder: Path, runs: Mapping[str, int], repeated: bool) -> tuple[list[RunResult], list[Problem], str | None]:
    """Every run of the experiment in ``folder`` (``runs``: run name -> world size), the files
    that could not be read, and a note when Slurm did not answer (states as last recorded)."""
    problems: list[Problem] = []
    read: dict[Path, RankFile | None] = {}
    attempts = {name: [_read_attempt(folder / name, number, problems, read)
                       for number in attempt_files.attempt_numbers(folder / name)] for name in runs}

    def already_read(path: Path) -> RankFile:  # the state is decided on the files read above
        if path not in read:
            return rank_file.read(path)  # written since
        if read[path] is None:
            raise ValueError(f"{path}: not a valid rank file")
        return read[path]

    # Slurm asked once, for the ledger's jobs (the states) and the attempts' (the hours), so that
    # a part of it that does not answer costs its timeout once.
    attempt_jobs = {attempt.job_id for tried in attempts.values() for attempt in tried if attempt.job_id}
    asked: dict[str, Mapping[str, slurm_query.JobInfo]] = {}

    def query(job_ids: list[str]) -> Mapping[str, slurm_query.JobInfo]:
        asked["answer"] = {}  # asked, whether it answers or not
        asked["answer"] = slurm_query.query(sorted(set(job_ids) | attempt_jobs))
        return asked["answer"]

    states, note = observe.current(runs, folder, already_read, record=False, query=query)
    jobs = {name: _job_ids(attempts[name], states[name].entry) for name in runs}
    elapsed = (_elapsed(asked["answer"]) if asked
               else _slurm_elapsed(sorted({job for ids in jobs.values() for job in ids})))
    results = [RunResult(name, configuration_of(name, repeated), states[name].state, states[name].reason or None,
                         world, attempts[name], {job: elapsed[job] for job in jobs[name] if job in elapsed})
               for name, world in runs.items()]
    return results, problems, note


def _job_ids(attempts: list[Attempt], entry: dict) -> list[str]:
    """The Slurm jobs a run had: each attempt's, and the ledger's latest submission."""
    ids = [attempt.job_id for attempt in attempts if attempt.job_id]
    if entry.get("backend") == "slurm" and entry.get("job_id"):
        ids.append(str(entry["job_id"]))
    return list(dict.fromkeys(ids))


def _slurm_elapsed(job_ids: list[str]) -> dict[str, float]:
    """Slurm's elapsed time of each job it knows; none when it does not answer (the hours then
    come from the rank files' wall time, and the report's notes name that source)."""
    if not job_ids:
        return {}
    try:
        return _elapsed(slurm_query.query(job_ids))
    except slurm_query.SlurmError:
        return {}


def _elapsed(infos: Mapping[str, slurm_query.JobInfo]) -> dict[str, float]:
    return {job: info.elapsed_s for job, info in infos.items() if info.elapsed_s is not None}
