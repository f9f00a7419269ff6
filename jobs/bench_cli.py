"""``make bench-cli``: how long the login-side commands take, as a user types them.

Each command is run several times, each time as a fresh process of the installed ``hpml``
console script (the one beside this Python, e.g. ``.venv/bin/hpml``), and timed from starting
the process to its exit: Python's start-up, every import and the work itself. The figure is the
median over the runs (min and max beside it). The commands are ``hpml --help``, ``hpml plan``,
``hpml status`` and ``hpml report`` on an experiment that has results (by default the demo's
``tiny_study`` on ``--site local``, after ``make demo``), and ``hpml tune`` for GPT-2 Large on 4
GPUs of greene (target under 1 s).

Why: these commands run on a cluster's login node, often from a Python environment on a parallel
file system, where each imported module costs file-system round trips. Importing the training
stack (torch, transformers, DeepSpeed) there took seconds per command; the login side imports
only ``hpml_core.contract`` from the engine's package. Target on this project's machine: ``plan`` and
``status`` under 0.5 s. A missed target is printed, not an error (this is a benchmark); a command
that fails exits non-zero.

    python -m jobs.bench_cli [--experiment tiny_study] [--site local] [--repeats 5] [--hpml PATH]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = {"plan": 0.5, "status": 0.5, "tune": 1.0}
# hpml tune on the original study's question (GPT-2 Large, 4 GPUs of greene), its file thrown away
TUNED = Path(os.environ.get("TMPDIR", "/tmp")) / "hpml-bench-cli-tuned.yaml"


def commands(experiment: str, site: str) -> dict[str, list[str]]:
    return {"--help": ["--help"], "plan": ["plan", experiment], "status": ["status", experiment, "--site", site],
            "report": ["report", experiment, "--site", site],
            "tune": ["tune", "--model", "gpt2-large", "--gpus", "4", "--site", "greene", "--out", str(TUNED)]}


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_once(argv: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one fresh process; raises if it fails."""
    cpu, start = cpu_of_children(), time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return elapsed, cpu_of_children() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench_cli", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="tiny_study", help="an experiment with results (tiny_study)")
    parser.add_argument("--site", default="local", help="the site profile whose results_root holds them (local)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command; the median is reported (5)")
    parser.add_argument("--hpml", type=Path, default=Path(sys.executable).parent / "hpml",
                        help="the console script to time (the hpml beside this Python)")
    args = parser.parse_args(argv)
    if not os.access(args.hpml, os.X_OK):
        print(f"bench-cli: error: --hpml: {args.hpml} is not an executable (install the project first)", file=sys.stderr)
        return 2
    print(f"{args.hpml}, {args.repeats} fresh processes each: wall time from start to exit (median, min, max) and the "
          f"median CPU time, user + system, which other load on the machine inflates less "
          f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
    print(f"{'command':<40} {'median s':>9} {'min s':>7} {'max s':>7} {'CPU s':>7}  target (wall)")
    for name, rest in commands(args.experiment, args.site).items():
        argv_ = [str(args.hpml), *rest]
        try:
            walls, cpus = zip(*(time_once(argv_) for _ in range(args.repeats)))
        except RuntimeError as exc:
            print(f"bench-cli: error: {exc}", file=sys.stderr)
            return 1
        median = statistics.median(walls)
        target = TARGET_S.get(name)
        verdict = "" if target is None else f"< {target} s: " + ("target met" if median < target else "target missed")
        print(f"{'hpml ' + ' '.join(rest):<40} {median:9.3f} {min(walls):7.3f} {max(walls):7.3f} "
              f"{statistics.median(cpus):7.3f}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
