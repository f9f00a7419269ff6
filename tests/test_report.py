"""`hpml report`: rank files (built from the schema, analysis/sample_rank_files.py) to tables, figures
and a page; every figure of summary.csv checked against a hand computation."""

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

SEQ = 1024


@pytest.fixture
def study(tmp_path):
    """The seed study's layouts, twice each (repeats: 2), with what goes wrong in real life:
    an OOM, a missing rank, a corrupt rank file, a run still running, one killed by the time
    limit, one never submitted."""
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
    site = tmp_path / "site.yaml"
    site.write_text(f"name: t\nscheduler: local\nproject_dir: .\nresults_root: {tmp_path / 'results'}\n"
                    f"data_root: {tmp_path}\n")
    folder = tmp_path / "results" / "study"
    one = dict(mode="single", world=1, tp=1, batch=8)
    write_run(folder, "single-r0", step_medians=[0.5], memory_gib=[20.0], losses=(9.0, 7.5), **one)
    write_run(folder, "single-r1", step_medians=[0.4], memory_gib=[22.0], losses=(9.0, 7.0), **one)
    four = dict(mode="ddp", world=4, tp=1, batch=8)
    write_run(folder, "ddp-4-r0", step_medians=[0.5, 0.55, 0.6, 0.52], memory_gib=[21, 21, 21, 23], **four)
    write_run(folder, "ddp-4-r1", **four)
    (folder / "ddp-4-r1" / "rank-2.json").write_text("{not json")
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
        "dp2xtp2-b32-r1": {"backend": "slurm", "job_id": "8", "state": "TIMEOUT", "attempts": 1},
    }}))
    write_run(folder, "big-r0", status="oom", mode="single", world=1, tp=1, batch=64,
              error="out of memory at batch size 64 per rank: CUDA out of memory")
    # big-r1: never submitted, no files at all
    return exp, site, folder


def test_every_figure_of_the_summary_matches_a_hand_computation(study, capsys):
    exp, site, folder = study
    assert main([str(exp), "--site", str(site)]) == 0
    summary = pd.read_csv(folder / "report" / "summary.csv").set_index("configuration")

    single = [8 * SEQ / 0.5, 8 * SEQ / 0.4]  # 16384 and 20480 tokens/s
    t1 = (single[0] + single[1]) / 2
    row = summary.loc["single"]
    assert (row.status, row.runs_completed, row.runs_total) == ("completed", 2, 2)
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
    assert (row.status, row.runs_completed) == ("1/2 completed", 1)
    assert "ddp-4-r1: incomplete (rank files missing: 2)" in row.reason
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
    assert "zero3-4-r1: incomplete (rank files missing: 3)" in row.reason
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
    assert (row.status, row.runs_completed) == ("running, timeout", 0)
    assert "dp2xtp2-b32-r0: running (step 4/10)" in row.reason and "dp2xtp2-b32-r1: timeout" in row.reason
    assert math.isnan(row.tokens_per_s_median) and math.isnan(row.scaling_efficiency)
    row = summary.loc["big"]
    assert row.status == "oom, missing"
    assert "big-r0: oom (rank 0: out of memory at batch size 64" in row.reason
    assert "big-r1: missing (no rank files (never submitted))" in row.reason

    runs = pd.read_csv(folder / "report" / "runs.csv").set_index("run")
    assert len(runs) == 12
    assert runs.loc["big-r0", "status"] == "oom" and runs.loc["big-r1", "status"] == "missing"
    assert runs.loc["dp2xtp2-b32-r0", "status"] == "running" and runs.loc["dp2xtp2-b32-r1", "status"] == "timeout"
    assert runs.loc["ddp-4-r1", "status"] == "incomplete"

    markdown = (folder / "report" / "summary.md").read_text()
    assert "| Configuration | Description | Memory (GiB/GPU) | MFU |" in markdown
    assert f"{folder / 'ddp-4-r1' / 'rank-2.json'}: does not match the rank-file schema (not JSON)" in markdown
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


def test_the_current_attempt_wins_over_the_rank_files_of_the_last(tmp_path):
    """A resubmitted run that is running again, or requeued and waiting, is not reported with
    its previous attempt's ending."""
    from analysis.collect import collect

    write_run(tmp_path, "again", status="failed", error="RuntimeError: boom", mode="single", world=1, tp=1, batch=8)
    write_run(tmp_path, "requeued", status="stopped", error="stopped by SIGUSR1; checkpoint saved", mode="single",
              world=1, tp=1, batch=8)
    for run, state in (("again", "running"), ("requeued", "stopped")):
        (tmp_path / run / "status.json").write_text(json.dumps(
            {"state": state, "step": 3, "total_steps": 10, "error": None, "started_at": 0, "updated_at": 1}))
    (tmp_path / "ledger.json").write_text(json.dumps({"runs": {
        "again": {"backend": "slurm", "job_id": "9", "state": "RUNNING"},
        "requeued": {"backend": "slurm", "job_id": "10", "state": "PENDING"}}}))
    results, problems = collect(tmp_path, {"again": 1, "requeued": 1}, repeated=False)
    assert not problems
    assert [(r.status, r.reason) for r in results] == [
        ("running", "step 3/10"), ("pending", "Slurm: PENDING; last attempt: stopped at step 3/10")]


def test_without_an_experiment_every_one_with_results_is_reported_even_before_any_rank_file(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(f"name: t\nscheduler: local\nproject_dir: .\nresults_root: {tmp_path / 'results'}\n"
                    f"data_root: {tmp_path}\n")
    (tmp_path / "results" / "tiny_study").mkdir(parents=True)  # submitted, nothing written yet
    assert main(["--site", str(site)]) == 0
    report = tmp_path / "results" / "tiny_study" / "report"
    runs = pd.read_csv(report / "runs.csv")
    assert len(runs) == 5 and set(runs["status"]) == {"missing"}
    assert {p.name for p in report.glob("*.png")} == {"throughput.png", "memory.png", "mfu_vs_batch.png", "loss.png"}
    assert not (tmp_path / "results" / "seed_study").exists()  # no results, no report


def test_rank_files_written_with_the_seed_mode_names_read_as_ddp_and_zero3(tmp_path):
    """Results from before the rename say baseline and hybrid: the report names them DDP and ZeRO-3."""
    from analysis import aggregate
    from analysis.collect import collect

    write_run(tmp_path, "old-ddp", mode="ddp", world=2, tp=1, batch=8)
    write_run(tmp_path, "old-zero3", mode="zero3", world=2, tp=1, batch=8)
    for run, new, old in (("old-ddp", "ddp", "baseline"), ("old-zero3", "zero3", "hybrid")):
        for path in (tmp_path / run).glob("rank-*.json"):
            text = path.read_text()
            assert f'"mode": "{new}"' in text
            path.write_text(text.replace(f'"mode": "{new}"', f'"mode": "{old}"'))
    results, problems = collect(tmp_path, {"old-ddp": 2, "old-zero3": 2}, repeated=False)
    assert not problems and [r.status for r in results] == ["completed", "completed"]
    runs = aggregate.runs_table(results).set_index("run")
    assert list(runs["mode"]) == ["ddp", "zero3"]
    assert runs.loc["old-ddp", "description"].startswith("DDP on 2 GPUs")
    assert runs.loc["old-zero3", "description"].startswith("ZeRO-3 on 2 GPUs")
