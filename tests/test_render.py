"""`hpml render`: job scripts pinned by golden files, and no config value can run a command."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from jobs import experiment, render, site
from jobs.cli import main
from jobs.experiment import EXPERIMENTS
from jobs.experiment import ExperimentError

GOLDEN = Path(__file__).parent / "golden"


def rendered(tmp_path, monkeypatch, exp_path: Path) -> dict[str, str]:
    monkeypatch.setenv("USER", "alice")
    out = tmp_path / "results"
    assert main(["render", str(exp_path), "--site", "greene", "--results", str(out)]) == 0
    return {p.parent.name: p.read_text() for p in sorted(out.glob("*/*/job.sbatch"))}


@pytest.mark.parametrize("exp_path", [EXPERIMENTS / "seed_study.yaml", GOLDEN / "two_nodes.yaml"])
def test_greene_scripts_match_the_golden_files(tmp_path, monkeypatch, exp_path):
    """To accept a deliberate change: run the render below and copy the scripts over the golden ones.
    USER=alice python -m jobs.cli render EXP --site greene --results /tmp/g; cp /tmp/g/*/*/job.sbatch ..."""
    scripts = rendered(tmp_path, monkeypatch, exp_path)
    assert scripts
    for run, text in scripts.items():
        assert text == (GOLDEN / "greene" / f"{run}.sbatch").read_text(), run


def test_scripts_are_valid_bash(tmp_path, monkeypatch):
    for run, text in rendered(tmp_path, monkeypatch, GOLDEN / "two_nodes.yaml").items():
        subprocess.run(["bash", "-n"], input=text, text=True, check=True)


HOSTILE = ["$(touch {canary})", "`touch {canary}`", "x; touch {canary}", "it's \"quoted\"", "line\ntouch {canary}"]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_refused_or_rendered_inert(tmp_path, value):
    """Each hostile value is put where a site profile allows free text (an environment value),
    and where it allows only plain values (paths, #SBATCH values, module names), which must
    refuse it. The rendered script then runs under bash, with srun and friends replaced by
    functions that record what they got: the canary file must not appear, the engine must
    receive the value unchanged, and its last two arguments must be --config and the run spec."""
    canary = tmp_path / "canary"
    value = value.format(canary=canary)
    base = yaml_site(tmp_path)
    for field, bad in [("partition", value), ("results_root", value), ("modules", [value]),
                       ("container", {"kind": "apptainer", "image": value})]:
        with pytest.raises(ExperimentError):
            site.load(str(write_site(tmp_path, {**base, field: bad})))
    profile = site.load(str(write_site(tmp_path, {**base, "env": {"HOSTILE": value}})))
    exp = experiment.load(EXPERIMENTS / "tiny_study.yaml")
    text = render.render_run(exp, exp.runs[0], profile)
    record = tmp_path / "env.txt"
    stubs = textwrap.dedent(f"""\
        srun() {{ printf '%s\\n' "$HOSTILE" "${{@: -2:1}}" "${{@: -1}}" > {record}; }}
        module() {{ :; }}
        scontrol() {{ :; }}
    """)
    subprocess.run(["bash", "-c", stubs + text], cwd=tmp_path, check=True, env=dict(os.environ))
    assert not canary.exists()
    assert record.read_text() == f"{value}\n--config\n{tmp_path}/r/tiny_study/single/run.json\n"


def yaml_site(tmp_path) -> dict:
    return {"name": "test", "scheduler": "slurm", "project_dir": str(tmp_path), "results_root": str(tmp_path / "r"),
            "data_root": str(tmp_path / "d")}


def write_site(tmp_path, fields: dict) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path


def test_unknown_site_is_named_with_the_known_ones(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "render", "seed_study", "--site", "nowhere",
                           "--results", str(tmp_path)], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 2 and "nowhere" in proc.stderr and "greene" in proc.stderr
    assert not list(tmp_path.iterdir())
