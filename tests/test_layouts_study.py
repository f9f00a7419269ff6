"""The layouts study's tiny twin (jobs/experiments/tiny_layouts_study.yaml) runs through the
local site, and its report has, for every layout, a row, the 1-process baseline of its own mode
(each mode trains in its own precision regime) and a spread over its two repeats."""

import pandas as pd

from hpml_core.cli import main
from jobs import experiment as experiment_module

LAYOUT_MODES = {"ddp-4": "single", "zero1-4": "zero1-1", "zero2-4": "zero2-1", "zero3-4": "zero3-1",
                "fsdp2-4": "fsdp2-1", "dp2xtp2-ddp": "single", "dp2xtp2-zero1": "zero1-1",
                "dp2xtp2-zero2": "zero2-1", "dp2xtp2-zero3": "zero3-1", "dp2xtp2-fsdp2": "fsdp2-1"}


def test_the_tiny_layouts_study_reports_every_layout_with_its_baseline_and_a_spread(tmp_path, token_data, capsys):
    exp = tmp_path / "tiny_layouts_study.yaml"
    # Without the profiled window (a second of each 4-rank run here; test_parallel_equivalence.py
    # checks it under every layout): this test is about rows, baselines and spreads.
    text = experiment_module.experiment_path("tiny_layouts_study").read_text()
    assert "\n  warmup_steps: 2\n" in text
    exp.write_text(text.replace("\n  warmup_steps: 2\n", "\n  warmup_steps: 2\n  profile_steps: 0\n"))
    site = tmp_path / "site.yaml"
    site.write_text(f"name: here\nscheduler: local\nproject_dir: .\nresults_root: {tmp_path / 'results'}\n"
                    f"data_root: {token_data.parent}\n")
    assert main(["submit", str(exp), "--site", str(site)]) == 0
    assert main(["report", str(exp), "--site", str(site)]) == 0
    summary = pd.read_csv(tmp_path / "results" / "tiny_layouts_study" / "report" / "summary.csv").set_index("label")
    for layout, baseline in LAYOUT_MODES.items():
        row = summary.loc[layout]
        assert row["runs_completed"] == 2, (layout, row["reason"])
        assert row["baseline_label"] == baseline, (layout, row["baseline_note"])
        assert row["tokens_per_s_min"] <= row["tokens_per_s_median"] <= row["tokens_per_s_max"]
        assert row["tokens_per_s_min"] < row["tokens_per_s_max"]  # two repeats, two figures
        assert row["scaling_efficiency_min"] <= row["scaling_efficiency"] <= row["scaling_efficiency_max"]
