"""``hpml tune``: the layouts that could run, ranked by the planner, and an experiment file of the
best that ``hpml plan`` accepts and ``hpml submit`` runs."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from hpml_core.cli import main
from jobs import experiment, site


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "tester")  # greene's paths name $USER
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_gpt2_large_on_4_gpus_lists_the_study_s_layouts_and_writes_a_plannable_experiment(here, capsys):
    assert main(["tune", "--model", "gpt2-large", "--gpus", "4", "--site", "greene", "--top", "3"]) == 0
    out = capsys.readouterr().out
    for row in ("zero3-dp4xtp1", "zero3-dp2xtp2", "ddp-dp4xtp1", "fsdp2-dp2xtp2", "zero1-dp4xtp1-", "-ckpt"):
        assert row in out, row
    written = here / "tuned_gpt2_large_1x4.yaml"
    spec = yaml.safe_load(written.read_text())
    multi = [run for run in spec["runs"] if run["gpus"] == 4]
    assert len(multi) == 3
    # each listed mode's 1-process baseline, at the same batch per GPU
    baselines = {(run["mode"], run["batch_size"]) for run in spec["runs"] if run["gpus"] == 1}
    assert baselines == {("single" if run["mode"] == "ddp" else run["mode"], run["batch_size"]) for run in multi}
    loaded = experiment.load(written, gpu=site.load("greene").gpu_memory())
    assert len(loaded.runs) == 2 * len(spec["runs"])  # two repeats
    assert main(["plan", str(written), "--site", "greene"]) == 0
    # every listed run fits the A100 40GB the site names, by the plan's own judgement
    table = capsys.readouterr().out
    assert " no " not in table.split("predicted: GiB/GPU")[0]


def test_layouts_that_cannot_run_are_left_out_with_their_reason(here, capsys):
    assert main(["tune", "--model", "gpt2-large", "--gpus", "8", "--nodes", "2", "--site", "greene", "--explain",
                 "--set", "gpu_memory_gib=12", "--global-batch", "64"]) == 0
    out = capsys.readouterr().out
    assert "left out: zero3, TP 8, checkpointing off: --tp-size: 8 does not divide the 20 attention heads" in out
    assert "left out: ddp, TP 1, checkpointing off: not even a batch of 1 is predicted to fit the 12.0 GiB" in out
    spec = yaml.safe_load((here / "tuned_gpt2_large_2x8.yaml").read_text())
    for run in spec["runs"]:
        if run["gpus"] == 8:  # the global batch reached by accumulation
            dp = 16 // run.get("tp_size", 1)
            assert dp * run["batch_size"] * run.get("grad_accum", 1) == 64


def test_bad_input_is_one_line(here, capsys):
    assert main(["tune", "--model", "gpt5", "--gpus", "4", "--site", "greene"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model" in err[0] and "gpt2-large" in err[0]
    assert not list(here.glob("*.yaml"))


def test_the_tuned_tiny_study_runs_here(here, token_data, capsys):
    """On the local site (CPU processes: no GPU memory to fit, the batch given; fp32, which a CPU
    computes natively), the written experiment is submitted and every run completes, and the report
    reads it."""
    profile = here / "site.yaml"
    profile.write_text(f"name: here\nscheduler: local\nproject_dir: .\nresults_root: {here / 'results'}\n"
                       f"data_root: {token_data.parent}\ndevice_tflops: 0.03\ndevice_memory_gb_per_s: 3.0\n")
    assert main(["tune", "--model", "tiny", "--gpus", "4", "--site", str(profile), "--top", "4", "--repeats", "1",
                 "--seq-len", "64", "--batch-size", "4", "--steps", "4", "--warmup-steps", "2", "--precision", "fp32",
                 "--dataset", token_data.name, "--name", "tuned"]) == 0
    assert "fit: not judged" in capsys.readouterr().out
    assert main(["submit", str(here / "tuned.yaml"), "--site", str(profile)]) == 0
    assert main(["report", str(here / "tuned.yaml"), "--site", str(profile)]) == 0
    summary = pd.read_csv(here / "results" / "tuned" / "report" / "summary.csv")
    assert set(summary["status"]) == {"COMPLETED"}
    assert summary["predicted_tokens_per_s_median"].notna().all()
    # the report checks the ranking: the four tuned layouts, by hand from summary.csv's figures
    tuned = summary[summary["world_size"] > 1].set_index("label")
    assert len(tuned) == 4
    predicted, measured = tuned["predicted_tokens_per_s_median"], tuned["tokens_per_s_median"]
    rho = predicted.rank().corr(measured.rank())
    best, chosen = measured.idxmax(), predicted.idxmax()
    verdict = ("the predicted best was the measured best" if best == chosen else
               f"the predicted best, {chosen}, measured {100 * (1 - measured[chosen] / measured[best]):.1f}% fewer "
               f"tokens/s than the measured best, {best}")
    page = (here / "results" / "tuned" / "report" / "summary.md").read_text()
    assert (f"The planner's ranking of the 4 multi-process configurations by tokens/s: {verdict}; Spearman's rank "
            f"correlation of predicted and measured {rho:+.2f}.") in " ".join(page.split())
