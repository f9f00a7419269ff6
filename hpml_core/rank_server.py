"""A warm process that forks runs: the local site's ``hpml submit`` and the tests start their
launches here, so that a launch costs its own start-up and training, not the 3 to 4 s of CPU
that importing torch, its compiler, DTensor and the engine (and DeepSpeed, under ZeRO) takes
each time (hpml_core/local_ranks.py says what is imported and why forking is safe).

    python -m hpml_core.rank_server serve SOCKET READY_FD [--deepspeed]   (jobs/rank_servers.py starts it)
    python -m hpml_core.rank_server launch SOCKET NPROC (-m hpml_core.train | SCRIPT) ARGS...

``launch`` is what runs in place of ``python -m hpml_core.local_ranks NPROC ...``: a small
client, torch-free, that hands the server its standard input, output and error, its arguments,
environment and working directory, waits, and exits with the launch's status. The server forks
a launcher for it, which takes those as its own and forks the ranks (one process alone gets no
rendezvous, as when started by hand; several get OMP_NUM_THREADS=1 unless it is set, as
local_ranks gives them), so the ranks write straight to the client's streams.

The client stands for its launch: a stop signal to it (SIGTERM, SIGUSR1; SIGINT and SIGHUP as
SIGTERM, as local_ranks passes them on) reaches every rank, which saves a checkpoint and stops,
and the client still waits for the launch's status; a killed client (SIGKILL) takes the ranks
with it at once. A client whose parent has gone (``hpml submit`` killed with SIGKILL) stops its
launch as if it had got SIGTERM: no run trains on unseen, and the next ``hpml submit`` resumes
it from the checkpoint. A setting read when a process starts (glibc's MALLOC_*) cannot reach a forked
rank: such launches start fresh processes instead (hpml_core/local_ranks.py), and so does every
rank on a machine with a GPU (CUDA must not meet a fork), where the server still saves its
launcher's imports.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys

from hpml_core import local_ranks

MAX_FDS = 3  # standard input, output and error
# The signals a client passes on to its launch, each sent as one byte (its number).
RELAYED = tuple(local_ranks.FORWARDED)
# How often a client looks whether the process that started it (hpml submit) is still there.
PARENT_CHECK_S = 1.0


def serve(path: str, ready_fd: int, deepspeed: bool) -> int:
    """Import, listen, say so on ``ready_fd`` (its standard output has DeepSpeed's notes), then
    fork a launcher per connection until the process that started this one is gone. A launcher
    leaves this function only by exiting, and so do its ranks (their SystemExit unwinds through
    here to the interpreter's own exit): nothing below may catch SystemExit or BaseException."""
    parent = os.getppid()
    local_ranks.preload(deepspeed)
    threads = os.environ.get("OMP_NUM_THREADS")  # what the imported OpenMP runtime read
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
            _launch(conn, request, fds, threads)
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


def _launch(conn: socket.socket, request: dict, fds: list[int], server_threads: str | None) -> None:
    """In the launcher: become the client's process (its standard streams, environment, working
    directory), fork the ranks, wait for them, send their status back and leave at once: the
    launcher ran nothing of the engine's, and the client's pipes close only when it is gone."""
    for target_fd, fd in enumerate(fds):
        os.dup2(fd, target_fd)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    nproc = request["nproc"]
    if nproc > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")

    fresh = local_ranks.has_gpu()

    def in_rank() -> None:
        conn.close()
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if not fresh and threads != (server_threads or "") and threads.isdigit() and int(threads) > 0:
            import torch  # imported already, by preload

            torch.set_num_threads(int(threads))  # what OMP_NUM_THREADS gives a process it starts

    pids = local_ranks.start(nproc, request["target"], fresh=fresh, in_rank=in_rank)
    code = local_ranks.supervise(pids, abandoned=lambda: _watch_client(conn, pids))
    try:
        conn.sendall(f"{code}\n".encode())
    except OSError:
        pass
    os._exit(0)


def _watch_client(conn: socket.socket, pids: list[int]) -> bool:
    """Pass on to every rank still running the stop signals the client relayed meanwhile, as
    local_ranks passes on its own; and say whether the client has gone (it closed, or was
    killed), when ``supervise`` kills the ranks."""
    if not select.select([conn], [], [], 0)[0]:
        return False
    try:
        relayed = conn.recv(64)
    except OSError:
        return True
    for signum in relayed:
        for pid in pids:
            try:
                os.kill(pid, local_ranks.FORWARDED[signal.Signals(signum)])
            except (ProcessLookupError, ValueError, KeyError):  # gone already; not a stop signal
                pass
    return not relayed


def launch(path: str, nproc: int, target: list[str]) -> int:
    """The client: hand this process's streams, arguments and environment to the server, pass
    on the stop signals it gets (and one for its parent's end), and exit with the launch's
    status."""
    request = {"nproc": nproc, "target": target, "env": dict(os.environ), "cwd": os.getcwd()}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.connect(path)
        except OSError as error:
            print(f"rank server at {path}: {error.strerror or error}", file=sys.stderr)
            return 1
        body = json.dumps(request).encode() + b"\n"
        socket.send_fds(conn, [body[:1]], [0, 1, 2])
        conn.sendall(body[1:])

        def relay(signum, _frame) -> None:
            try:
                conn.send(bytes([signum]))
            except OSError:  # the launch has ended meanwhile
                pass

        for signum in RELAYED:
            signal.signal(signum, relay)
        parent, answer = os.getppid(), b""
        conn.settimeout(PARENT_CHECK_S)
        while not answer.endswith(b"\n"):
            try:
                more = conn.recv(64)
            except TimeoutError:
                if parent and os.getppid() != parent:  # orphaned: stopped as if by SIGTERM, once
                    parent = 0
                    relay(signal.SIGTERM, None)
                continue
            if not more:
                print(f"rank server at {path}: the launch ended without a status", file=sys.stderr)
                return 1
            answer += more
    return int(answer)


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] and len(argv) >= 3:
        return serve(argv[1], int(argv[2]), deepspeed="--deepspeed" in argv[3:])
    if argv[:1] == ["launch"] and len(argv) >= 4 and argv[2].isdigit() and int(argv[2]) >= 1:
        return launch(argv[1], int(argv[2]), argv[3:])
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
