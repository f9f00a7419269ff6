"""`hpml render`: job scripts pinned by golden files, and no config value can run a command;
what the scripts compute in bash (the rendezvous port); sbatch's timeout, without a cluster."""

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from hpml_core import launch
from jobs import experiment, render, site, slurm, slurm_query
from hpml_core.cli import main
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
    Repeats are pinned by their first (``-r0``): the others differ from it in the run's name only.
    USER=alice python -m hpml_core.cli render EXP --site greene --results /tmp/g, then for each RUN (of a
    repeated study, each -r0 run): cp /tmp/g/EXP/RUN/job.sbatch tests/golden/greene/RUN.sbatch"""
    scripts = rendered(tmp_path, monkeypatch, exp_path)
    assert scripts
    for run, text in scripts.items():
        first = re.sub(r"-r\d+$", "-r0", run)
        golden = (GOLDEN / "greene" / f"{first}.sbatch").read_text()
        assert text == golden.replace(first, run), run


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
    assert record.read_text() == f"{value}\n--config\n{tmp_path}/r/tiny_study/{exp.runs[0].name}/run.json\n"


def yaml_site(tmp_path) -> dict:
    return {"name": "test", "scheduler": "slurm", "project_dir": str(tmp_path), "results_root": str(tmp_path / "r"),
            "data_root": str(tmp_path / "d")}


def write_site(tmp_path, fields: dict) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path


def test_unknown_site_is_named_with_the_known_ones(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hpml_core.cli", "render", "seed_study", "--site", "nowhere",
                           "--results", str(tmp_path)], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 2 and "nowhere" in proc.stderr and "greene" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_submit_groups_runs_by_shape_into_arrays_pinned_by_a_golden_file(monkeypatch):
    """The seed study's 30 runs are two shapes (1 and 4 GPUs, 2 hours): two arrays, each run
    once, in the study's order. To accept a deliberate change of the 4-GPU array's script:
    USER=alice python -c 'from jobs import experiment as e, site as s, render as r;
    x = e.load(e.experiment_path("seed_study"));
    print(r.render_array(x, r.group_by_shape(x.runs)[1], s.load("greene"), 2), end="")'
    > tests/golden/greene/array-1x4-02h00m00s.sbatch"""
    monkeypatch.setenv("USER", "alice")
    exp = experiment.load(EXPERIMENTS / "seed_study.yaml")
    groups = render.group_by_shape(exp.runs)
    assert [(render.shape_label(group[0]), len(group)) for group in groups] == [("1x1-02h00m00s", 18),
                                                                                  ("1x4-02h00m00s", 12)]
    assert sorted(run.name for group in groups for run in group) == sorted(run.name for run in exp.runs)
    text = render.render_array(exp, groups[1], site.load("greene"), 2)
    assert text == (GOLDEN / "greene" / "array-1x4-02h00m00s.sbatch").read_text()
    assert "\n#SBATCH --array=0-11%2\n" in text and "\n#SBATCH --job-name=hpml-seed_study-1x4-02h00m00s-1\n" in text
    with pytest.raises(ValueError):  # one shape per array
        render.render_array(exp, [groups[0][0], groups[1][0]], site.load("greene"), None)


def test_a_large_group_is_split_at_slurms_array_size(monkeypatch):
    exp = experiment.load(EXPERIMENTS / "tiny_study.yaml")
    many = [exp.runs[0].model_copy(update={"name": f"r{k}"}) for k in range(render.MAX_ARRAY_TASKS + 5)]
    assert [len(group) for group in render.group_by_shape(many)] == [render.MAX_ARRAY_TASKS, 5]


@pytest.mark.parametrize("task", [0, 2])
def test_each_array_task_trains_its_own_run_and_writes_into_its_folder(tmp_path, task):
    """The array script under bash, srun replaced by a function: task k starts the engine on the
    k-th run's spec, and the task's output lands in that run's folder, named by array and task."""
    exp = experiment.load(EXPERIMENTS / "tiny_study.yaml")
    group = render.group_by_shape(exp.runs)[0][:3]
    text = render.render_array(exp, group, site.load(str(write_site(tmp_path, yaml_site(tmp_path)))), None)
    run_dir = tmp_path / "r" / "tiny_study" / group[task].name
    run_dir.mkdir(parents=True)
    stubs = "srun() { echo \"srun ${@: -1}\"; }\nscontrol() { :; }\n"
    env = {**os.environ, "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": str(task), "SLURM_JOB_ID": "80"}
    subprocess.run(["bash", "-c", stubs + text], cwd=tmp_path, check=True, env=env)
    assert (run_dir / "slurm-77_{}.out".format(task)).read_text() == f"srun {run_dir}/run.json\n"
    env["SLURM_ARRAY_TASK_ID"] = "3"  # no such task: refused, nothing run
    assert subprocess.run(["bash", "-c", stubs + text], cwd=tmp_path, env=env, capture_output=True).returncode != 0


def test_the_job_name_is_render_job_name(tmp_path):
    exp = experiment.load(GOLDEN / "two_nodes.yaml")
    text = render.render_run(exp, exp.runs[0], site.load(str(write_site(tmp_path, yaml_site(tmp_path)))))
    assert render.job_name("two_nodes", "dp4xtp2") == "hpml-two_nodes-dp4xtp2"
    assert "\n#SBATCH --job-name=hpml-two_nodes-dp4xtp2\n" in text


@pytest.mark.parametrize("job_id, port", [("45678", 25678), ("40000", 20000), ("7", 20007)])
def test_the_multi_node_rendezvous_port_comes_from_the_job_id_as_in_the_engine(tmp_path, job_id, port):
    """The two-node script runs under bash with srun and scontrol replaced by functions: torchrun's
    rendezvous is on the first node, at the port the engine's srun path derives from the job id."""
    exp = experiment.load(GOLDEN / "two_nodes.yaml")
    text = render.render_run(exp, exp.runs[0], site.load(str(write_site(tmp_path, yaml_site(tmp_path)))))
    record = tmp_path / "srun.txt"
    stubs = f"srun() {{ printf '%s\\n' \"$@\" > {record}; }}\nscontrol() {{ echo n7; echo n8; }}\n"
    env = {**os.environ, "SLURM_JOB_ID": job_id, "SLURM_JOB_NODELIST": "n[7-8]"}
    subprocess.run(["bash", "-c", stubs + text], cwd=tmp_path, check=True, env=env)
    endpoints = [arg for arg in record.read_text().splitlines() if arg.startswith("--rdzv_endpoint=")]
    engine = launch.detect({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n[7-8]",
                            "SLURM_JOB_ID": job_id})
    assert endpoints == [f"--rdzv_endpoint=n7:{port}"] and engine.master_port == port


def shim(tmp_path, monkeypatch, body: str) -> None:
    """An ``sbatch`` first on PATH that runs ``body`` (bash)."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    (folder / "sbatch").write_text(f"#!/bin/bash\n{body}\n")
    (folder / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")


def test_an_sbatch_that_does_not_answer_is_stopped_and_said_to_maybe_have_queued(tmp_path, monkeypatch):
    """The timeout stops sbatch and what it started (this one's sleep), so submit returns at the
    timeout, not when the sleep would end."""
    shim(tmp_path, monkeypatch, 'echo "Submitted batch job 12"; sleep 60')
    started = time.monotonic()
    with pytest.raises(slurm_query.SlurmTimeout) as raised:
        slurm.submit("#!/bin/bash\ntrue\n", tmp_path / "submitit", 1, timeout_s=1)
    assert str(raised.value) == "sbatch did not answer within 1 s; the job may still have been queued"
    assert time.monotonic() - started < 15
    with pytest.raises(slurm_query.SlurmTimeout, match="^sbatch did not answer within 1 s$"):
        slurm.test_only("#!/bin/bash\ntrue\n", "run 'x'", timeout_s=1)


def test_an_sbatch_that_refuses_is_a_refusal_not_a_timeout(tmp_path, monkeypatch):
    shim(tmp_path, monkeypatch, 'echo "sbatch: error: Invalid partition name specified" >&2; exit 1')
    with pytest.raises(slurm_query.SlurmError) as raised:
        slurm.submit("#!/bin/bash\ntrue\n", tmp_path / "submitit", 1, timeout_s=30)
    assert not isinstance(raised.value, slurm_query.SlurmTimeout)
    assert str(raised.value) == "sbatch refused the job: sbatch: error: Invalid partition name specified"


@pytest.mark.parametrize("value, accepted", [(1, True), (600, True), (0, False), (-5, False), ("soon", False)])
def test_the_submit_timeout_is_a_whole_number_of_seconds_from_one(tmp_path, value, accepted):
    path = write_site(tmp_path, {**yaml_site(tmp_path), "submit_timeout_s": value})
    if accepted:
        assert site.load(str(path)).submit_timeout_s == value
    else:
        with pytest.raises(ExperimentError, match="submit_timeout_s"):
            site.load(str(path))
