"""One process per pytest worker that has imported what the engine's ranks import, and forks
every test launch from there: a launch costs its own start-up and training, not the 2 to 5 s
of CPU that importing torch, its compiler, DTensor and the engine (and DeepSpeed, under ZeRO)
takes each time (hpml_core/local_ranks.py says what is imported and why forking is safe).

    python -m tests.rank_server serve SOCKET READY_FD [--deepspeed]   (started by RankServer)
    python -m tests.rank_server launch SOCKET NPROC (-m hpml_core.train | SCRIPT) ARGS...

``launch`` is what a test runs in place of ``python -m hpml_core.train`` (or of torchrun): a
small client, torch-free, that hands the server its standard input, output and error, its
arguments, environment and working directory, waits, and exits with the launch's status. The
server forks a launcher for it, which takes those as its own and forks the ranks (one process
alone gets no rendezvous, as when started by hand), so the ranks write straight to the test's
pipes. If the client is killed (a test's timeout), the launcher kills the ranks. A setting that
a launch adds to the environment and that is read when a process starts (glibc's MALLOC_*)
cannot reach a forked rank: such launches, and any on a machine with a GPU, start fresh
processes instead (conftest's engine); the server itself starts with the worker's environment.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from hpml_core import local_ranks

MAX_FDS = 3  # standard input, output and error


def serve(path: str, ready_fd: int, deepspeed: bool) -> int:
    """Import, listen, say so on ``ready_fd`` (its standard output has DeepSpeed's notes), then
    fork a launcher per connection until the process that started this one is gone. A launcher
    leaves this function only by exiting, and so do its ranks (their SystemExit unwinds through
    here to the interpreter's own exit): nothing below may catch SystemExit or BaseException."""
    parent = os.getppid()
    local_ranks.preload(deepspeed)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    while os.getppid() == parent:
        _reap()
        if not select.select([listener], [], [], 1.0)[0]:
            continue
        conn, _ = listener.accept()
        try:
            request, fds = _receive(conn)
        except (OSError, ValueError) as error:
            print(f"rank server: a request refused: {error}", file=sys.stderr, flush=True)
            conn.close()
            continue
        if os.fork() == 0:
            listener.close()
            _launch(conn, request, fds)
        conn.close()
        for fd in fds:
            os.close(fd)
    return 0


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """One request: the client's three file descriptors with the first bytes, then a JSON line."""
    data, fds, _, _ = socket.recv_fds(conn, 65536, MAX_FDS)
    while not data.endswith(b"\n"):
        more = conn.recv(65536)
        if not more:
            raise ValueError("the client left before its request ended")
        data += more
    if len(fds) != MAX_FDS:
        raise ValueError(f"{len(fds)} file descriptors, not {MAX_FDS}")
    return json.loads(data), fds


def _launch(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the launcher: become the client's process (its standard streams, environment, working
    directory), fork the ranks, wait for them, send their status back and leave at once: the
    launcher ran nothing of the engine's, and the client's pipes close only when it is gone."""
    for target_fd, fd in enumerate(fds):
        os.dup2(fd, target_fd)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    pids = local_ranks.start(request["nproc"], request["target"], fresh=False, in_rank=conn.close)
    code = local_ranks.supervise(pids, abandoned=lambda: _client_gone(conn))
    try:
        conn.sendall(f"{code}\n".encode())
    except OSError:
        pass
    os._exit(0)


def _client_gone(conn: socket.socket) -> bool:
    """The client sends nothing after its request: readable means it closed (or was killed)."""
    return bool(select.select([conn], [], [], 0)[0])


def launch(path: str, nproc: int, target: list[str]) -> int:
    """The client: hand this process's streams, arguments and environment to the server, and
    exit with the launch's status."""
    request = {"nproc": nproc, "target": target, "env": dict(os.environ), "cwd": os.getcwd()}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        body = json.dumps(request).encode() + b"\n"
        socket.send_fds(conn, [body[:1]], [0, 1, 2])
        conn.sendall(body[1:])
        answer = b""
        while not answer.endswith(b"\n"):
            more = conn.recv(64)
            if not more:
                print(f"rank server at {path}: the launch ended without a status", file=sys.stderr)
                return 1
            answer += more
    return int(answer)


class RankServer:
    """A server of this pytest worker, started when a test first needs it, gone with the worker."""

    def __init__(self, deepspeed: bool):
        self.deepspeed = deepspeed
        self.folder: Path | None = None
        self.process: subprocess.Popen | None = None

    def ensure_started(self, env: dict[str, str], cwd: Path) -> str:
        """Start the server (with the environment the launches would import under) if it is not
        running, wait until it listens, and hand back its socket's path."""
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="hpml-ranks-"))
        path, log_path = str(self.folder / "socket"), self.folder / "server.log"
        if self.process is None or self.process.poll() is not None:
            if os.path.exists(path):
                os.unlink(path)
            ready_read, ready_write = os.pipe()
            command = [sys.executable, "-m", "tests.rank_server", "serve", path, str(ready_write),
                       *(["--deepspeed"] if self.deepspeed else [])]
            with log_path.open("a") as log:
                self.process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=log, pass_fds=[ready_write])
            os.close(ready_write)
            with os.fdopen(ready_read, "rb") as ready:
                said = select.select([ready], [], [], 300)[0] and ready.readline()
            if said != b"ready\n":
                self.process.kill()
                raise RuntimeError(f"the rank server did not start:\n{log_path.read_text()}")
        return path

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def main(argv: list[str]) -> int:
    if argv[0] == "serve":
        return serve(argv[1], int(argv[2]), deepspeed="--deepspeed" in argv[3:])
    if argv[0] == "launch":
        return launch(argv[1], int(argv[2]), argv[3:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
