"""The rank server forks the test launches (tests/rank_server.py): what a launch gets from it must
be what a process started by hand, or by torchrun, gets, or the other tests prove less than
they say. Each launch here runs a few lines of Python, not the engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, engine

RANK_SCRIPT = """
import os, sys, time
from pathlib import Path
rank = int(os.environ.get("RANK", -1))
line = f"rank {rank} of {os.environ.get('WORLD_SIZE')} in {os.getcwd()} sees {os.environ.get('HPML_TEST_PROBE')}\\n"
os.write(1, line.encode())  # one write, so that the ranks' lines do not interleave on the shared pipe
Path(sys.argv[1], f"pid-{rank}").write_text(str(os.getpid()))
if sys.argv[2] == "fail" and rank == 1:
    sys.exit(7)
if sys.argv[2] == "hang":
    time.sleep(600)
"""


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / "rank.py"
    path.write_text(RANK_SCRIPT)
    return path


def test_a_launch_has_the_tests_environment_and_folder_and_each_rank_its_rendezvous(script, tmp_path):
    done = engine([str(tmp_path), "ok"], nproc=4, env={"HPML_TEST_PROBE": "probe-value"}, script=script)
    assert sorted(done.stdout.splitlines()) == [f"rank {rank} of 4 in {REPO} sees probe-value" for rank in range(4)]
    alone = engine([str(tmp_path), "ok"], script=script)  # one process gets no rendezvous, as by hand
    assert alone.stdout == f"rank -1 of None in {REPO} sees None\n"


def test_the_first_failing_ranks_status_is_the_launchs(script, tmp_path):
    failed = engine([str(tmp_path), "fail"], nproc=2, script=script, check=False)
    assert failed.returncode == 7, failed


def test_killing_a_launch_kills_its_ranks(script, tmp_path):
    """A test that gives up on a launch kills its process group (conftest's engine, on its
    timeout): the ranks the server forked are not in that group, and must go too."""
    from tests.conftest import RANK_SERVERS

    socket_path = RANK_SERVERS[False].ensure_started({**os.environ, "OMP_NUM_THREADS": "1"}, REPO)
    client = subprocess.Popen([sys.executable, "-m", "tests.rank_server", "launch", socket_path, "2", str(script),
                               str(tmp_path), "hang"], cwd=REPO, stdout=subprocess.DEVNULL, start_new_session=True)
    pid_files = [tmp_path / f"pid-{rank}" for rank in range(2)]
    deadline = time.monotonic() + 60
    while not all(path.exists() and path.read_text() for path in pid_files):
        assert time.monotonic() < deadline and client.poll() is None
        time.sleep(0.1)
    ranks = [int(path.read_text()) for path in pid_files]
    os.killpg(client.pid, signal.SIGKILL)
    client.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in ranks):
        assert time.monotonic() < deadline, f"ranks {ranks} still running"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended; its parent, the server's launcher, reaps it


EXIT_SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from hpml_core.train import exit_quickly
out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
def late():
    time.sleep(0.5)
    (out / "thread").write_text("finished")
threading.Thread(target=late, daemon=sys.argv[2] == "daemon").start()
print("unflushed", end="")
exit_quickly(3)
"""


@pytest.mark.parametrize("thread", ["daemon", "not-daemon"])
def test_the_engines_quick_exit_runs_atexit_flushes_and_waits_for_a_thread_that_is_not_a_daemon(tmp_path, thread):
    """The engine leaves without the interpreter's teardown (hpml_core/train.py, exit_quickly):
    its status, its atexit handlers and its buffered output must survive that, and a thread
    that is not a daemon must be waited for, as a normal exit would (a daemon is not)."""
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), thread], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "unflushed", "")
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").exists() == (thread == "not-daemon")
