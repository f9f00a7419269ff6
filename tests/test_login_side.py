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


def imported(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (functions and TYPE_CHECKING blocks too):
    ``from a import b`` counts as ``a.b`` when that is a module of this repository, else as ``a``."""
    package = ".".join(path.relative_to(REPO).parts[:-1])
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


# What the report may never import: what submits and cancels. It may decide states as status does
# (jobs.observe, jobs.slurm_query: read-only), and read the study, the site and the ledger.
SUBMITTER = ("jobs.cli", "jobs.submit", "jobs.slurm", "jobs.status", "jobs.cancel")


def test_import_rules():
    """jobs/ and analysis/ take from hpml_core only the contract (hpml_core.contract) and never import
    the training stack; analysis/ may read the study and the ledger but never imports the submitter;
    hpml_core/contract/ imports nothing of the engine and nothing heavy; no installed module imports
    the tests (they are not installed)."""
    broken = []
    for path in sources("jobs", "analysis", "hpml_core"):
        where = path.relative_to(REPO).as_posix()
        for name in sorted(imported(path)):
            login_side = where.startswith(("jobs/", "analysis/", "hpml_core/contract/"))
            if login_side and under(name, "hpml_core") and not under(name, "hpml_core.contract"):
                broken.append(f"{where} imports {name}: only hpml_core.contract is allowed")
            if login_side and under(name, *HEAVY):
                broken.append(f"{where} imports {name}: the login side never imports {', '.join(HEAVY)}")
            if where.startswith("analysis/") and under(name, *SUBMITTER):
                broken.append(f"{where} imports {name}: the report never imports the submitter")
            if under(name, "tests"):
                broken.append(f"{where} imports {name}: tests are not installed")
    assert not broken, "\n".join(broken)


def test_import_rules_see_imports():
    """The reader above finds the imports it must judge (a rule that reads nothing passes vacuously)."""
    assert {"hpml_core.contract.errors", "hpml_core.train", "jobs.cli", "sys"} <= imported(REPO / "hpml_core" / "cli.py")
    assert "torch" in imported(REPO / "hpml_core" / "train.py")
    assert "jobs.observe" in imported(REPO / "analysis" / "collect.py")
    assert not under("jobs.slurm_query", *SUBMITTER) and under("jobs.slurm", *SUBMITTER)


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
