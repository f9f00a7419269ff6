"""`make bench` on the CPU with the tiny model: both variants run, each in its own process, and
the JSON holds what the GPU measurement will report (the figures themselves need a GPU)."""

import json
import sys

from tests.conftest import REPO, engine


def test_bench_runs_both_loops_and_writes_comparable_figures(tmp_path, token_data):
    import subprocess

    out = tmp_path / "bench"
    done = subprocess.run([sys.executable, "-m", "hpml_core.bench", "--model", "tiny", "--seq-len", "64", "--steps", "6",
                           "--warmup-steps", "2", "--original-precision", "fp32", "--engine-args", "--precision fp32",
                           "--data", str(token_data), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "bench.json").read_text())
    original, ours = report["original"], report["engine"]
    for result in (original, ours):
        assert result["tokens_per_s"] > 0 and result["achieved_tflops_per_s"] > 0 and result["peak_memory_bytes"] > 0
        assert result["mfu"] is None and "cpu" in result["mfu_missing_reason"]  # no GPU peak: missing, not guessed
        assert len(result["losses"]) == 6
        assert result["tokens_per_s"] == 64 * result["settings"]["batch_size"] / result["step_time_median_s"]
    # Both peaks cover the same span, the timed steps (hpml_core.memory), in the same metric.
    assert original["memory_metric"] == ours["memory_metric"] == "cpu_rss_hwm"
    # The original loop counts N on transformers' model; it is the engine's N for the same GPT-2.
    assert original["flops_per_token"] == ours["flops_per_token"]
    assert report["tokens_per_s_ratio_engine_over_original"] == ours["tokens_per_s"] / original["tokens_per_s"]
    assert "engine / original tokens/s" in done.stdout


def test_original_loop_refuses_nothing_to_time(tmp_path, token_data):
    proc = engine(["--model", "tiny", "--steps", "2", "--warmup-steps", "2", "--data", str(token_data),
                   "--out", str(tmp_path / "o.json")], script=REPO / "hpml_core" / "bench" / "original_loop.py",
                  check=False)
    assert proc.returncode == 2 and "--steps" in proc.stderr and not (tmp_path / "o.json").exists()


def test_memory_table_runs_the_four_layouts(tmp_path, token_data):
    import subprocess

    out = tmp_path / "memory"
    done = subprocess.run([sys.executable, "-m", "hpml_core.bench.memory", "--model", "tiny", "--seq-len", "64",
                           "--batch-size", "4", "--steps", "4", "--warmup-steps", "1", "--engine-args",
                           "--precision fp32 --zero-persistence-threshold 0", "--data", str(token_data), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["layout"]: row for row in json.loads((out / "memory.json").read_text())["layouts"]}
    assert {name: row["ranks"] for name, row in rows.items()} == {"single": 1, "ddp-4": 4, "zero3-4": 4,
                                                                   "dp2xtp2-zero3": 4}
    assert all(min(row["peak_bytes_per_rank"]) > 0 and row["memory_metric"] == "cpu_rss_hwm" for row in rows.values())
    # ZeRO-3 partitions the model state over the 4 ranks; DDP keeps it whole on each.
    assert max(rows["zero3-4"]["model_state_bytes_per_rank"]) < max(rows["ddp-4"]["model_state_bytes_per_rank"]) / 2
    assert all(row["original_study_gb"] is None for row in rows.values())  # the study measured GPT-2 Large only
