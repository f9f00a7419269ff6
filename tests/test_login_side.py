"""The login side is light: ``hpml plan``, ``render``, ``status`` and ``report`` never load the
training stack, the import rules that keep it so hold in the source, and a plain ``pip install .``
(no extras, not editable) in a fresh venv plans, renders and reports.

Everything runs for real: each command in its own Python process, and the light install from
the package index pip is configured with (its cache makes it take about half a minute).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from analysis.sample_rank_files import write_run
from jobs import experiment

REPO = Path(__file__).resolve().parents[1]
TINY_STUDY = REPO / "jobs" / "experiments" / "tiny_study.yaml"
ENGINE_STACK = ("torch", "transformers", "deepspeed")
HEAVY = (*ENGINE_STACK, "tokenizers", "datasets")


def write_results(folder: Path) -> None:
    """Rank files of every tiny_study run under ``folder`` (an experiment's results folder)."""
    for run in experiment.load(TINY_STUDY).runs:
        write_run(folder, run.name, mode=run.mode, world=run.world_size, tp=run.tp_size,
                  batch=run.setting("batch_size"), grad_accum=run.setting("grad_accum"), seq_len=64)


def write_site(path: Path, results_root: Path) -> Path:
    """A site profile (no Slurm) whose results live in ``results_root``."""
    path.write_text(yaml.safe_dump({"name": "copy", "scheduler": "local", "project_dir": str(path.parent),
                                    "results_root": str(results_root), "data_root": str(path.parent / "data")}))
    return path


# --- (a) the commands, each in a fresh process of this venv, load none of the engine's stack ---

PROBE = """
import json, sys
from hpml_core.cli import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
print(json.dumps(sorted(m for m in {stack!r} if m in sys.modules)))
sys.exit(code)
""".format(stack=ENGINE_STACK)


@pytest.fixture
def results_site(tmp_path) -> Path:
    write_results(tmp_path / "results" / "tiny_study")
    return write_site(tmp_path / "site.yaml", tmp_path / "results")


@pytest.mark.parametrize("command", ["plan", "render", "status", "report", "sites"])
def test_login_commands_never_import_the_training_stack(tmp_path, results_site, command):
    argv = {"plan": ["plan", "tiny_study"],
            "render": ["render", "tiny_study", "--site", "local-slurm", "--results", str(tmp_path / "rendered")],
            "status": ["status", "tiny_study", "--site", str(results_site)],
            "report": ["report", "tiny_study", "--site", str(results_site)],
            "sites": ["sites"]}[command]
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"hpml {' '.join(argv)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [], f"hpml {command} imported the training stack"
    if command == "report":
        assert (tmp_path / "results" / "tiny_study" / "report" / "summary.md").is_file()


# --- (b) the import rules, read from the source ---

def _is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported(path: Path, where: str | None = None) -> set[str]:
    """Every module a file imports, anywhere in it (functions and TYPE_CHECKING blocks too):
    ``from a import b`` counts as ``a.b`` when that is a module of this repository, else as ``a``.
    ``where``: the file's place in the repository (default: where it is), for relative imports."""
    where = where or path.relative_to(REPO).as_posix()
    package = ".".join(where.split("/")[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                names.add(f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
    return names


def under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def sources(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (REPO / folder).rglob("*.py"))


ENTRY_POINT = "hpml_core/cli.py"
# What the report may take from the jobs layer: the study, the site, the ledger and where each run
# stands (read-only: jobs.observe, jobs.slurm_query). Never a command: what submits, cancels,
# renders or parses a command line.
REPORT_READS = ("jobs.experiment", "jobs.site", "jobs.ledger", "jobs.observe", "jobs.slurm_query")


def layer(name: str) -> str | None:
    """The layer of a module of this repository (None: not one of ours)."""
    if name == "hpml_core.cli":
        return "entry point"
    if under(name, "hpml_core.contract"):
        return "contract"
    for package, layer_name in (("hpml_core", "engine"), ("jobs", "jobs"), ("analysis", "report")):
        if under(name, package):
            return layer_name
    return None


def violations(where: str, names: set[str]) -> list[str]:
    """How the imports ``names`` of the file at ``where`` (its path in the repository) break the
    layers' one-way arrows."""
    module = where.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    own, broken = layer(module), []
    for name in sorted(names):
        if own in ("engine", "contract") and layer(name) in ("jobs", "report"):
            broken.append(f"{where} imports {name}: the engine never imports the jobs layer or the report")
        if own in ("jobs", "report", "contract") and layer(name) in ("engine", "entry point"):
            broken.append(f"{where} imports {name}: only hpml_core.contract is allowed")
        if own in ("jobs", "report", "contract") and under(name, *HEAVY):
            broken.append(f"{where} imports {name}: the login side never imports {', '.join(HEAVY)}")
        if own == "jobs" and layer(name) == "report":
            broken.append(f"{where} imports {name}: the jobs layer never imports the report")
        if own == "report" and layer(name) == "jobs" and not under(name, *REPORT_READS):
            broken.append(f"{where} imports {name}: the report reads only {', '.join(REPORT_READS)} of the "
                          "jobs layer, never its commands")
        if under(name, "tests"):
            broken.append(f"{where} imports {name}: tests are not installed")
    if where != ENTRY_POINT and {"engine", "jobs", "report"} <= {layer(name) for name in names}:
        broken.append(f"{where} imports every layer: only {ENTRY_POINT} does")
    return broken


def entry_point_imports() -> set[str]:
    """What ``hpml`` imports: its own imports, and the module of each command in its table."""
    from hpml_core.cli import COMMANDS

    return imported(REPO / ENTRY_POINT) | {command.module for command in COMMANDS.values()}


def test_import_rules():
    """The engine (hpml_core/ but its contract and the entry point) never imports jobs/ or
    analysis/; jobs/ and analysis/ take from hpml_core only the contract (hpml_core.contract) and
    never import the training stack; jobs/ never imports analysis/, and analysis/ reads the study,
    the site, the ledger and the runs' states but imports none of jobs/' commands; hpml_core/contract/
    imports nothing of the engine and nothing heavy; hpml_core/cli.py, the ``hpml`` entry point, is
    the one module that imports every layer; no installed module imports the tests (they are not
    installed)."""
    broken = []
    for path in sources("jobs", "analysis", "hpml_core"):
        where = path.relative_to(REPO).as_posix()
        broken += violations(where, entry_point_imports() if where == ENTRY_POINT else imported(path))
    assert not broken, "\n".join(broken)


def test_the_entry_point_reaches_every_layer_and_each_command_has_a_main():
    from hpml_core.cli import COMMANDS

    assert {"engine", "jobs", "report"} <= {layer(name) for name in entry_point_imports()}
    for name, command in COMMANDS.items():
        path = REPO.joinpath(*command.module.split(".")).with_suffix(".py")
        tree = ast.parse(path.read_text())
        assert any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body), name


def test_import_rules_see_imports():
    """The reader above finds the imports it must judge (a rule that reads nothing passes vacuously)."""
    assert {"hpml_core.contract.errors", "hpml_core.stopping", "jobs.site", "sys"} <= imported(REPO / ENTRY_POINT)
    assert {"hpml_core.train", "jobs.plan", "analysis.report"} <= entry_point_imports()
    assert "torch" in imported(REPO / "hpml_core" / "train.py")
    assert "jobs.observe" in imported(REPO / "analysis" / "collect.py")
    assert under("jobs.slurm_query", *REPORT_READS) and not under("jobs.slurm", *REPORT_READS)


@pytest.mark.parametrize("where,source,says", [
    ("hpml_core/model.py", "from jobs import submit\n", "the engine never imports the jobs layer or the report"),
    ("hpml_core/model.py", "def f():\n    import analysis.report\n", "the engine never imports"),
    ("hpml_core/contract/x.py", "from hpml_core import model\n", "only hpml_core.contract is allowed"),
    ("jobs/x.py", "from hpml_core.train import main\n", "only hpml_core.contract is allowed"),
    ("jobs/x.py", "from hpml_core import cli\n", "only hpml_core.contract is allowed"),
    ("jobs/x.py", "import torch.nn\n", "the login side never imports torch"),
    ("jobs/x.py", "from analysis.collect import collect\n", "the jobs layer never imports the report"),
    ("analysis/x.py", "from jobs import submit\n", "the report reads only"),
    ("analysis/x.py", "from ..jobs import cli\n", "the report reads only"),
    ("analysis/x.py", "from tests.conftest import REPO\n", "tests are not installed"),
    ("hpml_core/bench/x.py", "import hpml_core.train, jobs.site, analysis.report\n", "imports every layer"),
])
def test_the_import_rules_report_a_file_that_breaks_them(tmp_path, where, source, says):
    """A negative control: the checker, run on a file that breaks a rule, says so."""
    path = tmp_path / "x.py"
    path.write_text(source)
    broken = violations(where, imported(path, where))
    assert any(says in line for line in broken), broken


def test_the_import_rules_let_the_allowed_imports_pass(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("from hpml_core.contract import run_states\nfrom jobs import observe, slurm_query\n")
    assert imported(path, "analysis/x.py") == {"hpml_core.contract.run_states", "jobs.observe", "jobs.slurm_query"}
    assert violations("analysis/x.py", imported(path, "analysis/x.py")) == []


# --- (c) a light install: pip install . with no extras, in a fresh venv ---

IGNORED = shutil.ignore_patterns(".git", ".venv", "results", "__pycache__", "build", "*.egg-info", ".pytest_cache")


@pytest.fixture(scope="module")
def light(tmp_path_factory) -> dict:
    """A fresh venv (this Python's base interpreter: none of .venv's packages) with ``pip install``
    of a copy of this checkout (jobs/templates copied as the link it is): the login side only."""
    root = tmp_path_factory.mktemp("light")
    source = root / "src"
    shutil.copytree(REPO, source, symlinks=True, ignore=IGNORED)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert pip.returncode == 0, f"pip install . failed:\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}"
    return {"root": root, "bin": venv / "bin", "env": env}


def run_light(light: dict, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A command of the light venv, from a folder outside the checkout."""
    return subprocess.run([str(light["bin"] / args[0]), *args[1:]], cwd=light["root"], capture_output=True,
                          text=True, env={**light["env"], **(env or {})}, timeout=300)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{' '.join(proc.args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_light_install_has_no_training_stack(light):
    for module in HEAVY:
        proc = run_light(light, "python", "-c", f"import {module}")
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, f"{module} is installed"


def test_light_install_plans_and_renders(light):
    assert "seed_study" in ok(run_light(light, "hpml", "plan", "seed_study")).stdout
    out = light["root"] / "rendered"
    ok(run_light(light, "hpml", "render", "seed_study", "--site", "greene", "--results", str(out),
                 env={"USER": "alice"}))
    runs = len(experiment.load(REPO / "jobs" / "experiments" / "seed_study.yaml").runs)
    assert len(list(out.glob("seed_study/*/job.sbatch"))) == runs == 30
    assert len(list(out.glob("seed_study/*/run.json"))) == runs
    assert "/scratch/alice/hpml" in next(out.glob("seed_study/*/job.sbatch")).read_text()


def test_light_install_reports_a_copied_results_folder(light, tmp_path):
    write_results(tmp_path / "cluster" / "tiny_study")
    copy = tmp_path / "laptop"
    shutil.copytree(tmp_path / "cluster", copy)
    study = tmp_path / "study.yaml"
    shutil.copy(TINY_STUDY, study)
    site = write_site(tmp_path / "laptop.yaml", copy)
    proc = ok(run_light(light, "hpml", "report", str(study), "--site", str(site)))
    assert (copy / "tiny_study" / "report" / "summary.md").is_file(), proc.stdout
    assert (copy / "tiny_study" / "report" / "report.html").is_file()
    assert "dp2xtp2-b32" in ok(run_light(light, "hpml", "status", str(study), "--site", str(site))).stdout


def test_light_install_names_the_missing_extra(light, tmp_path):
    """hpml train and hpml data say which extra they need, in one line, with no traceback."""
    proc = run_light(light, "hpml", "train", "--test", "--data", str(tmp_path), "--out", str(tmp_path / "out"))
    assert (proc.returncode, proc.stderr) == (2, "hpml train: error: needs the engine: pip install 'hpml[engine]'\n")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n")
    proc = run_light(light, "hpml", "data", "prepare", "--files", str(corpus), "--tokenizer", "train",
                     "--out", str(tmp_path / "data"))
    assert (proc.returncode, proc.stderr) == (2, "hpml data: error: needs tokenizers and datasets: "
                                                 "pip install 'hpml[data]'\n")
    proc = run_light(light, "hpml", "submit", "tiny_study", "--site", "local")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "pip install 'hpml[engine]'" in proc.stderr
