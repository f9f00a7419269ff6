"""`hpml report`: rank files (built from the schema, analysis/sample_rank_files.py) to tables, figures
and a page; every figure of summary.csv checked against a hand computation, a run assembled from
its attempts, and the states decided as `hpml status` decides them (Slurm's answers are set by
the test: `slurm_says`)."""

from __future__ import annotations

import json
import math
import os
import shutil
import textwrap

import pandas as pd
import pytest

from analysis.report import main
from analysis.sample_rank_files import A100_BF16_PEAK, FLOPS_PER_TOKEN, write_run
from jobs import slurm_query

SEQ = 1024


@pytest.fixture
def slurm_says(monkeypatch):
    """What Slurm answers about jobs, set by the test: job id -> state; an exception: no answer."""
    answers: dict = {}

    def query(job_ids):
        if isinstance(answers.get("error"), Exception):
            raise answers["error"]
        return {job: slurm_query.JobInfo(job, answers[job], "0:10", "n1", "sacct") for job in job_ids
                if job in answers}

    monkeypatch.setattr(slurm_query, "query", query)
    return answers


@pytest.fixture
def study(tmp_path, slurm_says):
    """The seed study's layouts, twice each (repeats: 2), with what goes wrong in real life:
    an OOM, a missing rank, a corrupt rank file, a run still running, one killed by the time
    limit (which the ledger still records as running: the report asks Slurm), one never
    submitted."""
    exp = tmp_path / "study.yaml"
    exp.write_text(textwrap.dedent("""
        name: study
        dataset: wikitext-103
        defaults: {model: gpt2-large, seq_len: 1024, precision: bf16, steps: 10, time_limit: "01:00:00"}
        repeats: 2
        runs:
          - {name: single, mode: single, gpus: 1, batch_size: 8}
          - {name: ddp-4, mode: ddp, gpus: 4, batch_size: 8}
          - {name: zero3-4, mode: zero3, gpus: 4, batch_size: 8}
          - {name: dp2xtp2-b8, mode: zero3, tp_size: 2, gpus: 4, batch_size: 8}
          - {name: dp2xtp2-b32, mode: zero3, tp_size: 2, gpus: 4, batch_size: 32}
          - {name: big, mode: single, gpus: 1, batch_size: 64}
    """))
    site = local_site(tmp_path)
    folder = tmp_path / "results" / "study"
    one = dict(mode="single", world=1, tp=1, batch=8)
    write_run(folder, "single-r0", step_medians=[0.5], memory_gib=[20.0], losses=(9.0, 7.5), **one)
    write_run(folder, "single-r1", step_medians=[0.4], memory_gib=[22.0], losses=(9.0, 7.0), **one)
    four = dict(mode="ddp", world=4, tp=1, batch=8)
    write_run(folder, "ddp-4-r0", step_medians=[0.5, 0.55, 0.6, 0.52], memory_gib=[21, 21, 21, 23], **four)
    write_run(folder, "ddp-4-r1", **four)
    (folder / "ddp-4-r1" / "attempts" / "1" / "rank-2.json").write_text("{not json")
    zero = dict(mode="zero3", world=4, tp=1, batch=8)
    write_run(folder, "zero3-4-r0", step_medians=[0.8] * 4, memory_gib=[19, 20, 20, 21], **zero)
    write_run(folder, "zero3-4-r1", ranks=[0, 1, 2], step_medians=[0.8] * 4, **zero)
    dp_tp = dict(mode="zero3", world=4, tp=2, batch=8)
    write_run(folder, "dp2xtp2-b8-r0", step_medians=[0.3, 0.3, 0.32, 0.3], memory_gib=[6, 6, 6.5, 6], **dp_tp)
    write_run(folder, "dp2xtp2-b8-r1", step_medians=[0.34, 0.3, 0.3, 0.3], memory_gib=[6, 6, 6, 6], **dp_tp)
    (folder / "dp2xtp2-b32-r0").mkdir(parents=True)
    (folder / "dp2xtp2-b32-r0" / "status.json").write_text(json.dumps(
        {"state": "running", "step": 4, "total_steps": 10, "error": None, "started_at": 0, "updated_at": 1}))
    (folder / "dp2xtp2-b32-r1").mkdir(parents=True)
    (folder / "dp2xtp2-b32-r1" / "status.json").write_text(json.dumps(
        {"state": "running", "step": 7, "total_steps": 10, "error": None, "started_at": 0, "updated_at": 1}))
    (folder / "ledger.json").write_text(json.dumps({"runs": {
        "dp2xtp2-b32-r0": {"backend": "slurm", "job_id": "7", "state": "RUNNING", "attempts": 1},
        "dp2xtp2-b32-r1": {"backend": "slurm", "job_id": "8", "state": "RUNNING", "attempts": 1},
    }}))
    slurm_says.update({"7": "RUNNING", "8": "TIMEOUT"})
    write_run(folder, "big-r0", status="oom", mode="single", world=1, tp=1, batch=64,
              error="out of memory at batch size 64 per rank: CUDA out of memory")
    # big-r1: never submitted, no files at all
    return exp, site, folder


def local_site(tmp_path):
    """A site profile without Slurm whose results live in tmp_path/results."""
    site = tmp_path / "site.yaml"
    site.write_text(f"name: t\nscheduler: local\nproject_dir: .\nresults_root: {tmp_path / 'results'}\n"
                    f"data_root: {tmp_path}\n")
    return site


def test_every_figure_of_the_summary_matches_a_hand_computation(study, capsys):
    exp, site, folder = study
    assert main([str(exp), "--site", str(site)]) == 0
    summary = pd.read_csv(folder / "report" / "summary.csv").set_index("configuration")

    single = [8 * SEQ / 0.5, 8 * SEQ / 0.4]  # 16384 and 20480 tokens/s
    t1 = (single[0] + single[1]) / 2
    row = summary.loc["single"]
    assert (row.status, row.runs_completed, row.runs_total) == ("COMPLETED", 2, 2)
    assert row.tokens_per_s_median == pytest.approx(t1)
    assert (row.tokens_per_s_min, row.tokens_per_s_max) == pytest.approx((single[0], single[1]))
    assert row.samples_per_s_median == pytest.approx((8 / 0.5 + 8 / 0.4) / 2)
    assert row.mfu_median == pytest.approx(FLOPS_PER_TOKEN * t1 / 1e12 / A100_BF16_PEAK)
    assert row.peak_memory_per_gpu_max_gib_median == pytest.approx(21.0)
    assert row.final_loss_median == pytest.approx(7.25)
    assert (row.baseline, row.scaling_efficiency, row.speedup) == ("single", pytest.approx(1.0), pytest.approx(1.0))

    # DDP on 4: the slowest rank (0.6 s) sets the pace; repeat r1 has a corrupt rank file.
    ddp = 4 * 8 * SEQ / 0.6
    row = summary.loc["ddp-4"]
    assert (row.status, row.runs_completed) == ("1/2 COMPLETED", 1)
    assert "ddp-4-r1: FAILED (the rank file of rank(s) 2 is unreadable)" in row.reason
    assert row.tokens_per_s_median == pytest.approx(ddp)
    assert row.tokens_per_s_per_gpu_median == pytest.approx(ddp / 4)
    assert row.scaling_efficiency == pytest.approx(ddp / (4 * t1))
    assert row.speedup == pytest.approx(ddp / t1)
    assert row.mfu_median == pytest.approx(FLOPS_PER_TOKEN * ddp / 4 / 1e12 / A100_BF16_PEAK)
    assert row.peak_memory_per_gpu_max_gib_median == pytest.approx(23.0)
    assert row.peak_memory_per_gpu_mean_gib_median == pytest.approx(21.5)
    assert row.memory_reduction == pytest.approx(1 - 23.0 / 21.0)

    zero = 4 * 8 * SEQ / 0.8
    row = summary.loc["zero3-4"]
    assert "zero3-4-r1: FAILED (no rank file from rank(s) 3: killed before writing it)" in row.reason
    assert (row.tokens_per_s_median, row.tokens_per_s_min, row.tokens_per_s_max) == pytest.approx((zero,) * 3)
    assert row.samples_per_s_median == pytest.approx(32 / 0.8)
    assert row.tokens_per_s_per_gpu_median == pytest.approx(zero / 4)
    assert row.mfu_median == pytest.approx(FLOPS_PER_TOKEN * zero / 4 / 1e12 / A100_BF16_PEAK)
    assert row.peak_memory_per_gpu_max_gib_median == pytest.approx(21.0)
    assert row.peak_memory_per_gpu_mean_gib_median == pytest.approx(20.0)
    assert row.final_loss_median == pytest.approx(7.0)
    assert (row.baseline, row.scaling_efficiency) == ("single", pytest.approx(zero / (4 * t1)))
    assert row.memory_reduction == pytest.approx(0.0)

    # DP 2 x TP 2: 2 replicas of batch 8 per step, whatever the 4 ranks say: TP ranks count once.
    dp_tp = [2 * 8 * SEQ / 0.32, 2 * 8 * SEQ / 0.34]
    row = summary.loc["dp2xtp2-b8"]
    assert row.tokens_per_s_median == pytest.approx(sum(dp_tp) / 2)
    assert (row.tokens_per_s_min, row.tokens_per_s_max) == pytest.approx((dp_tp[1], dp_tp[0]))
    assert row.tokens_per_s_per_gpu_median == pytest.approx(sum(dp_tp) / 2 / 4)
    assert row.mfu_median == pytest.approx(FLOPS_PER_TOKEN * sum(dp_tp) / 2 / 4 / 1e12 / A100_BF16_PEAK)
    assert row.peak_memory_per_gpu_mean_gib_median == pytest.approx((6.125 + 6.0) / 2)
    assert row.speedup == pytest.approx(sum(dp_tp) / 2 / t1)
    assert row.samples_per_s_median == pytest.approx((16 / 0.32 + 16 / 0.34) / 2)
    assert row.scaling_efficiency == pytest.approx(sum(dp_tp) / 2 / (4 * t1))
    assert row.peak_memory_per_gpu_max_gib_median == pytest.approx((6.5 + 6.0) / 2)
    assert row.memory_reduction == pytest.approx(1 - 6.25 / 21.0)

    row = summary.loc["dp2xtp2-b32"]
    assert (row.status, row.runs_completed) == ("RUNNING, TIMEOUT", 0)
    assert "dp2xtp2-b32-r0: RUNNING (Slurm (sacct): RUNNING; running, step 4/10)" in row.reason
    assert "dp2xtp2-b32-r1: TIMEOUT (Slurm (sacct): TIMEOUT; ended at step 7/10)" in row.reason
    assert math.isnan(row.tokens_per_s_median) and math.isnan(row.scaling_efficiency)
    row = summary.loc["big"]
    assert row.status == "OUT_OF_MEMORY, NOT_SUBMITTED"
    assert "big-r0: OUT_OF_MEMORY (rank 0: out of memory at batch size 64" in row.reason
    assert "big-r1: NOT_SUBMITTED" in row.reason

    runs = pd.read_csv(folder / "report" / "runs.csv", dtype={"job_ids": str}).set_index("run")
    assert len(runs) == 12
    assert runs.loc["big-r0", "status"] == "OUT_OF_MEMORY" and runs.loc["big-r1", "status"] == "NOT_SUBMITTED"
    assert runs.loc["dp2xtp2-b32-r0", "status"] == "RUNNING" and runs.loc["dp2xtp2-b32-r1", "status"] == "TIMEOUT"
    assert runs.loc["ddp-4-r1", "status"] == "FAILED"
    assert (runs.loc["single-r0", "attempts"], runs.loc["single-r0", "job_ids"]) == (1, "1")
    assert runs.loc["big-r1", "attempts"] == 0
    # The report asked Slurm, and recorded its word as `hpml status` does.
    ledger = json.loads((folder / "ledger.json").read_text())["runs"]
    assert (ledger["dp2xtp2-b32-r1"]["state"], ledger["dp2xtp2-b32-r1"]["state_from"]) == ("TIMEOUT", "sacct")

    markdown = (folder / "report" / "summary.md").read_text()
    assert "| Configuration | Description | Memory (GiB/GPU) | MFU |" in markdown
    assert "States:" not in markdown  # Slurm answered
    corrupt = folder / "ddp-4-r1" / "attempts" / "1" / "rank-2.json"
    assert f"{corrupt}: does not match the rank-file schema (not JSON)" in markdown
    assert "DP 2 (ZeRO-3) x TP 2 on 4 GPUs, batch 8/GPU, bf16" in markdown
    assert "Peak used for MFU: A100 SXM bf16 dense, 312 TFLOP/s (single, ddp-4, zero3-4, dp2xtp2-b8)." in markdown
    assert "Step time: CUDA events." in markdown
    tex = (folder / "report" / "summary.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and "dp2xtp2-b8" in tex
    out = capsys.readouterr().out
    assert "single" in out and "report.html" in out and str(folder / "report") in out


def test_scaling_efficiency_is_missing_without_a_matching_baseline(study):
    exp, site, folder = study
    shutil.rmtree(folder / "single-r0")
    shutil.rmtree(folder / "single-r1")
    assert main([str(exp), "--site", str(site)]) == 0
    summary = pd.read_csv(folder / "report" / "summary.csv").set_index("configuration")
    assert summary["scaling_efficiency"].isna().all()
    assert "no single-GPU run" in summary.loc["ddp-4", "baseline_note"]
    assert "scaling efficiency n/a" in (folder / "report" / "summary.md").read_text()


def test_a_report_replaces_the_old_one_only_when_complete(study):
    exp, site, folder = study
    assert main([str(exp), "--site", str(site)]) == 0
    first = (folder / "report" / "summary.csv").read_text()
    assert main([str(exp), "--site", str(site)]) == 0
    assert (folder / "report" / "summary.csv").read_text() == first
    assert not [p for p in folder.iterdir() if p.name.startswith(".report")]


def test_unknown_experiment_is_a_usage_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def _chromium() -> str | None:
    return next((path for path in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if path), None)


def test_report_html_opens_in_headless_chromium_with_every_figure_drawn(study):
    """Every figure embedded, decoded and not blank (pixels drawn into a canvas differ), and no
    console error: the page is read offline, from the file."""
    browser, driver_path = _chromium(), shutil.which("chromedriver")
    if not (browser and driver_path):
        message = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("HPML_CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    exp, site, folder = study
    assert main([str(exp), "--site", str(site)]) == 0
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get((folder / "report" / "report.html").as_uri())
        images = driver.execute_script("""
            return Array.from(document.images).map(img => {
                const canvas = document.createElement('canvas');
                canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
                const context = canvas.getContext('2d');
                context.drawImage(img, 0, 0);
                const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
                const colours = new Set();
                for (let i = 0; i < pixels.length && colours.size < 10; i += 4 * 97) colours.add(pixels.slice(i, i + 4).join());
                return {alt: img.alt, complete: img.complete, width: img.naturalWidth, colours: colours.size};
            });""")
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert sorted(image["alt"] for image in images) == ["loss", "memory", "mfu_vs_batch", "throughput"]
    assert all(image["complete"] and image["width"] > 100 and image["colours"] > 2 for image in images), images
    assert errors == []


def test_the_current_attempt_wins_over_the_rank_files_of_the_last(tmp_path, slurm_says):
    """A resubmitted run that is running again, or requeued and waiting, is not reported with
    its previous attempt's ending."""
    from analysis.collect import collect

    write_run(tmp_path, "again", status="failed", error="RuntimeError: boom", mode="single", world=1, tp=1, batch=8)
    write_run(tmp_path, "requeued", status="stopped", error="stopped by SIGUSR1; checkpoint saved", mode="single",
              world=1, tp=1, batch=8)
    for run, state in (("again", "running"), ("requeued", "stopped")):
        (tmp_path / run / "status.json").write_text(json.dumps(
            {"state": state, "attempt": 1, "step": 3, "total_steps": 10, "error": None, "started_at": 0,
             "updated_at": 1}))
    (tmp_path / "ledger.json").write_text(json.dumps({"runs": {
        "again": {"backend": "slurm", "job_id": "9", "state": "PENDING", "first_attempt": 2},
        "requeued": {"backend": "slurm", "job_id": "10", "state": "RUNNING", "first_attempt": 1}}}))
    slurm_says.update({"9": "RUNNING", "10": "REQUEUED"})
    results, problems, note = collect(tmp_path, {"again": 1, "requeued": 1}, repeated=False)
    assert not problems and note is None
    assert [(r.status, r.reason) for r in results] == [
        ("RUNNING", "Slurm (sacct): RUNNING; running, step 3/10"),
        ("PENDING", "Slurm (sacct): REQUEUED; last attempt: stopped, step 3/10")]


def test_when_slurm_does_not_answer_the_states_are_as_last_recorded_and_the_notes_say_so(tmp_path, slurm_says):
    site = local_site(tmp_path)
    exp = tmp_path / "quiet.yaml"
    exp.write_text("name: quiet\ndataset: d\ndefaults: {model: gpt2-large, steps: 10}\n"
                   "runs: [{name: queued, mode: single}, {name: done, mode: single}]\n")
    folder = tmp_path / "results" / "quiet"
    write_run(folder, "done", mode="single", world=1, tp=1, batch=8)
    (folder / "ledger.json").write_text(json.dumps({"runs": {
        "queued": {"backend": "slurm", "job_id": "7", "state": "PENDING"},
        "done": {"backend": "slurm", "job_id": "8", "state": "RUNNING"}}}))
    slurm_says["error"] = slurm_query.SlurmError("sacct did not answer within 30 s; and squeue did not answer")
    assert main([str(exp), "--site", str(site)]) == 0
    runs = pd.read_csv(folder / "report" / "runs.csv").set_index("run")
    assert (runs.loc["queued", "status"], runs.loc["queued", "reason"]) == (
        "PENDING", "as last recorded: Slurm did not answer; waiting")
    assert runs.loc["done", "status"] == "COMPLETED"  # its rank files say so, Slurm or not
    assert ("- States: Slurm did not answer (sacct did not answer within 30 s; and squeue did not answer): "
            "states as last recorded.") in (folder / "report" / "summary.md").read_text()


def test_a_run_is_assembled_from_all_its_attempts(tmp_path, slurm_says):
    """'resumed': attempt 1 (job 101 on n1) stopped after steps 0-7, three of them timed;
    attempt 2 (job 102 on n2) resumed at step 6 and completed 6-9, all warm-up. 'gapped':
    attempt 1 failed after steps 0-2, attempt 2 completed 5-9 (steps 3 and 4 recorded by none)."""
    site = local_site(tmp_path)
    exp = tmp_path / "attempts.yaml"
    exp.write_text("name: attempts\ndataset: d\ndefaults: {model: gpt2-large, steps: 10}\n"
                   "runs: [{name: resumed, mode: ddp, gpus: 2, batch_size: 8}, {name: gapped, mode: single}]\n")
    folder = tmp_path / "results" / "attempts"
    two = dict(mode="ddp", world=2, tp=1, batch=8)
    write_run(folder, "resumed", attempt=1, status="stopped", error="stopped by SIGUSR1; checkpoint saved",
              losses=(9.0, 8.0, 7.0, 6.0, 5.0, 4.5, 4.0, 3.5), timed=3, step_medians=[0.5, 0.6],
              memory_gib=[12.0, 11.0], job_id="101", node_list="n1", **two)
    write_run(folder, "resumed", attempt=2, start_step=6, losses=(4.1, 3.6, 3.2, 3.0), timed=0,
              memory_gib=[13.0, 13.0], job_id="102", node_list="n2", **two)
    one = dict(mode="single", world=1, tp=1, batch=8, job_id=None)
    write_run(folder, "gapped", attempt=1, status="failed", error="RuntimeError: boom", losses=(9.0, 8.0, 7.0), **one)
    write_run(folder, "gapped", attempt=2, start_step=5, losses=(5.0, 4.0, 3.0, 2.0, 1.0), step_medians=[0.25], **one)
    assert main([str(exp), "--site", str(site)]) == 0
    report = folder / "report"

    loss = pd.read_csv(report / "loss.csv")
    resumed = loss[loss["run"] == "resumed"]
    assert list(resumed["step"]) == list(range(10))
    assert list(resumed["loss"]) == [9.0, 8.0, 7.0, 6.0, 5.0, 4.5, 4.1, 3.6, 3.2, 3.0]  # attempt 2 wins on 6, 7
    assert list(resumed["attempt"]) == [1] * 6 + [2] * 4
    gapped = loss[loss["run"] == "gapped"]
    assert list(gapped["step"]) == [0, 1, 2, 5, 6, 7, 8, 9] and list(gapped["attempt"]) == [1] * 3 + [2] * 5

    times = pd.read_csv(report / "step_times.csv")
    assert [tuple(row) for row in times[times["run"] == "resumed"][["attempt", "rank", "step", "step_time_s"]]
            .itertuples(index=False)] == [(1, 0, 5, 0.5), (1, 0, 6, 0.5), (1, 0, 7, 0.5),
                                          (1, 1, 5, 0.6), (1, 1, 6, 0.6), (1, 1, 7, 0.6)]
    assert list(times[times["run"] == "gapped"]["step"]) == [5, 6, 7, 8, 9]
    assert set(times[times["run"] == "gapped"]["attempt"]) == {2}

    runs = pd.read_csv(report / "runs.csv", dtype={"job_ids": str}).set_index("run")
    row = runs.loc["resumed"]
    assert (row.status, row.attempts, row.job_ids, row.node_lists) == ("COMPLETED", 2, "101;102", "n1;n2")
    assert row.throughput_attempt == 1
    assert row.tokens_per_s == pytest.approx(2 * 8 * SEQ / 0.6)  # attempt 1's slowest rank
    assert row.peak_memory_per_gpu_max_gib == pytest.approx(12.0)  # attempt 1's, where the steps were timed
    assert row.final_loss == pytest.approx(3.0)
    assert row.steps_completed == 10
    row = runs.loc["gapped"]
    assert (row.status, row.attempts, row.job_ids, row.throughput_attempt) == ("COMPLETED", 2, "-;-", 2)
    assert row.tokens_per_s == pytest.approx(8 * SEQ / 0.25) and row.final_loss == pytest.approx(1.0)
    assert pd.isna(row.throughput_note)
    markdown = (report / "summary.md").read_text()
    assert ("- resumed: throughput from attempt 1 of 2 (attempt 2: every step left after resuming at "
            "step 6 was warm-up).") in markdown
    assert "gapped: throughput" not in markdown


def test_without_an_experiment_every_one_with_results_is_reported_even_before_any_rank_file(tmp_path):
    site = local_site(tmp_path)
    (tmp_path / "results" / "tiny_study").mkdir(parents=True)  # submitted, nothing written yet
    assert main(["--site", str(site)]) == 0
    report = tmp_path / "results" / "tiny_study" / "report"
    runs = pd.read_csv(report / "runs.csv")
    assert len(runs) == 5 and set(runs["status"]) == {"NOT_SUBMITTED"}
    assert {p.name for p in report.glob("*.png")} == {"throughput.png", "memory.png", "mfu_vs_batch.png", "loss.png"}
    assert not (tmp_path / "results" / "seed_study").exists()  # no results, no report


def test_rank_files_written_with_the_seed_mode_names_read_as_ddp_and_zero3(tmp_path):
    """Results from before the rename say baseline and hybrid: the report names them DDP and ZeRO-3."""
    from analysis import aggregate
    from analysis.collect import collect

    write_run(tmp_path, "old-ddp", mode="ddp", world=2, tp=1, batch=8)
    write_run(tmp_path, "old-zero3", mode="zero3", world=2, tp=1, batch=8)
    for run, new, old in (("old-ddp", "ddp", "baseline"), ("old-zero3", "zero3", "hybrid")):
        for path in (tmp_path / run).glob("attempts/1/rank-*.json"):
            text = path.read_text()
            assert f'"mode": "{new}"' in text
            path.write_text(text.replace(f'"mode": "{new}"', f'"mode": "{old}"'))
    results, problems, _ = collect(tmp_path, {"old-ddp": 2, "old-zero3": 2}, repeated=False)
    assert not problems and [r.status for r in results] == ["COMPLETED", "COMPLETED"]
    runs = aggregate.runs_table(results).set_index("run")
    assert list(runs["mode"]) == ["ddp", "zero3"]
    assert runs.loc["old-ddp", "description"].startswith("DDP on 2 GPUs")
    assert runs.loc["old-zero3", "description"].startswith("ZeRO-3 on 2 GPUs")
