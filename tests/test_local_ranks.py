"""hpml's launcher for the local site (hpml_core/local_ranks.py), run as the local backend runs
it, ``python -m hpml_core.local_ranks NPROC SCRIPT ...``: what each rank gets, whose status the
launch ends with, and that a stop signal to the launcher reaches the ranks. Each launch runs a
few lines of Python, not the engine (tests/test_submit_local.py runs the engine through it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

RANK_SCRIPT = """
import os, signal, sys, time
from pathlib import Path
rank, out, action = int(os.environ.get("RANK", -1)), Path(sys.argv[1]), sys.argv[2]
preloaded = "torch" in sys.modules  # imported by the launcher before it forked this rank
os.write(1, f"rank {rank} of {os.environ['WORLD_SIZE']} at {os.environ['MASTER_PORT']} "
            f"preloaded {preloaded}\\n".encode())  # one write: the ranks share the pipe
if action == "usage":  # the engine's usage error: every rank finds it, rank 0 alone says it
    if rank == 0:
        time.sleep(0.5)  # still starting (a starved process) when rank 1 has failed
        os.write(2, b"rank 0 says why\\n")
    os._exit(2)
def stopped(signum, frame):
    (out / f"stopped-{rank}").write_text(signal.Signals(signum).name)
    os._exit(4)
signal.signal(signal.SIGTERM, stopped)
(out / f"pid-{rank}").write_text(str(os.getpid()))
if action == "fail" and rank == 1:
    os._exit(7)  # the first to fail (at once: no interpreter teardown) ...
if action == "fail" and rank == 0:
    time.sleep(0.05)  # ... and a peer failing a moment later, as on the connection rank 1 closed
    os._exit(5)
if action == "wait":
    time.sleep(600)
"""


@pytest.fixture
def launch(tmp_path):
    """Start ``python -m hpml_core.local_ranks [flags] NPROC rank.py FOLDER ACTION``; whatever a
    failed test leaves of its ranks (its own process group) is killed afterwards."""
    script, started = tmp_path / "rank.py", []
    script.write_text(RANK_SCRIPT)

    def start(nproc: int, action: str, *flags: str) -> subprocess.Popen:
        started.append(subprocess.Popen([sys.executable, "-m", "hpml_core.local_ranks", *flags, str(nproc),
                                         str(script), str(tmp_path), action], cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True))
        return started[-1]

    yield start
    for launcher in started:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("flags, preloaded", [((), True), (("--fresh",), False)])
def test_each_rank_gets_its_rank_and_one_rendezvous_forked_after_the_imports_or_fresh(launch, flags, preloaded):
    launcher = launch(3, "ok", *flags)
    out, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 0, out
    lines = sorted(out.splitlines())
    port = lines[0].split(" at ")[1].split()[0]
    assert lines == [f"rank {rank} of 3 at {port} preloaded {preloaded}" for rank in range(3)]


def test_the_launch_ends_with_the_status_of_the_first_rank_to_fail(launch):
    """Rank 1 exits 7 and rank 0, 50 ms later, 5: the launch says 7. (Polling the ranks in rank
    order every 0.1 s, instead of being woken as each exits, would say 5.)"""
    launcher = launch(2, "fail")
    launcher.communicate(timeout=120)
    assert launcher.returncode == 7


def test_after_a_usage_error_the_launcher_waits_for_rank_0_to_say_why(launch):
    """Rank 1 exits 2 at once; rank 0, half a second behind it, has not yet taken a stop handler
    (the engine takes it in its first lines), so a SIGTERM would kill it before it says why: the
    launcher lets it end on its own, and the launch ends with 2 and rank 0's line."""
    started = launch(2, "usage")
    _, err = started.communicate(timeout=120)
    assert started.returncode == 2
    assert err == "rank 0 says why\n"


def test_a_stop_signal_to_the_launcher_reaches_every_rank_and_is_waited_for(launch, tmp_path):
    """SIGTERM to the launcher alone (not its process group): each rank gets it, stops (status 4,
    the engine's "stopped") and the launcher ends with that status once they have."""
    launcher = launch(2, "wait")
    pid_files = [tmp_path / f"pid-{rank}" for rank in range(2)]
    deadline = time.monotonic() + 120
    while not all(path.exists() and path.read_text() for path in pid_files):
        assert time.monotonic() < deadline and launcher.poll() is None, "the ranks did not start"
        time.sleep(0.1)
    os.kill(launcher.pid, signal.SIGTERM)
    launcher.communicate(timeout=60)
    assert launcher.returncode == 4
    assert [(tmp_path / f"stopped-{rank}").read_text() for rank in range(2)] == ["SIGTERM", "SIGTERM"]
