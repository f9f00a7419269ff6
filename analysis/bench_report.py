"""Benchmark (``make bench-report``): aggregate 1,000 runs × 4 rank files, the size of a large
sweep, and time it. The target is under 5 s on a 2-core machine for reading, validating and
aggregating; writing the tables, figures and page is timed too, separately.

The rank files are the report tests' schema-built ones (analysis/sample_rank_files.py), so the
benchmark reads the same kind of files the tests check figure by figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from analysis.baselines import summarize
from analysis.collect import collect
from analysis.configurations import configuration_rows
from analysis.report import write_report
from analysis.runs import run_rows
from analysis.sample_rank_files import write_run
from jobs import experiment

LAYOUTS = [("ddp", "ddp", 1), ("zero3", "zero3", 1), ("dp2xtp2", "zero3", 2), ("tp4", "ddp", 4)]


def make_study(root: Path, runs: int) -> tuple[experiment.Experiment, Path]:
    per_layout = runs // len(LAYOUTS)
    entries = "\n".join(f"  - {{name: {name}, mode: {mode}, tp_size: {tp}, gpus: 4, batch_size: 8}}"
                        for name, mode, tp in LAYOUTS)
    path = root / "bench.yaml"
    path.write_text(f"name: bench\ndataset: d\ndefaults: {{model: gpt2-large, steps: 10}}\nrepeats: {per_layout}\n"
                    f"runs:\n{entries}\n")
    exp = experiment.load(path)
    folder = root / "results" / "bench"
    for index, run in enumerate(exp.runs):
        write_run(folder, run.name, mode=run.train["mode"], world=4, tp=run.tp_size, batch=8,
                  step_medians=[0.5 + 0.001 * (index % 7) + 0.01 * r for r in range(4)], losses=tuple(range(30, 0, -1)))
    return exp, folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        exp, folder = make_study(Path(tmp), args.runs)
        files = len(list(folder.glob("*/attempts/*/rank-*.json")))
        started = time.perf_counter()
        results, problems, _ = collect(folder, exp.world_sizes, repeated=True)
        configs = summarize(configuration_rows(run_rows(results)))
        aggregated = time.perf_counter() - started
        assert len(results) == args.runs and not problems and len(configs) == len(LAYOUTS)
        started = time.perf_counter()
        write_report(exp, folder)
        written = time.perf_counter() - started
    print(f"{args.runs} runs, {files} rank files: read, validated and aggregated in {aggregated:.2f} s "
          f"(target < 5 s); full report with tables, figures and page in {written:.2f} s")
    return 0 if aggregated < 5 else 1


if __name__ == "__main__":
    sys.exit(main())
