"""``make chaos``: a study of short runs on the local Slurm (``jobs/local-slurm``, two emulated
nodes) while the cluster misbehaves, then ``hpml submit`` again until every run completes; it
prints what was lost.

The study: ``--runs`` tiny runs (single, DDP, FSDP2 and ZeRO-1 on one or two processes, a
checkpoint every 50 of their 400 steps), results on a tmpfs of their own (so the disk can be
filled without touching this machine's), trained on the demo's prepared WikiText-2. While the
first submission's jobs run, every 1.5 to 4 s one fault strikes, at random (seeded): a rank
killed with SIGKILL, or an array task cancelled with ``scancel``; once, slurmctld is restarted
(``jobs/local-slurm restart-ctld``); once, the results disk is filled but for 2 MB for 8 s (a
checkpoint then fails with ENOSPC, a rank file still fits and says so). When no job is left, ``hpml submit`` is run again (what a user does:
``make submit-all``), and again, until every run has completed or ``--minutes`` have passed.

Printed: the rank files that say a write was refused (the fill's effect); runs completed; runs lost (not completed at the end: must be 0); resubmission rounds and
runs sent again (ledger submissions beyond the first; Slurm's own requeues apart); the faults
struck; and every Python traceback seen in the job logs, the results and the output of the hpml
commands run (must be 0). Exit status 0 when nothing was lost and no traceback was seen, else 1;
2 when the cluster, the data or root is missing. Needs root (the tmpfs) and ``NODES=2
jobs/local-slurm up``; results are removed at the end unless ``--keep``.

    python -m jobs.chaos [--runs 24] [--minutes 20] [--seed 7] [--keep]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from hpml_core.contract.run_states import COMPLETED
from jobs import backend, experiment, ledger, observe, site

REPO = Path(__file__).resolve().parents[1]
LOCAL_SLURM = REPO / "jobs" / "local-slurm"
DATA = REPO / "results" / "data"
DATASET = "wikitext-2"
NAME = "chaos"
# (name, mode, processes): repeated to make up the study's runs
SHAPES = (("single", "single", 1), ("ddp", "ddp", 2), ("fsdp2", "fsdp2", 2), ("zero1", "zero1", 2))
DISK_BYTES = 1 << 30
FILL_SECONDS = 8
LEFT_FREE = 2 << 20  # under one checkpoint of the study's runs (4.5 to 6.1 MB), over a rank file
TRACEBACK = "Traceback (most recent call last)"


def hpml(*args: str, timeout: float = 600) -> tuple[int, str]:
    """An ``hpml`` command as a user runs it: its exit status and everything it printed."""
    done = subprocess.run([sys.executable, "-m", "hpml_core.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def study_files(folder: Path, disk: Path, runs: int, seed: int) -> tuple[Path, Path]:
    """The experiment file (``runs`` runs, the shapes in turn) and a site profile writing on ``disk``."""
    entries = [{"name": f"{SHAPES[i % len(SHAPES)][0]}-{i:02d}", "mode": SHAPES[i % len(SHAPES)][1],
                "gpus": SHAPES[i % len(SHAPES)][2], "batch_size": 4} for i in range(runs)]
    exp = folder / f"{NAME}.yaml"
    exp.write_text(yaml.safe_dump({
        "name": NAME, "description": "tiny runs under faults (make chaos)", "dataset": DATASET,
        "defaults": {"model": "tiny", "seq_len": 64, "steps": 400, "warmup_steps": 2, "precision": "fp32",
                     "profile_steps": 0, "checkpoint_every": 50, "seed": seed, "time_limit": "00:15:00"},
        "runs": entries}, sort_keys=False))
    profile = yaml.safe_load((site.SITES / "local-slurm.yaml").read_text())
    profile.update(name="chaos", project_dir=str(REPO), results_root=str(disk), data_root=str(DATA),
                   python=str(REPO / ".venv" / "bin" / "python"))
    profile_path = folder / "site.yaml"
    profile_path.write_text(yaml.safe_dump(profile))
    return exp, profile_path


def our_jobs() -> list[tuple[str, str]]:
    """(job id, state) of the study's jobs Slurm's controller lists ([] while it does not answer)."""
    done = subprocess.run(["squeue", "--noheader", "--format=%i|%j|%T"], capture_output=True, text=True, timeout=30)
    rows = [line.split("|") for line in done.stdout.splitlines()]
    return [(job, state) for job, name, state in rows if name.startswith(f"hpml-{NAME}-")]


def engine_pids(disk: Path) -> list[int]:
    """The study's training processes (each rank is one)."""
    done = subprocess.run(["pgrep", "-f", f"hpml_core.train --config {disk}/"], capture_output=True, text=True)
    return [int(pid) for pid in done.stdout.split()]


def fill_for_a_while(disk: Path) -> None:
    """Take all but LEFT_FREE bytes of ``disk`` for FILL_SECONDS, then give them back: a disk
    nearly full, where a checkpoint no longer fits but a rank file, a status file and a log line
    still do, so the runs can say what happened."""
    filler = disk / ".chaos-filler"
    with open(filler, "wb") as f:
        try:
            while (room := shutil.disk_usage(disk).free - LEFT_FREE) > 0:
                f.write(b"\0" * min(room, 1 << 20))
                f.flush()
        except OSError:
            pass
    time.sleep(FILL_SECONDS)
    filler.unlink()


def strike(faults: Counter, rng: random.Random, disk: Path, started: float) -> None:
    """One fault, at random: the slurmctld restart and the disk fill once each, after the first 10 s."""
    elapsed = time.monotonic() - started
    if elapsed > 10 and not faults["slurmctld restarted"]:
        subprocess.run([str(LOCAL_SLURM), "restart-ctld"], capture_output=True, timeout=120, check=True)
        faults["slurmctld restarted"] += 1
    elif elapsed > 25 and not faults["results disk filled"]:
        fill_for_a_while(disk)
        faults["results disk filled"] += 1
    elif rng.random() < 0.5:
        pids = engine_pids(disk)
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                faults["rank killed (SIGKILL)"] += 1
            except ProcessLookupError:
                pass
    else:
        running = [job for job, state in our_jobs() if state == "RUNNING"]
        if running:
            subprocess.run(["scancel", rng.choice(running)], capture_output=True, timeout=30)
            faults["task cancelled (scancel)"] += 1


def wait_idle(deadline: float, during=None) -> None:
    """Until Slurm lists none of the study's jobs (``during()`` called between looks)."""
    quiet = 0
    while time.monotonic() < deadline:
        if during is not None:
            during()
        quiet = quiet + 1 if not our_jobs() else 0
        if quiet >= 3:  # three looks in a row: not a controller that was restarting
            return
        time.sleep(1.0)


def tracebacks(disk: Path, outputs: list[str]) -> list[str]:
    """Where a Python traceback was printed: a results file (job logs, status files) or a command's output."""
    found = [f"hpml command output #{i}" for i, text in enumerate(outputs) if TRACEBACK in text]
    for path in disk.rglob("*"):
        if path.is_file() and path.suffix in (".out", ".err", ".log", ".json", ".txt"):
            if TRACEBACK in path.read_text(errors="replace"):
                found.append(str(path))
    return found


def run_chaos(runs: int, minutes: float, seed: int, keep: bool) -> int:
    rng = random.Random(seed)
    scratch = Path(tempfile.mkdtemp(prefix="hpml-chaos-"))
    disk = scratch / "results"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        print(f"make chaos: cannot mount a tmpfs for the results (needs root): {mounted.stderr.strip()}",
              file=sys.stderr)
        return 2
    try:
        return _study(runs, minutes, rng, seed, scratch, disk)
    finally:
        left = [job for job, _ in our_jobs()]
        if left:  # a bound reached: nothing of the study keeps running after it
            subprocess.run(["scancel", *left], capture_output=True)
        if keep:
            kept = scratch / "kept"
            shutil.copytree(disk, kept, dirs_exist_ok=True)
            print(f"results kept in {kept}")
        subprocess.run(["umount", "--lazy", str(disk)], capture_output=True)
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)


def _study(runs: int, minutes: float, rng: random.Random, seed: int, scratch: Path, disk: Path) -> int:
    exp_path, site_path = study_files(scratch, disk, runs, seed)
    started = time.monotonic()
    deadline = started + minutes * 60
    outputs: list[str] = []
    faults: Counter = Counter()

    code, said = hpml("submit", str(exp_path), "--site", str(site_path))
    outputs.append(said)
    if code != 0:
        print(f"make chaos: the first hpml submit failed (exit {code}):\n{said}", file=sys.stderr)
        return 1
    next_strike = [time.monotonic() + rng.uniform(1.5, 4)]

    def chaos() -> None:
        if time.monotonic() >= next_strike[0]:
            strike(faults, rng, disk, started)
            next_strike[0] = time.monotonic() + rng.uniform(1.5, 4)

    wait_idle(deadline, chaos)
    chaos_s = time.monotonic() - started

    profile = site.load(str(site_path))
    exp = experiment.load(exp_path, profile.data_folder(), profile.gpu_memory())
    folder = profile.experiment_folder(NAME)
    rounds = 0
    while time.monotonic() < deadline:
        states, _ = observe.current(exp.world_sizes, folder, query=backend.for_site(profile).query)
        if all(found.state == COMPLETED for found in states.values()):
            break
        rounds += 1
        code, said = hpml("submit", str(exp_path), "--site", str(site_path))
        outputs.append(said)
        wait_idle(deadline)
    code, said = hpml("status", str(exp_path), "--site", str(site_path))
    outputs.append(said)
    states, _ = observe.current(exp.world_sizes, folder, query=backend.for_site(profile).query)
    completed = [name for name, found in states.items() if found.state == COMPLETED]
    lost = {name: f"{found.state}: {found.why}" for name, found in states.items() if found.state != COMPLETED}
    entries = ledger.read(folder)
    sent_again = sum(max(0, entry.get("submissions", 0) - 1) for entry in entries.values())
    seen = tracebacks(disk, outputs)
    refused = sum("cannot write" in path.read_text(errors="replace") for path in folder.glob("*/attempts/*/rank-*.json"))

    print(f"make chaos: {len(exp.runs)} runs of {NAME} on the local Slurm, seed {seed}, "
          f"{time.monotonic() - started:.0f} s ({chaos_s:.0f} s under faults)")
    print("faults: " + ", ".join(f"{what} {n}" for what, n in sorted(faults.items())))
    print(f"rank files that say a write was refused (the full disk): {refused}")
    print(f"runs completed: {len(completed)} of {len(exp.runs)}")
    print(f"runs lost: {len(lost)}" + "".join(f"\n  {name}: {why}" for name, why in lost.items()))
    print(f"resubmission rounds (hpml submit after the first): {rounds}; runs sent again: {sent_again}")
    print(f"tracebacks seen: {len(seen)}" + "".join(f"\n  {where}" for where in seen))
    return 0 if not lost and not seen else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=24, help="runs in the study (24)")
    parser.add_argument("--minutes", type=float, default=20, help="the bound on the whole benchmark (20)")
    parser.add_argument("--seed", type=int, default=7, help="which faults strike, and when (7)")
    parser.add_argument("--keep", action="store_true", help="keep the results (copied off the tmpfs)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("make chaos: needs root (a tmpfs for the results, the cluster's daemons)", file=sys.stderr)
        return 2
    if not (DATA / DATASET / "meta.json").is_file():
        print(f"make chaos: no prepared data at {DATA / DATASET}: make data", file=sys.stderr)
        return 2
    nodes = subprocess.run(["sinfo", "--Node", "--noheader", "--format=%N"], capture_output=True, text=True)
    if nodes.returncode != 0 or len(set(nodes.stdout.split())) < 2:
        print("make chaos: needs the local Slurm with two nodes: NODES=2 jobs/local-slurm up", file=sys.stderr)
        return 2
    return run_chaos(args.runs, args.minutes, args.seed, args.keep)


if __name__ == "__main__":
    sys.exit(main())
