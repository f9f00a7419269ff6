"""A run survives being interrupted anywhere: each launch is an attempt with its own rank files,
nothing an earlier attempt wrote is overwritten, a resume always finishes (even when every step
left is warm-up), a finished run resumed again is left alone, and a checkpoint is continued
only by a run with the same trajectory settings. Real engine runs of the tiny model."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis import collect
from hpml_core import data
from hpml_core.contract import attempts
from tests.conftest import REPO, engine, losses, rank_files, snapshot

# 10 steps of which 5 warm-up, a checkpoint at step 8: stopped (or ended) there, a resume has
# 2 steps left, both of them warm-up.
ARGS = ["--test", "--steps", "10", "--warmup-steps", "5", "--checkpoint-every", "8"]
LEFT_IN_WARMUP = "the 2 steps left after resuming at step 8 were all warm-up; this run's throughput is in its " \
                 "earlier attempts"


@pytest.fixture(scope="module")
def whole(tmp_path_factory, token_data):
    """The same run, never interrupted."""
    out = tmp_path_factory.mktemp("whole") / "run"
    engine([*ARGS, "--data", str(token_data), "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, token_data):
    """8 steps (the job ends there, checkpoint at 8), then the 10-step command with --resume;
    hands back the run folder and attempt 1's files as they were before attempt 2."""
    out = tmp_path_factory.mktemp("resumed") / "run"
    engine([*ARGS, "--steps", "8", "--data", str(token_data), "--out", str(out)])  # the last --steps wins
    first = snapshot(out / "attempts" / "1")
    engine([*ARGS, "--resume", "--data", str(token_data), "--out", str(out)])
    return out, first


def test_a_resume_whose_steps_left_are_all_warm_up_completes_untimed(resumed, whole):
    out, _ = resumed
    assert sorted(p.name for p in (out / "attempts").iterdir()) == ["1", "2"]
    first, second = rank_files(out, attempt=1)[0], rank_files(out, attempt=2)[0]
    assert (first["attempt"], first["status"], first["steps_completed"]) == (1, "COMPLETED", 8)
    assert first["throughput"]["timed_steps"] == 3 and first["throughput_missing_reason"] is None
    assert (second["attempt"], second["status"], second["resumed_from_step"]) == (2, "COMPLETED", 8)
    assert second["steps_completed"] == second["total_steps"] == 10
    assert second["throughput"] is None and second["flops"] is None
    assert second["throughput_missing_reason"] == LEFT_IN_WARMUP
    assert second["model_state"] is not None  # it completed: the model state is still measured
    # The attempts together trained exactly the uninterrupted run.
    assert losses(out, attempt=1) + losses(out, attempt=2) == losses(whole)
    status = json.loads((out / "status.json").read_text())
    assert (status["state"], status["attempt"], status["step"]) == ("COMPLETED", 2, 10)


def test_an_attempt_never_overwrites_an_earlier_attempts_files(resumed):
    out, first = resumed
    assert snapshot(out / "attempts" / "1") == first


def test_resuming_a_completed_run_does_nothing(resumed, token_data):
    out, _ = resumed
    before = snapshot(out)
    proc = engine([*ARGS, "--resume", "--data", str(token_data), "--out", str(out)])
    assert proc.stdout.strip().splitlines() == ["[hpml] run run already completed in attempt 2; nothing to do"]
    assert snapshot(out) == before  # no attempt 3, not even status.json rewritten


@pytest.fixture(scope="module")
def other_data(tmp_path_factory, token_data, wikitext_valid) -> Path:
    """Other prepared data: the first 300 lines of the text, with the same tokenizer."""
    folder = tmp_path_factory.mktemp("other-data")
    part = folder / "part.txt"
    part.write_text("".join(wikitext_valid.read_text().splitlines(keepends=True)[:300]))
    assert data.main(["prepare", "--files", str(part), "--tokenizer", str(token_data), "--out",
                      str(folder / "prepared")]) == 0
    return folder / "prepared"


@pytest.mark.parametrize("change,words", [
    (["--lr", "0.001"], ["--lr:", "checkpoint at step 8 was made with 0.0003, this run has 0.001"]),
    (["--grad-clip", "0.5"], ["--grad-clip:", "made with 1.0, this run has 0.5"]),
    (["--steps", "7"], ["--steps:", "7 is fewer than the 8 steps the checkpoint has already trained"]),
    ("other data", ["--data:", "checkpoint at step 8 was made from other data", "from valid.txt",
                    "from part.txt"]),
])
def test_a_checkpoint_is_continued_only_with_the_same_trajectory(change, words, resumed, token_data, other_data):
    """Anything that changes what the resumed steps compute is refused in one line naming the
    flag, before a new attempt is opened; --steps 12 makes the run unfinished, so it is the
    checkpoint, not the completed attempt, that is checked."""
    out, _ = resumed
    folder = other_data if change == "other data" else token_data
    extra = [] if change == "other data" else change
    before = snapshot(out)
    proc = engine([*ARGS, "--steps", "12", *extra, "--resume", "--data", str(folder), "--out", str(out)], check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpml train: error: "), proc.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert snapshot(out) == before


def caught(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux: the SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stop_signal_during_start_up_stops_the_run_cleanly(tmp_path, token_data, whole):
    """What this proves: a stop signal that arrives while the engine is still starting (importing
    torch and the rest, which takes seconds on a cluster's file system) is a request to stop,
    not the end of the process. The test sends SIGTERM the moment the process has a handler
    for it (about 50 ms after the start), and checks in /proc/<pid>/maps, read after sending,
    that the engine had not yet memory-mapped its token file: it was still importing. (Until
    then the engine installed its handler only after opening the data, so SIGTERM's default
    action killed it there, with no checkpoint and no rank file.) Now the run trains its first
    step, saves a checkpoint, writes its rank file (stopped by SIGTERM) and exits 4, as for any
    stop. The resume then has 9 steps left, all warm-up (--warmup-steps 9), and completes to
    the uninterrupted run's losses."""
    out = tmp_path / "run"
    args = [*ARGS, "--warmup-steps", "9", "--data", str(token_data), "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "hpml_core.train", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # as engine() runs the others
    deadline = time.monotonic() + 60
    while not caught(proc.pid, signal.SIGTERM):
        assert proc.poll() is None and time.monotonic() < deadline, "no SIGTERM handler was installed"
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    data_opened_before_the_signal = "tokens.bin" in Path(f"/proc/{proc.pid}/maps").read_text()
    output = proc.communicate(timeout=300)[0]
    assert not data_opened_before_the_signal
    assert proc.returncode == 4, output
    record = rank_files(out, attempt=1)[0]
    assert (record["status"], record["steps_completed"]) == ("STOPPED", 1) and "SIGTERM" in record["error"]
    assert json.loads((out / "checkpoints" / "step-00000001" / "manifest.json").read_text())["step"] == 1

    engine([*args, "--resume"])
    record = rank_files(out, attempt=2)[0]
    assert (record["status"], record["resumed_from_step"], record["steps_completed"]) == ("COMPLETED", 1, 10)
    assert record["throughput"] is None and "the 9 steps left after resuming at step 1 were all warm-up" in \
        record["throughput_missing_reason"]
    assert losses(out, attempt=1) + losses(out, attempt=2) == losses(whole)


def test_an_attempt_killed_before_its_rank_file_leaves_its_loss_curve_up_to_its_checkpoint(tmp_path, token_data):
    """kill -9 (a lost node, the kernel's out-of-memory killer) once a run has saved its second
    checkpoint: no rank file, but ``attempts/1/losses.json``, written with each checkpoint. Resumed,
    the run's loss curve as the report assembles it has every step from 0, attempt 1's up to at
    least the checkpoint attempt 2 resumed from, each equal to an uninterrupted run's. A
    ``losses.json`` that is not the schema is a listed problem, and the curve then has the gap."""
    out, whole = tmp_path / "results" / "killed", tmp_path / "results" / "whole"
    args = [*ARGS, "--warmup-steps", "1", "--checkpoint-every", "2", "--profile-steps", "0", "--data", str(token_data)]
    proc = subprocess.Popen([sys.executable, "-m", "hpml_core.train", *args, "--steps", "100000", "--out", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "step-00000004" / "manifest.json").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "no second checkpoint"
            time.sleep(0.01)
    finally:
        proc.kill()
    proc.wait()
    assert rank_files(out, attempt=1) == {}
    saved = json.loads(attempts.losses_path(out, 1).read_text())
    resume_at = max(int(manifest.parent.name.removeprefix("step-"))  # the newest whole checkpoint
                    for manifest in (out / "checkpoints").glob("step-*/manifest.json"))
    assert saved["start_step"] == 0 and len(saved["values"]) >= resume_at >= 4

    steps = resume_at + 3
    engine([*args, "--steps", str(steps), "--resume", "--out", str(out)])
    engine([*args, "--steps", str(steps), "--out", str(whole)])
    (result,), problems, _ = collect.collect(out.parent, {"killed": 1}, repeated=False)
    assert not problems and [attempt.number for attempt in result.attempts] == [1, 2]
    curve = result.loss_curve()
    assert [(step, attempt) for step, _, attempt in curve] == [(step, 1 if step < resume_at else 2)
                                                                for step in range(steps)]
    assert [loss for _, loss, _ in curve] == losses(whole)

    attempts.losses_path(out, 1).write_text('{"start_step": 0}')  # cut short: no values
    (result,), problems, _ = collect.collect(out.parent, {"killed": 1}, repeated=False)
    assert [(p.path, p.reason) for p in problems] == [
        (str(attempts.losses_path(out, 1)), "does not match the loss-file schema (values: Field required)")]
    assert [step for step, _, _ in result.loss_curve()] == list(range(resume_at, steps))
