"""Experiment files: a study as a matrix of training runs, expanded and validated once, here.

An experiment file (YAML) names the study, the prepared dataset it trains on, shared
``defaults``, and the runs: explicit ``runs`` entries, each crossed with the cartesian product
of ``grid`` and with the paired values of ``zip``, all repeated ``repeats`` times. A run entry
holds training flags (the fields of ``hpml_core.contract.config.TrainConfig``: ``mode``,
``tp_size``, ``batch_size``...) and job fields: ``name``, ``nodes``, ``gpus`` (processes per
node: one per GPU, or CPU processes on a machine without one) and ``time_limit``.

Every expanded run goes through ``hpml_core.contract.checks.resolve``, the function the engine
calls at launch, for its nodes × GPUs, so a study that plans cleanly launches cleanly and a
refusal reads the same in both places. When the dataset is prepared under the ``data_root``
given to ``load``, the runs are checked against its real vocabulary and size; otherwise
GPT-2's vocabulary is assumed and the size is not checked, and ``Experiment.data`` is None so
that ``hpml plan`` can say so. An error names the run and the field; nothing downstream sees an
invalid run.

``batch_size: max`` lets the planner choose: the largest batch per GPU the memory model predicts
to fit the site's GPU (``hpml_core.contract.fit.largest_batch``, every other setting as written), so
``load`` needs that GPU (``gpu``) for such a run; the run records the batch chosen and that it
was chosen (``Run.batch_chosen``).
"""

from __future__ import annotations

import argparse
import itertools
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpml_core.contract import fit
from hpml_core.contract.checks import Resolved, resolve
from hpml_core.contract.config import TrainConfig, field_of, first_error
from hpml_core.contract.data_meta import DataMeta
from hpml_core.contract.errors import UsageError
from hpml_core.contract.gpus import GpuMemory
from hpml_core.contract.names import SAFE_NAME

EXPERIMENTS = Path(__file__).parent / "experiments"
TIME_LIMIT = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")
JOB_FIELDS = {"name", "nodes", "gpus", "time_limit"}
# Set per run by the jobs layer, never by an experiment file.
MANAGED_FIELDS = {"data", "out", "run_id", "checkpoint_dir", "resume", "test"}
TRAIN_FIELDS = set(TrainConfig.model_fields) - MANAGED_FIELDS


class ExperimentError(UsageError):
    """A bad experiment file: names the run (when there is one) and the field."""

    def __init__(self, where: str, field: str, message: str):
        super().__init__(f"{where}: {field}", message)


def experiment_path(name_or_path: str) -> Path:
    """An experiment by file path, or by name from jobs/experiments/."""
    path = Path(name_or_path)
    return path if path.suffix in (".yaml", ".yml") else EXPERIMENTS / f"{name_or_path}.yaml"


class ExperimentFile(BaseModel):
    """The YAML as written."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    dataset: str = Field(description="prepared data folder under the site's data_root")
    defaults: dict[str, Any] = {}
    runs: list[dict[str, Any]] = [{}]
    grid: dict[str, list[Any]] = {}
    zip: dict[str, list[Any]] = {}
    repeats: int = Field(1, ge=1)


class Run(BaseModel):
    """One expanded, validated run."""

    model_config = ConfigDict(frozen=True)

    name: str
    nodes: int
    gpus: int
    time_limit: str
    repeat: int
    train: dict[str, Any]  # the TrainConfig fields the experiment sets, validated (modes as ddp/zero3)
    dp_size: int
    tp_size: int
    global_batch: int
    steps: int | None  # None: one epoch of data whose size was not checked
    batch_chosen: bool = False  # batch_size: max, the largest batch predicted to fit the site's GPU

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus

    def setting(self, field: str) -> Any:
        """A training field of the run: as the experiment set it, else TrainConfig's default."""
        return self.train.get(field, TrainConfig.model_fields[field].default)

    @property
    def mode(self) -> str:
        return self.setting("mode")


class Experiment(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    dataset: str
    path: Path
    runs: list[Run]
    data_folder: Path | None = Field(description="where the prepared data was looked for; None: nowhere")
    data: DataMeta | None = Field(description="the prepared data the runs were checked against; None: not "
                                              "prepared there, GPT-2's vocabulary assumed and the size unchecked")

    @property
    def world_sizes(self) -> dict[str, int]:
        """Each run's processes, by run name: all ``jobs.observe`` needs to judge its rank files."""
        return {run.name: run.world_size for run in self.runs}

    def resolved(self, run: Run) -> Resolved:
        """The run as the engine will train it (every field with its default, the model's
        dimensions for the data's vocabulary, the layout): what a memory prediction needs.
        Resolved again from the run's validated fields, which cannot fail."""
        config = TrainConfig(**run.train, data=self.data_folder or Path(self.dataset))
        return resolve(config, run.world_size, run.gpus, self.data)


def _label(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _expand(spec: ExperimentFile) -> list[tuple[str, int, dict[str, Any]]]:
    """(name, repeat, fields) of every run, before validation."""
    zipped = list(spec.zip.values())
    if zipped and len({len(v) for v in zipped}) != 1:
        raise ExperimentError(f"experiment {spec.name!r}", "zip", "all lists must have the same length")
    zip_rows = [dict(zip(spec.zip, row)) for row in zip(*zipped)] if zipped else [{}]
    grid_rows = [dict(zip(spec.grid, row)) for row in itertools.product(*spec.grid.values())]
    expanded = []
    for index, base in enumerate(spec.runs):
        base_name = base.get("name", spec.name if len(spec.runs) == 1 else f"run{index}")
        for grid_row, zip_row in itertools.product(grid_rows, zip_rows):
            varied = {**grid_row, **zip_row}
            name = "-".join([str(base_name), *(f"{k.replace('_', '-')}-{_label(v)}" for k, v in varied.items())])
            fields = {**spec.defaults, **{k: v for k, v in base.items() if k != "name"}, **varied}
            for repeat in range(spec.repeats):
                expanded.append((name if spec.repeats == 1 else f"{name}-r{repeat}", repeat, fields))
    return expanded


def _largest_batch(train: dict[str, Any], nodes: int, gpus: int, data_folder: Path, data: DataMeta | None,
                   gpu: GpuMemory | None) -> int:
    """The batch ``batch_size: max`` stands for, or a ``UsageError`` naming the field."""
    if gpu is None or gpu.total_bytes is None:
        why = gpu.missing_reason if gpu is not None else "no site given"
        raise UsageError("--batch-size", f"max needs the site's GPU to fit the batch to ({why})")
    resolved = resolve(TrainConfig(**{**train, "batch_size": 1}, data=data_folder), nodes * gpus, gpus, data)
    largest = fit.largest_batch(resolved.config, resolved.dims, resolved.layout, gpu)
    if largest is None:
        raise UsageError("--batch-size", f"max: not even a batch of 1 is predicted to fit the "
                                         f"{gpu.total_gib:.1f} GiB of {gpu.label}")
    return largest


def _validate(name: str, repeat: int, fields: dict[str, Any], data_folder: Path, data: DataMeta | None,
              gpu: GpuMemory | None = None) -> Run:
    where = f"run {name!r}"
    if not SAFE_NAME.match(name):
        raise ExperimentError(where, "name", "use letters, digits, '.', '_' and '-' (at most 100, not starting with '.' or '-')")
    unknown = set(fields) - TRAIN_FIELDS - JOB_FIELDS
    if unknown:
        field = sorted(unknown)[0]
        hint = "set by hpml for each run" if field in MANAGED_FIELDS else f"allowed: {', '.join(sorted(TRAIN_FIELDS | JOB_FIELDS))}"
        raise ExperimentError(where, field, f"not a run field ({hint})")
    nodes, gpus, time_limit = fields.get("nodes", 1), fields.get("gpus", 1), str(fields.get("time_limit", "01:00:00"))
    for field, value in (("nodes", nodes), ("gpus", gpus)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ExperimentError(where, field, f"must be a whole number >= 1 (got {value!r})")
    if not TIME_LIMIT.match(time_limit):
        raise ExperimentError(where, "time_limit", f"must be [D-]HH:MM:SS (got {time_limit!r})")
    train = {k: v for k, v in fields.items() if k in TRAIN_FIELDS}
    chosen = train.get("batch_size") == "max"
    try:
        if chosen:
            train["batch_size"] = _largest_batch(train, nodes, gpus, data_folder, data, gpu)
        config = TrainConfig(**train, data=data_folder)
        resolved = resolve(config, nodes * gpus, gpus, data)
    except ValidationError as exc:
        raise ExperimentError(where, *first_error(exc)) from None
    except UsageError as exc:  # the engine's words, after its flag
        raise ExperimentError(where, field_of(exc.field), str(exc).removeprefix(f"{exc.field}: ")) from None
    return Run(name=name, nodes=nodes, gpus=gpus, time_limit=time_limit, repeat=repeat,
               train=config.model_dump(mode="json", include=set(train)), dp_size=resolved.layout.dp_size,
               tp_size=resolved.layout.tp_size, global_batch=resolved.global_batch, steps=resolved.total_steps,
               batch_chosen=chosen)


def _read_data(path: Path, folder: Path | None) -> DataMeta | None:
    """The prepared data in ``folder``, or None when it holds none (not prepared yet, or not here)."""
    if folder is None or not DataMeta.exists(folder):
        return None
    try:
        return DataMeta.read(folder)
    except UsageError as exc:
        raise ExperimentError(f"experiment {path.name}", "dataset", str(exc).removeprefix(f"{exc.field}: ")) from None


def add_repeats(parser: argparse.ArgumentParser) -> None:
    """``--repeats N``, which every command that reads an experiment takes (``load`` checks it), so
    that ``make demo REPEATS=3`` and ``make report REPEATS=3`` mean the same runs."""
    parser.add_argument("--repeats", type=int, metavar="N",
                        help="each configuration N times instead of the experiment file's repeats (runs -r0 to "
                             "-r<N-1>; the runs already made are kept)")


def load(path: Path, data_root: Path | None = None, gpu: GpuMemory | None = None,
         repeats: int | None = None) -> Experiment:
    """The experiment in ``path``, every run validated; against the prepared data in
    ``data_root / dataset`` when it is there (``Experiment.data`` says whether it was), and
    ``batch_size: max`` fitted to ``gpu``, the site's. ``repeats`` (``--repeats``) stands in for
    the file's: more repeats add runs ``-r<n>`` beside the ones already run, fewer leave them out."""
    if not path.is_file():
        raise ExperimentError("experiment", str(path), "no such file")
    try:
        raw = yaml.safe_load(path.read_text())
        spec = ExperimentFile.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ExperimentError("experiment", str(path), f"not valid YAML ({str(exc).splitlines()[0]})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "file"
        raise ExperimentError(f"experiment {path.name}", field, first["msg"]) from None
    if repeats is not None:
        if repeats < 1:
            raise UsageError("--repeats", f"{repeats}: must be a whole number from 1")
        spec = spec.model_copy(update={"repeats": repeats})
    if not SAFE_NAME.match(spec.name):
        raise ExperimentError(f"experiment {path.name}", "name", "use letters, digits, '.', '_' and '-'")
    if not SAFE_NAME.match(spec.dataset):
        raise ExperimentError(f"experiment {path.name}", "dataset", "a folder name under the site's data_root")
    data_folder = data_root / spec.dataset if data_root is not None else None
    data = _read_data(path, data_folder)
    runs = [_validate(name, repeat, fields, data_folder or Path(spec.dataset), data, gpu)
            for name, repeat, fields in _expand(spec)]
    seen: set[str] = set()
    for run in runs:
        if run.name in seen:
            raise ExperimentError(f"run {run.name!r}", "name", "appears twice; give each runs entry its own name")
        seen.add(run.name)
    return Experiment(name=spec.name, description=spec.description, dataset=spec.dataset, path=path, runs=runs,
                      data_folder=data_folder, data=data)
