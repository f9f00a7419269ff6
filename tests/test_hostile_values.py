"""No value from a site profile or an experiment file runs a command: every field of both, set to
each hostile value (a newline, quotes, `$()`, backticks, `;`), is either refused when the file is
loaded or reaches the job script inert. The scripts (a run's job and the `--report` job, with a
container) then run under bash, with srun, scontrol and module replaced by functions: the
canary file must never appear."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from hpml_core.contract.config import TrainConfig
from hpml_core.contract.errors import UsageError
from jobs import experiment, render, site
from jobs.experiment import JOB_FIELDS, MANAGED_FIELDS, ExperimentFile

HOSTILE = ["$(touch {canary})", "`touch {canary}`", "x; touch {canary}", "it's \"quoted\"; touch {canary}",
           "line\ntouch {canary}"]
STUBS = textwrap.dedent("""\
    srun() { printf '%s\\n' "$@" >> "$RECORD"; }
    scontrol() { :; }
    module() { :; }
""")


def base_site(tmp_path) -> dict:
    """A Slurm site with a container, so that the container's words are rendered too."""
    return {"name": "test", "scheduler": "slurm", "project_dir": str(tmp_path), "results_root": str(tmp_path / "r"),
            "data_root": str(tmp_path / "d"), "container": {"kind": "apptainer", "image": "/images/x.sif",
                                                            "activate": "/env/activate"}}


def base_experiment() -> dict:
    return {"name": "study", "dataset": "wt2", "defaults": {"model": "tiny", "seq_len": 64, "steps": 10},
            "runs": [{"name": "one", "mode": "ddp", "gpus": 2, "time_limit": "00:10:00"}]}


def shaped(value: str, like) -> object:
    """The hostile value in the field's shape: in a list, as a table's value and key."""
    if isinstance(like, list):
        return [value]
    return value


def site_variants(tmp_path, value: str) -> list[tuple[str, dict]]:
    base = base_site(tmp_path)
    variants = []
    for field, info in site.Site.model_fields.items():
        if field == "container":
            variants += [(f"container.{name}", {**base, "container": {**base["container"], name: value}})
                         for name in site.Container.model_fields]
        elif field == "env":
            variants += [("env value", {**base, "env": {"HOSTILE": value}}), ("env name", {**base, "env": {value: "x"}})]
        else:
            variants.append((field, {**base, field: shaped(value, info.default)}))
    return variants


def experiment_variants(value: str) -> list[tuple[str, dict]]:
    base = base_experiment()
    variants = [(field, {**base, field: value}) for field in ExperimentFile.model_fields
                if field not in ("defaults", "runs", "grid", "zip")]
    variants += [("grid", {**base, "grid": {"batch_size": [value]}}), ("zip", {**base, "zip": {value: [1]}})]
    run_fields = (set(TrainConfig.model_fields) - MANAGED_FIELDS) | JOB_FIELDS
    for field in sorted(run_fields):
        variants.append((f"runs.{field}", {**base, "runs": [{**base["runs"][0], field: value}]}))
        variants.append((f"defaults.{field}", {**base, "defaults": {**base["defaults"], field: value}}))
    return variants


def run_scripts(tmp_path, exp: experiment.Experiment, profile: site.Site, canary) -> None:
    """The scripts of the experiment's first run (its own, the array that submit sends, the
    report's) under bash with the stubs; the canary must not appear."""
    record = tmp_path / "srun-args.txt"
    (Path(render.job_run_dir(exp, exp.runs[0], profile))).mkdir(parents=True, exist_ok=True)  # the array's log goes there
    for text in (render.render_run(exp, exp.runs[0], profile),
                 render.render_array(exp, exp.runs[:1], profile, profile.max_concurrent),
                 render.render_report(exp, profile, str(tmp_path / "site.yaml"), [], ["12"])):
        done = subprocess.run(["bash", "-c", STUBS + text], cwd=tmp_path, capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "RECORD": str(record), "SLURM_JOB_ID": "12",
                                   "SLURM_JOB_NODELIST": "n1", "SLURM_ARRAY_JOB_ID": "12",
                                   "SLURM_ARRAY_TASK_ID": "0"})
        assert not canary.exists(), (text, done.stderr)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_every_site_field_refuses_or_renders_inert(tmp_path, hostile):
    canary = tmp_path / "canary"
    value = hostile.format(canary=canary)
    exp = experiment.load(_write(tmp_path / "exp.yaml", base_experiment()))
    accepted = []
    for field, fields in site_variants(tmp_path, value):
        try:
            profile = site.load(str(_write(tmp_path / "site.yaml", fields)))
        except UsageError:  # refused, with the field named (ExperimentError is a UsageError)
            continue
        accepted.append(field)
        run_scripts(tmp_path, exp, profile, canary)
    # Free text is allowed only where it is quoted: an environment value.
    assert accepted == ["env value"], accepted


@pytest.mark.parametrize("hostile", HOSTILE)
def test_every_experiment_field_refuses_or_renders_inert(tmp_path, hostile):
    canary = tmp_path / "canary"
    value = hostile.format(canary=canary)
    profile = site.load(str(_write(tmp_path / "site.yaml", base_site(tmp_path))))
    accepted = []
    for field, fields in experiment_variants(value):
        try:
            exp = experiment.load(_write(tmp_path / "exp.yaml", fields))
        except UsageError:
            continue
        accepted.append(field)
        run_scripts(tmp_path, exp, profile, canary)
    # The description is free text: it never reaches a script (the report escapes it in HTML). A
    # default that the run entry sets itself is overridden, so never read (the scripts ran inert).
    overridden = {f"defaults.{field}" for field in base_experiment()["runs"][0]}
    assert "description" in accepted and set(accepted) <= {"description"} | overridden, accepted


def _write(path, fields: dict):
    path.write_text(yaml.safe_dump(fields))
    return path


def test_the_check_catches_a_value_left_unquoted(tmp_path, monkeypatch):
    """Negative control: with the template's quoting filter broken, the same check fails."""
    canary = tmp_path / "canary"
    unquoting = render._environment()
    unquoting.filters["shquote"] = str
    monkeypatch.setattr(render, "_environment", lambda: unquoting)
    exp = experiment.load(_write(tmp_path / "exp.yaml", base_experiment()))
    profile = site.load(str(_write(tmp_path / "site.yaml", {**base_site(tmp_path),
                                                            "env": {"HOSTILE": f"$(touch {canary})"}})))
    with pytest.raises(AssertionError):
        run_scripts(tmp_path, exp, profile, canary)
    assert canary.exists()
