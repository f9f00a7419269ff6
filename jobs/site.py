"""Site profiles: where and how a cluster runs jobs (account, partition, GPU request style,
container, paths, environment), one YAML file per site in ``jobs/sites/``.

Values are validated here, once: the ones that land in ``#SBATCH`` lines (which sbatch reads
itself, without a shell) must match a plain pattern, and paths may use ``$USER``, ``$HOME``
and ``$SCRATCH``, expanded when the script is rendered. Everything else that reaches shell
text is quoted by the template's ``shquote`` filter, so no value can run a command.

A site also says which GPU its jobs get, so that ``hpml plan`` and ``hpml submit`` can judge
what fits (``gpu_memory``). ``gpu_type`` is Slurm's gres name for it, chosen by the cluster's
admins ("a100" in ``--gres=gpu:a100:4``), which need not say which part (A100 40 GB or 80 GB):
``gpu_model`` names it by a key of the table of known GPUs (``hpml_core.contract.gpus``), and
``gpu_memory_gib`` overrides that row's memory (or gives the memory of a GPU not in the table).
Without either, a ``gpu_type`` that is itself a key of the table names the GPU; any other site
has no GPU to judge against, and says why.

Profiles are found by name in ``$HPML_SITES`` (a folder; default ``~/.config/hpml/sites``), where
a user keeps their own (their account, a copy of a shipped profile for another GPU), then among
the shipped ones in ``jobs/sites/``: a user's profile of the same name shadows the shipped one.
``--set KEY=VALUE`` on a command changes one field for that command (dotted keys reach into
``container``; the value is read as YAML, so ``'sbatch_extra=["--constraint=a100_80"]'`` is a
list), and is validated exactly as the profile's own value, an error naming ``--set`` and the key.

A site may add ``#SBATCH`` options hpml does not set itself (``sbatch_extra``: a constraint, a
reservation), each a plain ``--name`` or ``--name=value``; say that its runs may take whole nodes
(``exclusive``: every script then asks for ``--exclusive``, for timings no other job shares);
and cap how many tasks of each job array run at once (``max_concurrent``: ``hpml submit`` sends
the runs of one resource shape as one array, ``jobs.render``). ``keep_checkpoints`` (2) is how many
checkpoints each run keeps where its experiment does not say: on a small scratch quota, 1.

A site also states how fast its hardware runs, for the plan's predicted step time
(``hpml_core.contract.step_time``): ``compute_efficiency`` (the MFU assumed: 0.40 by default,
between the 0.38 and 0.50 hpml measured for GPT-2 Large on one H200), ``intra_node_gb_per_s``
and ``inter_node_gb_per_s`` (bus bandwidths as nccl-tests' all_reduce_perf reports them; the
defaults, 100 and 10 GB/s, are round assumptions, not measurements: set your cluster's), and
``device_tflops`` and ``device_memory_gb_per_s`` for processes without a GPU peak and memory
bandwidth on record (the local site's CPUs). Those are assumptions; once runs have finished,
``hpml calibrate`` measures them (``calibration_path``), and every prediction uses a measured rate
where there is one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hpml_core.contract import gpus
from hpml_core.contract.errors import UsageError
from hpml_core.contract.gpus import GpuMemory
from hpml_core.contract.calibration import Calibration
from hpml_core.contract.step_time import Performance
from hpml_core.contract.names import SAFE_NAME
from hpml_core.contract.units import GIB, MIB
from jobs.experiment import ExperimentError

SITES = Path(__file__).parent / "sites"
SBATCH_VALUE = re.compile(r"^[A-Za-z0-9._:+-]+$")  # partition, account, gpu type, memory
PATH_VALUE = re.compile(r"^[A-Za-z0-9._/+${}-]+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SBATCH_OPTION = re.compile(r"^--(?P<name>[a-z][a-z0-9-]*)(=[A-Za-z0-9._:,+/@%=-]+)?$")
# Options the job script sets from the profile or the experiment: a second one would override it.
MANAGED_SBATCH_OPTIONS = {"job-name", "account", "partition", "qos", "nodes", "ntasks-per-node", "cpus-per-task",
                          "gres", "gpus-per-node", "mem-per-gpu", "time", "output", "error", "open-mode", "signal",
                          "requeue", "no-requeue", "array", "dependency", "chdir", "wrap", "exclusive"}
OVERRIDE_KEY = re.compile(r"^[a-z_]+(\.[a-z_]+)*$")
PATH_VARIABLES = ("USER", "HOME", "SCRATCH")


def expand_path(value: str) -> str:
    """Expand $USER, $HOME and $SCRATCH (only those), as the login node that renders sees them."""
    for name in PATH_VARIABLES:
        if f"${name}" in value or f"${{{name}}}" in value:
            if name not in os.environ:
                raise ExperimentError("site", "path", f"{value!r} uses ${name}, which is not set here")
            value = value.replace(f"${{{name}}}", os.environ[name]).replace(f"${name}", os.environ[name])
    if "$" in value:
        raise ExperimentError("site", "path", f"{value!r}: only $USER, $HOME and $SCRATCH may be used")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Container(_Strict):
    kind: Literal["none", "singularity", "apptainer"] = "none"
    image: str | None = None
    overlay: str | None = None  # singularity/apptainer --overlay, mounted read-only
    activate: str | None = None  # a script sourced inside the container before Python runs

    @field_validator("image", "overlay", "activate")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not PATH_VALUE.match(value):
            raise ValueError(f"{value!r} must be a plain path (letters, digits, . _ / + - and $VARIABLES)")
        return value


class Site(_Strict):
    name: str
    scheduler: Literal["slurm", "local"]
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    gpu_request: Literal["gres", "gpus-per-node"] = "gres"
    gpu_type: str | None = None  # Slurm's gres name for the GPU, as in --gres=gpu:<gpu_type>:<n>
    gpu_model: str | None = None  # which GPU that is: a key of hpml_core.contract.gpus.GPUS
    gpu_memory_gib: float | None = Field(None, gt=0)  # its memory as torch reports it, if not the table's
    cpus_per_gpu: int = 4
    mem_per_gpu: str | None = None
    modules: list[str] = []
    container: Container = Container()
    python: str = "python"  # the interpreter that runs the engine (inside the container, if any)
    project_dir: str
    results_root: str
    data_root: str
    env: dict[str, str] = {}
    # How long sbatch may take to answer: a controller under load can be slow, but hpml submit
    # must not hang on one that never answers.
    submit_timeout_s: int = Field(60, ge=1)
    sbatch_extra: list[str] = []  # further #SBATCH options: --constraint=a100_80, --reservation=x
    # Runs take their nodes whole (#SBATCH --exclusive), so no other job's traffic is in their
    # timings: set it where the site allows whole-node jobs (and mind that it may charge the node).
    exclusive: bool = False
    # At most this many tasks of each job array run at once (sbatch --array=0-N%M); None: as many
    # as Slurm allows. `hpml submit --max-concurrent M` overrides it.
    max_concurrent: int | None = Field(None, ge=1)
    # Checkpoints each run keeps (newest first), unless its experiment says otherwise: a resume whose
    # newest is damaged falls back to the one before (hpml_core.checkpoint); each costs disk.
    keep_checkpoints: int = Field(2, ge=1)
    # The hardware's speed, for predicted step times (see the module's doc).
    compute_efficiency: float = Field(0.40, gt=0, le=1)
    intra_node_gb_per_s: float = Field(100.0, gt=0)
    inter_node_gb_per_s: float = Field(10.0, gt=0)
    device_tflops: float | None = Field(None, gt=0)
    device_memory_gb_per_s: float | None = Field(None, gt=0)  # where the GPU table's bandwidth is not the one (a CPU)

    def experiment_folder(self, experiment: str) -> Path:
        """Where the runs of an experiment write, as seen from here (relative paths in a profile
        are relative to project_dir, where the job script changes directory to)."""
        return Path(expand_path(self.project_dir)) / expand_path(self.results_root) / experiment

    def data_folder(self) -> Path:
        """The folder that holds the prepared datasets, as seen from here."""
        return Path(expand_path(self.project_dir)) / expand_path(self.data_root)

    def dataset_folder(self, dataset: str) -> Path:
        return self.data_folder() / dataset

    def gpu(self) -> gpus.Gpu | None:
        """The row of the table of known GPUs this site's jobs get, if it names one."""
        if self.gpu_model is not None:
            return gpus.BY_KEY[self.gpu_model]
        gres = (self.gpu_type or "").lower().replace("_", "-")
        return gpus.BY_KEY.get(gres)

    def performance(self) -> Performance:
        defaults = {name: field.default for name, field in Site.model_fields.items()}
        stated = [name for name in ("compute_efficiency", "intra_node_gb_per_s", "inter_node_gb_per_s", "device_tflops",
                                    "device_memory_gb_per_s") if getattr(self, name) != defaults[name]]
        source = (f"site {self.name}: {', '.join(stated)} stated, the rest hpml's defaults" if stated
                  else "hpml's defaults: set them in the site profile")
        return Performance(self.compute_efficiency, self.intra_node_gb_per_s, self.inter_node_gb_per_s,
                           self.device_tflops, source, self.device_memory_gb_per_s, load_calibration(self.name))

    def gpu_memory(self) -> GpuMemory:
        """The GPU each rank gets and its memory, or why the site does not say (see the module's doc)."""
        model = self.gpu_model
        if model is None and self.gpu_type is not None:
            gres = self.gpu_type.lower().replace("_", "-")
            if gres in gpus.BY_KEY:
                model = gres
            elif self.gpu_memory_gib is None:
                alike = [gpu.label for gpu in gpus.GPUS if gpu.key.startswith(f"{gres}-")]
                which = f"may be {' or '.join(alike)}" if alike else "is not in hpml's table of known GPUs"
                return GpuMemory.unknown(f"site {self.name}: gpu_type {self.gpu_type!r} (Slurm's name) {which}: "
                                         f"set gpu_model ({', '.join(gpus.BY_KEY)}) or gpu_memory_gib")
        if model is None and self.gpu_memory_gib is None:
            return GpuMemory.unknown(f"site {self.name} names no GPU (gpu_model in its profile)")
        gpu = gpus.BY_KEY[model] if model is not None else None
        label = gpu.label if gpu is not None else (self.gpu_type or "GPU")
        if self.gpu_memory_gib is not None:
            return GpuMemory(label, round(self.gpu_memory_gib * GIB), f"gpu_memory_gib in site {self.name}")
        return GpuMemory(label, gpu.memory_mib * MIB,
                         f"gpu_model {gpu.key}: {gpu.memory_mib} MiB as torch reports it, hpml_core.contract.gpus")

    @field_validator("gpu_model")
    @classmethod
    def _gpu_model(cls, value: str | None) -> str | None:
        if value is not None and value not in gpus.BY_KEY:
            raise ValueError(f"{value!r} is not a known GPU: one of {', '.join(gpus.BY_KEY)} (or leave it out "
                             "and give gpu_memory_gib)")
        return value

    @field_validator("account", "partition", "qos", "gpu_type", "mem_per_gpu")
    @classmethod
    def _sbatch_value(cls, value: str | None) -> str | None:
        if value is not None and not SBATCH_VALUE.match(value):
            raise ValueError(f"{value!r} must be letters, digits and . _ : + - only (it goes into an #SBATCH line)")
        return value

    @field_validator("project_dir", "results_root", "data_root", "python")
    @classmethod
    def _path(cls, value: str) -> str:
        if not PATH_VALUE.match(value):
            raise ValueError(f"{value!r} must be a plain path (letters, digits, . _ / + - and $VARIABLES)")
        return value

    @field_validator("modules")
    @classmethod
    def _modules(cls, value: list[str]) -> list[str]:
        for module in value:
            if not PATH_VALUE.match(module) or "$" in module:
                raise ValueError(f"module {module!r} must be a plain name such as cuda/12.1")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SAFE_NAME.match(value):
            raise ValueError(f"{value!r} must be letters, digits, '.', '_' and '-' (it names the site in job scripts)")
        return value

    @field_validator("sbatch_extra")
    @classmethod
    def _sbatch_extra(cls, value: list[str]) -> list[str]:
        for option in value:
            match = SBATCH_OPTION.match(option)
            if not match:
                raise ValueError(f"{option!r} must be a plain --name or --name=value (letters, digits and "
                                 ". _ : , + / @ % = - in the value)")
            if match["name"] in MANAGED_SBATCH_OPTIONS:
                field = {"exclusive": "exclusive: true", "array": "max_concurrent"}.get(match["name"])
                raise ValueError(f"{option!r}: hpml sets --{match['name']} itself (from "
                                 + (f"the profile's {field})" if field else "the profile's fields or the experiment's)"))
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value


def user_sites() -> Path:
    """The folder of the user's own profiles: ``$HPML_SITES``, else ``~/.config/hpml/sites``."""
    return Path(os.environ.get("HPML_SITES") or Path.home() / ".config" / "hpml" / "sites")


def calibration_path(site_name: str) -> Path:
    """Where ``hpml calibrate`` writes the site's measured rates: beside the user's profiles."""
    return user_sites() / "calibrations" / f"{site_name}.yaml"


def load_calibration(site_name: str) -> Calibration | None:
    """The site's calibration (``hpml_core.contract.calibration``), None when it has none; an
    unreadable one is refused in one line naming the file (``hpml calibrate`` writes it again)."""
    path = calibration_path(site_name)
    if not path.is_file():
        return None
    try:
        return Calibration.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError("calibration", f"{path} is unreadable ({first}); run hpml calibrate again or remove it")


def available() -> list[tuple[str, Path, str]]:
    """(name, file, where: "user", "user, shadows the shipped one" or "shipped") of every profile
    a name finds, the one it finds first."""
    found: dict[str, tuple[str, Path, str]] = {}
    shipped = {path.stem for path in SITES.glob("*.yaml")}
    folder = user_sites()
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        found[path.stem] = (path.stem, path, "user, shadows the shipped one" if path.stem in shipped else "user")
    for path in sorted(SITES.glob("*.yaml")):
        found.setdefault(path.stem, (path.stem, path, "shipped"))
    return sorted(found.values())


def find(name_or_path: str) -> Path:
    """A profile by file path, else by name: the user's first, then the shipped one."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return path
    else:
        for folder in (user_sites(), SITES):
            if (folder / f"{name_or_path}.yaml").is_file():
                return folder / f"{name_or_path}.yaml"
    known = ", ".join(name for name, _, _ in available())
    raise ExperimentError("site", str(name_or_path), f"no such site profile (known: {known}; yours go in "
                                                     f"{user_sites()})")


def apply_override(raw: dict, item: str) -> str:
    """Set one ``KEY=VALUE`` in the profile's raw fields; returns the key."""
    key, equals, text = item.partition("=")
    if not equals or not OVERRIDE_KEY.match(key):
        raise UsageError("--set", f"{item!r}: expected KEY=VALUE, KEY a field such as account or container.image")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        raise UsageError("--set", f"{key}: {text!r} is not a YAML value") from None
    *parents, last = key.split(".")
    target = raw
    for parent in parents:
        target = target.setdefault(parent, {}) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            raise UsageError("--set", f"{key}: {parent} has no fields")
    target[last] = value
    return key


def load(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Site:
    """The profile, with ``overrides`` (``KEY=VALUE``) applied, validated once."""
    path = find(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ExperimentError(f"site {path.name}", "file", f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ExperimentError(f"site {path.name}", "file", "not a table of fields")
    overridden = {apply_override(raw, item) for item in overrides}
    try:
        return Site.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "file"
        message = first["msg"].removeprefix("Value error, ")
        if field in overridden or field.split(".")[0] in overridden:
            raise UsageError("--set", f"{field}: {message}") from None
        raise ExperimentError(f"site {path.name}", field, message) from None
