"""The rank server forks the local site's runs and the test launches (hpml_core/rank_server.py):
what a launch gets from it must be what a process started by hand, or by torchrun, gets, or
the local site's figures and the other tests prove less than they say. Each launch here runs a
few lines of Python, not the engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import RANK_SERVERS, REPO, engine

RANK_SCRIPT = """
import os, signal, sys, time
from pathlib import Path
import torch
rank = int(os.environ.get("RANK", -1))
if sys.argv[2] == "stop":  # as the engine answers a stop signal: say so, and exit 4 (stopped)
    signal.signal(signal.SIGTERM, lambda *_: (Path(sys.argv[1], f"stopped-{rank}").write_text("yes"), os._exit(4)))
line = (f"rank {rank} of {os.environ.get('WORLD_SIZE')} in {os.getcwd()} sees {os.environ.get('HPML_TEST_PROBE')}"
        f" with {torch.get_num_threads()} threads\\n")
os.write(1, line.encode())  # one write, so that the ranks' lines do not interleave on the shared pipe
Path(sys.argv[1], f"pid-{rank}").write_text(str(os.getpid()))
if sys.argv[2] == "fail" and rank == 1:
    sys.exit(7)
if sys.argv[2] in ("hang", "stop"):
    time.sleep(600)
"""


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / "rank.py"
    path.write_text(RANK_SCRIPT)
    return path


def test_a_launch_has_the_tests_environment_and_folder_and_each_rank_its_rendezvous(script, tmp_path):
    done = engine([str(tmp_path), "ok"], nproc=4, env={"HPML_TEST_PROBE": "probe-value"}, script=script)
    assert sorted(done.stdout.splitlines()) == [f"rank {rank} of 4 in {REPO} sees probe-value with 1 threads"
                                                for rank in range(4)]
    alone = engine([str(tmp_path), "ok"], script=script)  # one process gets no rendezvous, as by hand
    assert alone.stdout == f"rank -1 of None in {REPO} sees None with 1 threads\n"


def test_the_first_failing_ranks_status_is_the_launchs(script, tmp_path):
    failed = engine([str(tmp_path), "fail"], nproc=2, script=script, check=False)
    assert failed.returncode == 7, failed


def test_killing_a_launch_kills_its_ranks(script, tmp_path):
    """A test that gives up on a launch kills its process group (conftest's engine, on its
    timeout): the ranks the server forked are not in that group, and must go too."""
    client, ranks = start_client(script, tmp_path, "hang")
    os.killpg(client.pid, signal.SIGKILL)
    client.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in ranks):
        assert time.monotonic() < deadline, f"ranks {ranks} still running"
        time.sleep(0.1)


def start_client(script: Path, tmp_path: Path, action: str) -> tuple[subprocess.Popen, list[int]]:
    """A client of this worker's server launching ``script`` on 2 ranks, once both have started;
    and the ranks' pids."""
    command = RANK_SERVERS.launch_command(False, 2, [str(script), str(tmp_path), action], dict(os.environ), REPO)
    client = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True)
    pid_files = [tmp_path / f"pid-{rank}" for rank in range(2)]
    deadline = time.monotonic() + 60
    while not all(path.exists() and path.read_text() for path in pid_files):
        assert time.monotonic() < deadline and client.poll() is None
        time.sleep(0.1)
    return client, [int(path.read_text()) for path in pid_files]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_to_the_client_reaches_every_rank_and_the_client_waits_for_them(script, tmp_path, signum):
    """The local site passes a Ctrl-C or a SIGTERM on to a run's client: each rank must get it
    as SIGTERM (and stop at a checkpoint), and the client exit with their status. Without the
    relay, the client dies of the signal (exit -signum) and the launcher kills the ranks."""
    client, ranks = start_client(script, tmp_path, "stop")
    os.kill(client.pid, signum)
    out, _ = client.communicate(timeout=60)
    assert client.returncode == 4, out
    assert sorted(path.name for path in tmp_path.glob("stopped-*")) == ["stopped-0", "stopped-1"]
    assert not any(alive(pid) for pid in ranks)


def test_a_launch_gets_the_threads_its_environment_asks_for(script, tmp_path):
    """OMP_NUM_THREADS is read when a process starts, and the server's ranks do not start: a
    launch asking for other threads than the server imported torch with (1, conftest's) must
    get them all the same."""
    command = RANK_SERVERS.launch_command(False, 1, [str(script), str(tmp_path), "ok"], dict(os.environ), REPO)
    for threads in ("2", "1"):
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "OMP_NUM_THREADS": threads})
        assert done.stdout == f"rank -1 of None in {REPO} sees None with {threads} threads\n", done


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
