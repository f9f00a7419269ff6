"""`hpml plan`: experiment files expand into validated runs, or are refused naming run and field.
(That plan and engine refuse alike is tests/test_plan_engine_refusals.py.)"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from hpml_core.contract import fit, memory_model
from hpml_core.contract.data_meta import DataMeta
from hpml_core.contract.step_time import predict_step
from hpml_core.contract.units import GIB
from jobs import experiment, site
from jobs.experiment import EXPERIMENTS
from tests.conftest import REPO


def write(tmp_path, text: str):
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_seed_study_is_the_original_five_configurations_and_their_baselines_three_times():
    """The study's five layouts, the 1-process runs they are compared with
    (docs/report.md#baselines: ZeRO-3 on 1 GPU for the ZeRO-3 layouts' weak scaling; each
    multi-GPU run's global batch in one process, by accumulation, for strong scaling), each
    repeated 3 times."""
    exp = experiment.load(EXPERIMENTS / "seed_study.yaml")
    table = {r.name: (r.train["mode"], r.nodes * r.gpus, r.dp_size, r.tp_size, r.train["batch_size"],
                      r.setting("grad_accum"), r.global_batch, r.steps) for r in exp.runs}
    configurations = {  # 5000 samples: steps = 5000 // global batch
        "single": ("single", 1, 1, 1, 8, 1, 8, 625),
        "ddp-4": ("ddp", 4, 4, 1, 8, 1, 32, 156),
        "zero3-4": ("zero3", 4, 4, 1, 8, 1, 32, 156),
        "dp2xtp2-b8": ("zero3", 4, 2, 2, 8, 1, 16, 312),
        "dp2xtp2-b32": ("zero3", 4, 2, 2, 32, 1, 64, 78),
        "zero3-1": ("zero3", 1, 1, 1, 8, 1, 8, 625),
        "single-b32": ("single", 1, 1, 1, 8, 4, 32, 156),
        "zero3-1-b16": ("zero3", 1, 1, 1, 8, 2, 16, 312),
        "zero3-1-b32": ("zero3", 1, 1, 1, 8, 4, 32, 156),
        "zero3-1-b64": ("zero3", 1, 1, 1, 8, 8, 64, 78),
    }
    assert table == {f"{name}-r{repeat}": row for name, row in configurations.items() for repeat in range(3)}
    assert all(r.train["model"] == "gpt2-large" and r.train["precision"] == "bf16" for r in exp.runs)
    # every multi-GPU run has its strong baseline: a 1-process run of the same mode family at its global batch
    one = {(r.mode == "zero3", r.global_batch) for r in exp.runs if r.world_size == 1}
    assert all((r.mode == "zero3", r.global_batch) in one for r in exp.runs if r.world_size > 1)


def test_tiny_study_has_the_seed_study_layouts():
    seed, tiny = (experiment.load(EXPERIMENTS / f"{n}.yaml") for n in ("seed_study", "tiny_study"))
    layout = lambda r: (r.name, r.train["mode"], r.gpus, r.tp_size, r.train["batch_size"], r.setting("grad_accum"))  # noqa: E731
    first = lambda exp: [layout(r) for r in exp.runs if r.repeat == 0]  # noqa: E731 (the tiny study has fewer repeats)
    assert first(tiny) == first(seed)
    assert all(r.train["model"] == "tiny" for r in tiny.runs)


def test_runs_grid_zip_and_repeats_multiply(tmp_path):
    exp = experiment.load(write(tmp_path, """
        name: sweep
        dataset: wikitext-2
        defaults: {model: tiny, seq_len: 64, steps: 10, warmup_steps: 1}
        runs: [{name: a, mode: ddp}, {name: b, mode: zero3}]
        grid: {batch_size: [8, 16]}
        zip: {gpus: [2, 4], tp_size: [1, 2]}
        repeats: 2
    """))
    names = [r.name for r in exp.runs]
    assert len(names) == len(set(names)) == 2 * 2 * 2 * 2
    assert "a-batch-size-16-gpus-4-tp-size-2-r1" in names
    run = next(r for r in exp.runs if r.name == "b-batch-size-8-gpus-4-tp-size-2-r0")
    assert (run.train["mode"], run.train["batch_size"], run.gpus, run.tp_size, run.dp_size, run.repeat) == \
        ("zero3", 8, 4, 2, 2, 0)


@pytest.mark.parametrize("run_fields,where,field", [
    ("{name: x, mode: zero3, tp_size: 3, gpus: 4}", "run 'x'", "tp_size"),
    ("{name: x, mode: ddp, tp_size: 4, gpus: 2, nodes: 2}", "run 'x'", "tp_size"),  # TP across nodes
    ("{name: x, batch_size: 0}", "run 'x'", "batch_size"),
    ("{name: x, batchsize: 8}", "run 'x'", "batchsize"),
    ("{name: x, data: /etc}", "run 'x'", "data"),
    ("{name: x, model: gpt5}", "run 'x'", "model"),
    ("{name: x, mode: ddp, zero_stage: 3, gpus: 2}", "run 'x'", "zero_stage"),
    ("{name: x, mode: ddp, gpus: 2, seq_len: 512}", "run 'x'", "seq_len"),  # tiny has 256 positions
    ("{name: x, gpus: 0}", "run 'x'", "gpus"),
    ("{name: x, time_limit: 2h}", "run 'x'", "time_limit"),
    ("{name: ../../etc/x}", "run '../../etc/x'", "name"),
    ("{name: 'a;b'}", "run 'a;b'", "name"),
])
def test_invalid_runs_are_refused_naming_the_run_and_the_field(tmp_path, run_fields, where, field):
    path = write(tmp_path, f"""
        name: bad
        dataset: wikitext-2
        defaults: {{model: tiny, seq_len: 64, steps: 10, warmup_steps: 1}}
        runs: [{run_fields}]
    """)
    with pytest.raises(experiment.ExperimentError) as caught:
        experiment.load(path)
    assert str(caught.value).startswith(f"{where}: {field}: ")


def test_duplicate_names_and_unequal_zips_are_refused(tmp_path):
    dup = write(tmp_path, "name: d\ndataset: w\nruns: [{name: a}, {name: a}]\n")
    with pytest.raises(experiment.ExperimentError, match="appears twice"):
        experiment.load(dup)
    zipped = write(tmp_path, "name: z\ndataset: w\nzip: {gpus: [1, 2], batch_size: [8]}\n")
    with pytest.raises(experiment.ExperimentError, match="zip: all lists"):
        experiment.load(zipped)


def test_the_seed_names_are_aliases_and_the_plan_shows_the_new_ones(tmp_path):
    path = write(tmp_path, """
        name: old
        dataset: wikitext-2
        defaults: {model: tiny, seq_len: 64, steps: 10, warmup_steps: 1}
        runs: [{name: a, mode: baseline, gpus: 2}, {name: b, mode: hybrid, gpus: 2}]
    """)
    assert [r.mode for r in experiment.load(path).runs] == ["ddp", "zero3"]
    proc = subprocess.run([sys.executable, "-m", "hpml_core.cli", "plan", str(path)], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("│")[1:3] for line in proc.stdout.splitlines() if line.startswith("│")]
    assert [[cell.strip() for cell in row] for row in rows] == [["a", "ddp"], ["b", "zero3"]]
    assert "baseline" not in proc.stdout and "hybrid" not in proc.stdout


def test_plan_checks_the_prepared_data_of_the_site_and_says_so(tmp_path, token_data):
    """With the data prepared under the site's data_root, steps come from its real size and the
    plan says what was checked; without, it says what was assumed."""
    path = write(tmp_path, f"""
        name: epoch
        dataset: {token_data.name}
        defaults: {{model: tiny, seq_len: 64, warmup_steps: 1}}
        runs: [{{name: a, mode: ddp, gpus: 2, batch_size: 4}}]
    """)
    meta = DataMeta.read(token_data)
    exp = experiment.load(path, data_root=token_data.parent)
    assert exp.data == meta and exp.runs[0].steps == meta.num_samples(64) // 8
    site = tmp_path / "site.yaml"
    site.write_text(f"name: here\nscheduler: local\nproject_dir: .\nresults_root: {tmp_path}\n"
                    f"data_root: {token_data.parent}\n")
    proc = subprocess.run([sys.executable, "-m", "hpml_core.cli", "plan", str(path), "--site", str(site)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == (f"data: {token_data}: {meta.num_tokens} tokens, vocabulary "
                                            f"{meta.vocab_size} (checked: vocabulary, size)")
    assert f" {meta.num_samples(64) // 8} " in proc.stdout

    unprepared = experiment.load(path, data_root=tmp_path)
    assert unprepared.data is None and unprepared.runs[0].steps is None
    site.write_text(site.read_text().replace(str(token_data.parent), str(tmp_path)))
    proc = subprocess.run([sys.executable, "-m", "hpml_core.cli", "plan", str(path), "--site", str(site)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "1 epoch" in proc.stdout
    assert proc.stdout.splitlines()[-1] == (f"data: not prepared at {tmp_path / token_data.name}: vocabulary "
                                            "assumed GPT-2's 50257, data size not checked")


def test_a_corrupt_data_folder_is_refused_naming_the_dataset(tmp_path, token_data):
    broken = tmp_path / "data" / "broken"
    shutil.copytree(token_data, broken)
    with open(broken / "tokens.bin", "ab") as f:
        f.write(b"\0\0")
    path = write(tmp_path, "name: b\ndataset: broken\nruns: [{name: a}]\n")
    with pytest.raises(experiment.ExperimentError, match=r"^experiment exp.yaml: dataset: .*does not match meta.json"):
        experiment.load(path, data_root=tmp_path / "data")


def test_plan_command_prints_the_table_or_one_error_line(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "hpml_core.cli", "plan", "seed_study"], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and "dp2xtp2-b32" in ok.stdout and "625" in ok.stdout
    bad = write(tmp_path, "name: b\ndataset: w\nruns: [{name: x, mode: zero3, tp_size: 3, gpus: 4}]\n")
    proc = subprocess.run([sys.executable, "-m", "hpml_core.cli", "plan", str(bad)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "hpml plan: error: run 'x': tp_size: 3 does not divide the world size 4"]


def plan_rows(stdout: str) -> dict[str, list[str]]:
    """The plan table's rows by run name, each cell stripped."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in stdout.splitlines() if line.startswith("│")]
    return {row[0]: row for row in rows}


def test_plan_on_greene_predicts_memory_per_gpu_and_the_largest_batch_on_an_a100_40gb():
    """The issue's acceptance: for GPT-2 Large, each layout's predicted GiB per GPU, whether it
    fits an A100 40 GB (Greene's profile says so) and the largest batch per GPU that does."""
    proc = subprocess.run([sys.executable, "-m", "hpml_core.cli", "plan", "seed_study", "--site", "greene"], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "USER": "alice"})
    assert proc.returncode == 0, proc.stderr
    gpu = site.load("greene").gpu_memory()
    assert gpu.label == "A100 40GB"
    assert (f"GPU: A100 40GB, {gpu.total_gib:.1f} GiB (gpu_model a100-40gb: 40326 MiB as torch reports it"
            in proc.stdout)
    rows = plan_rows(proc.stdout)
    exp = experiment.load(EXPERIMENTS / "seed_study.yaml")
    assert set(rows) == {run.name for run in exp.runs}
    for run in exp.runs:
        resolved = exp.resolved(run)
        prediction = memory_model.predict(resolved.config, resolved.dims, resolved.layout)
        largest = fit.largest_batch(resolved.config, resolved.dims, resolved.layout, gpu)
        assert rows[run.name][-6:-3] == [f"{prediction.total_bytes / GIB:.1f}",
                                       "yes" if fit.fits(prediction, gpu) else "NO",
                                       str(largest) if largest else "none"], run.name
    # the five layouts each have a largest batch on one A100 40 GB
    layouts = ("single-r0", "ddp-4-r0", "zero3-4-r0", "dp2xtp2-b8-r0", "dp2xtp2-b32-r0")
    assert all(rows[name][-4].isdigit() for name in layouts)
    # how submit would send it: one job array per shape (1 and 4 GPUs, 2 hours)
    assert ("submit: 2 job array(s), one sbatch each: 1x1-02h00m00s (18 runs), 1x4-02h00m00s (12 runs); no limit "
            "on the tasks running at once (--max-concurrent M, or max_concurrent)") in proc.stdout.splitlines()


def test_plan_on_a_site_without_a_gpu_predicts_memory_but_judges_no_fit():
    proc = subprocess.run([sys.executable, "-m", "hpml_core.cli", "plan", "tiny_study"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert all(row[-5:-3] == ["n/a", "n/a"] and float(row[-6]) >= 0 for row in plan_rows(proc.stdout).values())
    assert ("GPU: n/a: site local names no GPU (gpu_model in its profile): GiB/GPU is predicted for a CUDA GPU; "
            "the fit is not judged") in proc.stdout.splitlines()
    assert "submit: " not in proc.stdout  # the local site runs them one after another: no arrays


def test_plan_explain_prints_each_prediction_line_by_line_with_its_formula():
    proc = subprocess.run([sys.executable, "-m", "hpml_core.cli", "plan", "seed_study", "--site", "greene", "--explain"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "USER": "alice"})
    assert proc.returncode == 0, proc.stderr
    exp = experiment.load(EXPERIMENTS / "seed_study.yaml")
    out = proc.stdout.splitlines()
    for run in exp.runs:
        resolved = exp.resolved(run)
        prediction = memory_model.predict(resolved.config, resolved.dims, resolved.layout)
        [head] = [i for i, line in enumerate(out) if run.name in line.split(": ")[0].split(", ")]
        assert out[head].endswith(f": {prediction.total_bytes / GIB:.1f} GiB per GPU (predicted)")
        shown = out[head + 1:head + 1 + len(prediction.lines)]
        assert [line.split()[0] for line in shown] == [line.name.split()[0] for line in prediction.lines]
        assert all(line.formula in text and f"{line.bytes / GIB:.1f} GiB" in text
                   for line, text in zip(prediction.lines, shown))
        # then the step's arithmetic and its predicted parts, in ms, adding up to the step
        greene = site.load("greene")
        step = predict_step(resolved.config, resolved.dims, resolved.layout, run.gpus, greene.gpu(),
                            greene.performance())
        parts = out[head + 2 + len(prediction.lines):]
        parts = parts[:next(i for i, line in enumerate(parts) if line.strip().startswith("step "))]
        named = {line.split()[0]: float(line.split()[1]) for line in parts}
        assert named["forward"] == pytest.approx(step.parts_s["forward"] * 1e3, abs=1e-3)
        assert sum(named.values()) == pytest.approx(step.step_s * 1e3, abs=0.01)
        if run.mode == "ddp" and run.world_size > 1:
            assert "all-reduce" in named and "hidden by overlap" in "\n".join(parts)


MAX_BATCH_STUDY = """\
name: maxb
dataset: wikitext-103
defaults: {model: gpt2-large, seq_len: 1024, precision: bf16, grad_ckpt: true, steps: 100}
runs:
  - {name: single-max, mode: single, batch_size: max}
  - {name: dp2xtp2-max, mode: zero3, tp_size: 2, gpus: 4, batch_size: max}
"""


def test_batch_size_max_is_the_largest_batch_predicted_to_fit_the_sites_gpu(tmp_path):
    path = write(tmp_path, MAX_BATCH_STUDY)
    gpu = site.load("greene").gpu_memory()
    exp = experiment.load(path, gpu=gpu)
    for run in exp.runs:
        resolved = exp.resolved(run)
        at_one = resolved.config.model_copy(update={"batch_size": 1})
        assert run.batch_chosen and run.train["batch_size"] == fit.largest_batch(at_one, resolved.dims,
                                                                                resolved.layout, gpu)
        assert fit.fits(memory_model.predict(resolved.config, resolved.dims, resolved.layout), gpu)
    assert exp.runs[1].train["batch_size"] > exp.runs[0].train["batch_size"]  # DP×TP holds a quarter of the state
    proc = subprocess.run([sys.executable, "-m", "hpml_core.cli", "plan", str(path), "--site", "greene"], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "USER": "alice"})
    assert proc.returncode == 0, proc.stderr
    assert plan_rows(proc.stdout)["single-max"][5] == f"{exp.runs[0].train['batch_size']} (max)"


def test_batch_size_max_without_a_gpu_or_room_for_one_sample_is_refused_in_one_line(tmp_path):
    path = write(tmp_path, MAX_BATCH_STUDY)
    proc = subprocess.run([sys.executable, "-m", "hpml_core.cli", "plan", str(path), "--site", "local"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "hpml plan: error: run 'single-max': batch_size: max needs the site's GPU to fit the batch to (site local "
        "names no GPU (gpu_model in its profile))"]
    small = tmp_path / "small.yaml"
    small.write_text("name: small\nscheduler: slurm\nproject_dir: .\nresults_root: r\ndata_root: d\n"
                     "gpu_type: a10\ngpu_memory_gib: 4\n")
    proc = subprocess.run([sys.executable, "-m", "hpml_core.cli", "plan", str(path), "--site", str(small)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "hpml plan: error: run 'single-max': batch_size: max: not even a batch of 1 is predicted to fit the 4.0 GiB "
        "of A10"]


def test_repeats_on_the_command_line_stand_in_for_the_files(capsys):
    """``--repeats N`` (``make demo REPEATS=3``): N runs of each configuration, the first ones
    named as the file's own repeats, so a third repeat adds to the two already run; below 1 it is
    refused in one line naming the option."""
    from hpml_core.cli import main

    file_runs = [run.name for run in experiment.load(EXPERIMENTS / "tiny_study.yaml").runs]
    three = [run.name for run in experiment.load(EXPERIMENTS / "tiny_study.yaml", repeats=3).runs]
    assert len(three) == len(file_runs) // 2 * 3 and set(file_runs) < set(three)
    assert {name.rsplit("-", 1)[1] for name in three} == {"r0", "r1", "r2"}
    assert main(["plan", "tiny_study", "--repeats", "3"]) == 0
    assert set(three) <= set(plan_rows(capsys.readouterr().out))
    assert main(["plan", "tiny_study", "--repeats", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hpml plan: error: --repeats: 0: must be a whole number from 1"]
