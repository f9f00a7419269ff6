"""`make gpu-check` in its reduced form on the CPU (the make target itself, with this
interpreter): every section runs as it will on a GPU (the benchmarks with the tiny model, the
gpu tests collected and skipped), and the summary and each benchmark's JSON hold what the GPU
measurement reports (the figures themselves need a GPU)."""

import json
import shutil
import statistics
import subprocess
import sys

import pytest

from hpml_core.bench import source
from tests.conftest import REPO, SHARED, engine


FP8 = "--precision bf16 --fp8 --batch-size 4"  # a row of its own, never the headline


@pytest.fixture(scope="module")
def gpu_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    arguments = (f"--reduced --shared {SHARED} --out {out} --engine-args '--precision fp32 --batch-size 4' "
                 f"--engine-args '--precision fp32 --batch-size 2' --engine-args '{FP8}'")
    done = subprocess.run(["make", "--no-print-directory", "gpu-check", "NO_VENV=1", f"PY={sys.executable}",
                           f"GPU_CHECK_ARGS={arguments}"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "gpu-check.json").read_text())
    return out, {section["name"]: section for section in summary["sections"]}


def test_every_section_ran_and_is_summarised(gpu_check):
    out, sections = gpu_check
    assert list(sections) == ["environment", "data", "bench", "planner", "profile", "tests", "tests-alone", "memory",
                              "peak"]
    assert all(section["status"] == "passed" for section in sections.values())
    markdown = (out / "gpu-check.md").read_text()
    assert all(f"## {name}" in markdown for name in sections)
    assert sections["environment"]["results"]["torch"] and sections["environment"]["results"]["gpus"] == 0
    # The gpu tests are collected and, without a GPU, skipped with the reason, not dropped.
    tests, alone = sections["tests"]["results"], sections["tests-alone"]["results"]
    assert len(tests) >= 10 and [t["test"] for t in alone] == [
        "test_a_batch_predicted_not_to_fit_runs_out_of_memory_and_says_so"]  # the one that fills the GPU, alone
    assert {t["outcome"] for t in tests + alone} == {"skipped"}
    assert all(t["why"] == "needs a CUDA GPU" for t in tests + alone)


def test_bench_compares_the_original_loop_with_each_engine_variant(gpu_check):
    out, sections = gpu_check
    report = sections["bench"]["results"]
    originals, variants = report["originals"], report["engines"]
    # The reduced form: the original loop at the study's batch (4) twice, the repeats, and at 2
    # once; each 16-bit engine variant once, the fastest once more, then the FP8 variant.
    assert [(o["settings"]["batch_size"], o["repeat"]) for o in originals] == [(4, 0), (4, 1), (2, 0)]
    first = variants[:2]
    assert [v["engine_args"] for v in first] == ["--precision fp32 --batch-size 4", "--precision fp32 --batch-size 2"]
    assert [v["settings"]["batch_size"] for v in first] == [4, 2]  # each variant's flags win over the default
    fastest = max(first, key=lambda v: v["tokens_per_s"])
    assert [(v["engine_args"], v["repeat"]) for v in variants[2:]] == [(fastest["engine_args"], 1), (FP8, 0)]
    assert variants[-1]["settings"]["fp8"] and not any(v["settings"]["fp8"] for v in variants[:-1])
    for result in (*originals, *variants):
        assert result["tokens_per_s"] > 0 and result["achieved_tflops_per_s"] > 0 and result["peak_memory_bytes"] > 0
        assert result["mfu"] is None and "cpu" in result["mfu_missing_reason"]  # no GPU peak: missing, not guessed
        assert result["joules_per_token"] is None and "cpu device" in result["energy_missing_reason"]
        assert len(result["losses"]) == 6
        assert result["tokens_per_s"] == 64 * result["settings"]["batch_size"] / result["step_time_median_s"]
        # Both peaks cover the same span, the timed steps (hpml_core.memory), in the same metric.
        assert result["memory_metric"] == "cpu_rss_hwm"
        # --vocab-size gives both models the same vocabulary, so the same FLOP count.
        assert result["flops_per_token"] == originals[0]["flops_per_token"]
    study = statistics.median(o["tokens_per_s"] for o in originals[:2])
    for variant in variants:
        assert variant["tokens_per_s_ratio_over_original"] == variant["tokens_per_s"] / study
    # What each run's process took (start-up and compilation too, what a GPU lease pays for): more
    # than its timed steps, and all of them together within the bench section's own time.
    seconds = [result["process_s"] for result in (*originals, *variants)]
    assert all(s >= 2 * r["step_time_median_s"] for s, r in zip(seconds, (*originals, *variants)))
    assert min(seconds) > 1  # importing torch alone takes longer: seconds, not the steps' milliseconds
    assert sum(seconds) <= sections["bench"]["seconds"]
    assert "| process s |" in (out / "gpu-check.md").read_text()


def test_the_headline_is_the_fastest_variant_s_median_against_the_original_s(gpu_check):
    """Medians over the repeats with their range, by hand from the runs' own figures: at the
    study's batch, and at each one's fastest batch."""
    out, sections = gpu_check
    report = sections["bench"]["results"]
    originals, variants, head = report["originals"], report["engines"], report["headline"]

    def figures(values):
        return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}

    engine = {args: figures([v["tokens_per_s"] for v in variants if v["engine_args"] == args])
              for args in dict.fromkeys(v["engine_args"] for v in variants)}
    original = {batch: figures([o["tokens_per_s"] for o in originals if o["settings"]["batch_size"] == batch])
                for batch in (4, 2)}
    best = max((args for args in engine if args != FP8), key=lambda args: engine[args]["median"])
    assert head["best_engine"]["engine_args"] == best and head["best_engine"]["tokens_per_s"] == engine[best]
    assert head["original"]["batch_size"] == 4 and head["original"]["tokens_per_s"] == original[4]
    at_4 = "--precision fp32 --batch-size 4"
    same = head["same_batch"]
    assert (same["engine_args"], same["engine_batch"], same["original_batch"]) == (at_4, 4, 4)
    assert same["ratio"] == engine[at_4]["median"] / original[4]["median"]
    assert (same["min"], same["max"]) == (engine[at_4]["min"] / original[4]["max"],
                                          engine[at_4]["max"] / original[4]["min"])
    fastest_batch = max(original, key=lambda batch: original[batch]["median"])
    assert head["best_batches"]["original_batch"] == fastest_batch
    assert head["best_batches"]["ratio"] == engine[best]["median"] / original[fastest_batch]["median"]
    assert f"{same['ratio']:.2f}× [{same['min']:.2f}–{same['max']:.2f}]" in (out / "gpu-check.md").read_text()
    [fp8] = head["fp8"]  # apart: against the fastest 16-bit variant, by tokens/s
    assert fp8["engine_args"] == FP8 and fp8["tokens_per_s"] == engine[FP8]
    assert fp8["over_best_16_bit"]["ratio"] == engine[FP8]["median"] / engine[best]["median"]
    assert f"FP8, a row apart ({FP8}" in (out / "gpu-check.md").read_text()


def test_the_planner_is_calibrated_on_the_bench_s_profiled_engine_runs(gpu_check):
    """Each variant's first run (profiled) is fitted and predicted, its measured step the run's
    own median; the repeats (not profiled) are not among them."""
    out, sections = gpu_check
    planner = sections["planner"]["results"]
    assert [row["run"] for row in planner["runs"]] == ["engine-0", "engine-1", "engine-2"]  # the FP8 one too
    first_runs = [run for run in sections["bench"]["results"]["engines"] if run["repeat"] == 0]  # by index
    engines = {f"engine-{index}": run for index, run in enumerate(first_runs)}
    for row in planner["runs"]:
        assert row["measured_s"] == engines[row["run"]]["step_time_median_s"]
        assert row["calibrated_error_pct"] == pytest.approx(100 * (row["calibrated_s"] / row["measured_s"] - 1))
        assert row["fitted_on"] == "all (in sample)"
    assert "| engine-1 | " in (out / "gpu-check.md").read_text().split("## planner")[1]


def test_the_peak_is_taken_apart_beside_the_memory_model_s_lines(gpu_check):
    """One step's timeline of every allocation: its peak, by the profiler's categories, equals
    the memory model's allocated bytes (the single layout, SDPA, no checkpointing: the start of
    the backward, where no gradient exists yet)."""
    out, sections = gpu_check
    peak = sections["peak"]["results"]
    assert sum(peak["by_category_bytes"].values()) == peak["peak_bytes"]
    assert peak["by_category_bytes"]["gradients"] == 0 and peak["by_category_bytes"]["activations"] > 0
    assert peak["predicted_allocated_bytes"] == pytest.approx(peak["peak_bytes"], rel=0.01)
    assert peak["max_memory_allocated_bytes"] is None  # a CPU's allocator keeps no such statistic
    assert "of the step, by category:" in (out / "gpu-check.md").read_text().split("## peak")[1]


def test_the_planner_leaves_out_a_run_without_a_profiled_window_and_says_so(gpu_check, tmp_path):
    """A variant that ran out of memory on the GPU has no profiled window: the fit goes on without
    it, named; with no run left, one line and exit status 2."""
    out, _ = gpu_check
    (tmp_path / "engine-9").mkdir()
    command = [sys.executable, "-m", "jobs.bench_planner", "--runs"]
    done = subprocess.run([*command, str(out / "bench" / "engine-0"), str(tmp_path / "engine-9")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "left out (no completed run with a profiled window): engine-9" in done.stdout
    alone = subprocess.run([*command, str(tmp_path / "engine-9")], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert alone.returncode == 2 and alone.stderr.count("\n") == 1 and "engine-9" in alone.stderr


def test_profile_says_where_the_headline_run_s_step_time_goes(gpu_check):
    """Read from the trace the headline variant's first run kept: no run of its own."""
    out, sections = gpu_check
    profile = sections["profile"]["results"]
    bench = sections["bench"]["results"]
    [headline] = [run for run in bench["engines"]
                  if run["engine_args"] == bench["headline"]["best_engine"]["engine_args"] and run["repeat"] == 0]
    assert sections["profile"]["command"].split()[3] == str(out / "bench" / headline["run"])
    assert profile["run_id"] == headline["run"] and profile["batch_size"] == headline["settings"]["batch_size"]
    shares = profile["by_kind_s_per_step"]
    assert shares["matrix products"] > 0 and shares["optimizer"] > 0
    assert sum(shares.values()) == pytest.approx(profile["busy_s_per_step"])
    assert 0 < profile["busy_s_per_step"] <= profile["wall_s_per_step"]
    assert profile["top"][0]["share_of_busy"] >= profile["top"][-1]["share_of_busy"]


def test_the_profile_of_a_run_without_a_trace_is_refused_in_one_line(tmp_path, token_data):
    out = tmp_path / "unprofiled"
    engine(["--test", "--steps", "3", "--warmup-steps", "1", "--profile-steps", "0", "--data", str(token_data),
            "--out", str(out)])
    done = subprocess.run([sys.executable, "-m", "hpml_core.bench.step_profile", str(out), "--out",
                           str(tmp_path / "profile")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--profile-steps 0" in done.stderr
    assert not (tmp_path / "profile").exists()


def test_memory_table_sets_each_layout_beside_the_prediction(gpu_check):
    _, sections = gpu_check
    rows = {row["layout"]: row for row in sections["memory"]["results"]["layouts"]}
    assert {name: row["ranks"] for name, row in rows.items()} == {"single": 1, "ddp-4": 4, "zero3-4": 4,
                                                                   "dp2xtp2-zero3": 4}
    for row in rows.values():
        assert min(row["peak_bytes_per_rank"]) > 0 and row["memory_metric"] == "cpu_rss_hwm"
        # The memory model predicts the model state exactly on any device; the peak only on a GPU.
        assert row["predicted_model_state_bytes_per_rank"] == row["model_state_bytes_per_rank"]
        assert row["predicted_peak_bytes_per_rank"] == [None] * row["ranks"]
        assert row["original_study_gb"] is None  # the study measured GPT-2 Large only
    # ZeRO-3 partitions the model state over the 4 ranks; DDP keeps it whole on each.
    assert max(rows["zero3-4"]["model_state_bytes_per_rank"]) < max(rows["ddp-4"]["model_state_bytes_per_rank"]) / 2
    # ...and where each layout's step goes, from the same runs' profiled steps
    assert {c["kind"] for c in rows["zero3-4"]["collectives"]} == {"all-gather", "reduce-scatter", "all-reduce"}
    assert rows["single"]["collectives"] == [] and len(rows["ddp-4"]["parts_ms_per_rank"]) == 4
    assert "| dp2xtp2-zero3 | " in (gpu_check[0] / "gpu-check.md").read_text().split("Where the step goes")[1]
    assert all(0 < row["process_s"] < sections["memory"]["seconds"] for row in rows.values())  # each launch, timed
    assert not any(row["ranks_share_one_gpu"] for row in rows.values())  # no GPU here to share
    # one call rewrites its own summary as it goes, and keeps none of it as an earlier call's
    assert not [path.name for path in gpu_check[0].rglob("*-earlier*")]


def test_ranks_that_shared_one_gpu_are_said_to_have_talked_over_gloo():
    """On a machine with fewer GPUs than ranks, the breakdown says whose communication was not a node's."""
    from hpml_core.bench.gpu_check import _parts_lines

    row = {"collectives": [], "parts_ms_per_rank": [{"forward": 10.0, "exposed all-reduce": 5.0}]}
    lines = _parts_lines({"layouts": [{**row, "layout": "single", "ranks_share_one_gpu": False},
                                      {**row, "layout": "ddp-4", "ranks_share_one_gpu": True}]})
    assert "ddp-4: the ranks shared one GPU and talked over gloo" in lines[0] and "single" not in lines[0]
    assert "shared one GPU" not in _parts_lines({"layouts": [{**row, "layout": "single",
                                                              "ranks_share_one_gpu": False}]})[0]


def test_every_raw_file_names_the_code_that_ran(gpu_check):
    """The summary and each benchmark's JSON carry the commit, whether the tree was clean and the
    source fingerprint, all the same: the checkout the check ran in."""
    out, _ = gpu_check
    here = source.describe(REPO)
    summary = json.loads((out / "gpu-check.json").read_text())
    raw = [summary, *(json.loads((out / folder / f"{folder}.json").read_text()) for folder in ("bench", "memory", "profile"))]
    assert all(record["source"] == here for record in raw)
    assert f"Code: {source.line(here)}." in (out / "gpu-check.md").read_text()


def test_the_source_record_tells_a_modified_tree_and_a_copy_without_git(tmp_path):
    """Committed and unchanged: the commit and a clean tree. A source file changed: the tree is
    not clean and the fingerprint differs. A copy without .git (a GPU machine's): no commit, the
    reason said, and the same fingerprint as the checkout it was copied from."""
    repo = tmp_path / "repo"
    (repo / "hpml_core").mkdir(parents=True)
    (repo / "hpml_core" / "train.py").write_text("print('one')\n")
    (repo / "jobs" / "__pycache__").mkdir(parents=True)
    (repo / "jobs" / "__pycache__" / "cached.py").write_text("not source\n")
    (repo / ".gitignore").write_text("__pycache__/\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "one"]):
        subprocess.run([*git, *command], check=True)
    committed = source.describe(repo)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert (committed["commit"], committed["tree_clean"], committed["files"]) == (head, True, 1)

    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, ignore=shutil.ignore_patterns(".git"))
    copied = source.describe(copy)
    assert copied["commit"] is None and copied["tree_clean"] is None and "no .git" in copied["commit_missing_reason"]
    assert copied["fingerprint"] == committed["fingerprint"]

    (repo / "hpml_core" / "train.py").write_text("print('two')\n")
    changed = source.describe(repo)
    assert changed["commit"] == head and changed["tree_clean"] is False
    assert changed["fingerprint"] != committed["fingerprint"]


def test_a_section_out_of_time_is_recorded_not_guessed(tmp_path):
    done = subprocess.run([sys.executable, "-m", "hpml_core.bench.gpu_check", "--reduced", "--shared", str(SHARED),
                           "--out", str(tmp_path), "--only", "environment,bench", "--budget-s", "5"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    bench = json.loads((tmp_path / "gpu-check.json").read_text())["sections"][1]
    assert bench["status"] == "not run" and "budget" in bench["why"] and "results" not in bench


def test_a_second_call_keeps_the_first_call_s_other_sections(tmp_path):
    """A short rerun (``--only``) into the same folder adds its sections to the summary; the first
    call's others stay, marked with their call, and do not decide the second's exit status."""
    command = [sys.executable, "-m", "hpml_core.bench.gpu_check", "--reduced", "--shared", str(SHARED),
               "--out", str(tmp_path)]
    first = subprocess.run([*command, "--only", "environment,bench", "--budget-s", "5"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 1  # the bench was not run
    date = json.loads((tmp_path / "gpu-check.json").read_text())["date"]
    second = subprocess.run([*command, "--only", "environment"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    sections = json.loads((tmp_path / "gpu-check.json").read_text())["sections"]
    assert [(s["name"], s["status"], s.get("earlier_call")) for s in sections] == [
        ("bench", "not run", date), ("environment", "passed", None)]
    assert "| bench | not run: the check's 5 s budget left" in (tmp_path / "gpu-check.md").read_text()
    assert f"(in the call of {date})" in (tmp_path / "gpu-check.md").read_text()


def test_a_second_bench_into_the_same_folder_overwrites_nothing_the_first_wrote(tmp_path):
    """What an earlier call wrote is renamed out of the way, never overwritten; twice too."""
    from hpml_core.bench import keep_earlier
    from hpml_core.bench.__main__ import Bench, parse

    (tmp_path / "bench.json").write_text('{"call": 1}')
    Bench(parse(["--data", str(tmp_path), "--out", str(tmp_path)]))
    assert json.loads((tmp_path / "bench-earlier.json").read_text()) == {"call": 1}
    assert not (tmp_path / "bench.json").exists()  # this call's own, written after its first run
    for call in (1, 2):
        (tmp_path / "peak-rank0.json").write_text(f'{{"call": {call}}}')
        assert keep_earlier(tmp_path / "peak-rank0.json") == tmp_path / "peak-rank0.json"
    assert not (tmp_path / "peak-rank0.json").exists()
    assert [json.loads((tmp_path / name).read_text())["call"]
            for name in ("peak-rank0-earlier.json", "peak-rank0-earlier-2.json")] == [1, 2]
    assert keep_earlier(tmp_path / "profile.txt") == tmp_path / "profile.txt"  # nothing there: nothing moved


def test_gpu_check_refuses_an_unknown_section(tmp_path):
    done = subprocess.run([sys.executable, "-m", "hpml_core.bench.gpu_check", "--only", "bench,speed",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--only" in done.stderr and "speed" in done.stderr
    assert not any(tmp_path.iterdir())


def test_original_loop_refuses_nothing_to_time(tmp_path, token_data):
    proc = engine(["--model", "tiny", "--steps", "2", "--warmup-steps", "2", "--data", str(token_data),
                   "--out", str(tmp_path / "o.json")], script=REPO / "hpml_core" / "bench" / "original_loop.py",
                  check=False)
    assert proc.returncode == 2 and "--steps" in proc.stderr and not (tmp_path / "o.json").exists()


def test_on_a_gpu_trace_the_profile_counts_each_kernel_by_its_name():
    """The device's timeline of a hand-written step (tests/test_step_parts.py's): two matrix
    products of 30 and 20 µs, an NCCL kernel of 30 and the optimizer's 4, in a 100 µs step."""
    from analysis.sample_rank_files import rank_file as sample_rank_file
    from hpml_core.bench.step_profile import where_time_goes
    from tests.test_step_parts import gpu_step

    record = sample_rank_file(run="r", rank=0, mode="single", world=1, tp=1, batch=8)
    result = where_time_goes(record, gpu_step(), rows=10)
    assert {kind: round(s * 1e6, 6) for kind, s in result["by_kind_s_per_step"].items()} == {
        "matrix products": 50, "communication": 30, "optimizer": 4}
    assert result["wall_s_per_step"] == pytest.approx(100e-6) and result["busy_s_per_step"] == pytest.approx(84e-6)
    assert result["idle_share_of_wall"] == pytest.approx(0.16)
    assert [(row["name"], row["calls_per_step"]) for row in result["top"]][0] == ("ampere_bf16_gemm", 2)


def test_a_layout_that_does_not_finish_is_a_row_and_the_others_still_run(tmp_path, token_data):
    """8 samples make a step for one rank at batch 4 but not for four: the 4-rank layouts are
    refused (exit status 2, no rank file), each a row saying so, the single layout measured, and
    the benchmark exits 1 (a refusal is not a measurement, as running out of memory would be)."""
    out = tmp_path / "memory"
    done = subprocess.run([sys.executable, "-m", "hpml_core.bench.memory", "--model", "tiny", "--seq-len", "64",
                           "--data", str(token_data), "--steps", "2", "--warmup-steps", "1", "--batch-size", "4",
                           "--engine-args", "--precision fp32 --max-samples 8 --profile-steps 1", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    rows = {row["layout"]: row for row in json.loads((out / "memory.json").read_text())["layouts"]}
    assert {name: row["status"] for name, row in rows.items()} == {
        "single": "COMPLETED", "ddp-4": "FAILED", "zero3-4": "FAILED", "dp2xtp2-zero3": "FAILED"}
    assert rows["ddp-4"]["error"] == "exit status 2, and no rank file" and rows["single"]["peak_bytes_per_rank"][0] > 0
    # run most telling first (a run cut short keeps them), shown in the study's order
    started = [line.split(":")[0].removeprefix("[memory] ") for line in done.stderr.splitlines()
               if line.startswith("[memory] ") and " -m " in line]
    assert started == ["single", "dp2xtp2-zero3", "zero3-4", "ddp-4"]
    assert list(rows) == ["single", "ddp-4", "zero3-4", "dp2xtp2-zero3"]


def test_ranks_out_of_memory_on_a_shared_gpu_say_what_each_needed(tmp_path):
    """An OUT_OF_MEMORY layout (rank files as a GPU writes them): its row keeps the status, the
    error and each rank's predicted peak, and gpu-check's table shows them in place of a peak."""
    from analysis.sample_rank_files import write_run
    from hpml_core.bench.gpu_check import _memory_lines
    from hpml_core.bench.memory import unfinished_row
    from hpml_core.contract import rank_file
    from hpml_core.contract.attempts import latest_rank_files

    write_run(tmp_path, "ddp-4", mode="ddp", world=4, tp=1, batch=8, status="OUT_OF_MEMORY",
              error="out of memory at batch size 8 per rank (predicted 17.8 GiB of the GPU's 79.2 GiB)")
    files = [rank_file.read(path) for _, path in sorted(latest_rank_files(tmp_path / "ddp-4").items())]
    row = unfinished_row("ddp-4", ["python", "-m", "hpml_core.local_ranks", "4"], 4, files, 3, 21.0)
    assert row["status"] == "OUT_OF_MEMORY" and row["error"].startswith("out of memory at batch size 8")
    assert row["predicted_peak_bytes_per_rank"] == [f.prediction.allocated_bytes for f in files] and None not in \
        row["predicted_peak_bytes_per_rank"]
    table, parts = [line for line in _memory_lines({"model": "gpt2-large", "batch_size": 8, "seq_len": 1024,
                                                    "layouts": [row]}) if line.startswith("| ddp-4 ")]
    assert "| OUT_OF_MEMORY: out of memory at batch size 8" in table and "| 21.0 |" in table
    assert parts == "| ddp-4 | n/a | OUT_OF_MEMORY | |"  # where its step went: nowhere, and why
