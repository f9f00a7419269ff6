"""Start the ranks of one test launch by forking, as torchrun or the deepspeed launcher would
start them as processes of their own.

    python -m tests.forked_ranks NPROC (-m hpml_core.train | SCRIPT) ARGS...

Most of a tiny test run's time is its ranks importing torch, its compiler (any optimizer imports
it), DTensor (DDP does) and, under ZeRO, DeepSpeed with the Muon optimizer it compiles: 2 to 3.5 s
of CPU per rank, for a run that trains in a fraction of a second. ``preload`` imports those once,
in a process that then forks one child per rank (it has one thread then, so forking is safe);
tests/rank_server.py keeps such a process for a whole test session and forks every launch from
it. Each child runs the engine (or the test's wrapper script) as ``__main__``, exactly as
``python -m hpml_core.train`` would after its imports: the engine's own module, its start-up
(the stop handler, gc) and its exit run in the child; only the libraries were loaded before.
The engine's modules other than ``hpml_core.train`` itself are imported too: nothing in them
acts at import.

What it does for the ranks is what torchrun and the deepspeed launcher do: each child gets
RANK, LOCAL_RANK, WORLD_SIZE and one rendezvous address (the engine's "env" launch); the first
rank to fail takes the others down (SIGTERM, SIGKILL 30 s later); the launch ends with that
rank's status (torchrun's would be 1). The children share the launcher's stdout and stderr.
Run as a command, it preloads nothing: each child execs a new interpreter, for settings read
when a process starts (glibc's MALLOC_* variables), for memory measured against a fresh
process's, and on a machine with a GPU (CUDA must not be touched before a fork).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from typing import Callable

ENGINE_MODULES = ("checkpoint", "export", "launch", "resuming", "stopping", "memory", "mesh", "model",
                  "parallelize", "plan", "profile_window", "rank_result", "stepper", "timing", "fsdp", "zero")


def uses_deepspeed(args: list[str]) -> bool:
    """Whether the engine's arguments choose a ZeRO mode (the last --mode wins, as in argparse)."""
    from hpml_core.contract.config import MODE_ALIASES, ZERO_STAGES

    modes = [value for flag, value in zip(args, args[1:]) if flag == "--mode"]
    return bool(modes) and MODE_ALIASES.get(modes[-1], modes[-1]) in ZERO_STAGES


def preload(deepspeed: bool) -> None:
    """Import what every rank would import at its start and in its first step."""
    import importlib

    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  (torch.optim imports it on an optimizer's first param group)
    import torch.distributed.tensor  # noqa: F401  (DistributedDataParallel imports it)

    for name in ENGINE_MODULES:
        importlib.import_module(f"hpml_core.{name}")
    if deepspeed:
        import deepspeed  # noqa: F401
        import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: F401  (ZeRO's optimizer check imports it)


def run_rank(target: list[str]) -> None:
    """In the child: run the engine, or the script, as ``__main__``; never returns (SystemExit)."""
    import runpy

    if target[0] == "-m":
        sys.argv = [target[1], *target[2:]]
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(target)
        sys.path[0] = os.path.dirname(os.path.abspath(target[0]))  # as `python SCRIPT` sets it
        runpy.run_path(target[0], run_name="__main__")
    sys.exit(0)


def start(nproc: int, target: list[str], fresh: bool, in_rank: Callable[[], None] = lambda: None) -> list[int]:
    """Fork the ranks and hand back their pids. In each child ``in_rank`` runs first, then the
    target, whose exit (SystemExit, or an exception) ends the child where it is: this function
    returns only in the parent. One process alone gets no rendezvous, as when started by hand."""
    rendezvous = {}
    if nproc > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        rendezvous = {"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
                      "MASTER_PORT": str(port)}
    sys.stdout.flush()
    sys.stderr.flush()
    pids = []
    for rank in range(nproc):
        pid = os.fork()
        if pid == 0:
            in_rank()
            if rendezvous:
                os.environ.update(rendezvous, RANK=str(rank), LOCAL_RANK=str(rank))
            if fresh:
                os.execv(sys.executable, [sys.executable, *target])
            run_rank(target)
        pids.append(pid)
    return pids


def supervise(pids: list[int], abandoned: Callable[[], bool] = lambda: False) -> int:
    """Wait for every rank; on the first failure, stop the others as torchrun does. If whoever
    waits for the launch is gone (``abandoned``), the ranks are killed at once."""
    codes: dict[int, int] = {}
    while len(codes) < len(pids):
        for pid in pids:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        failed = next((codes[pid] for pid in pids if codes.get(pid, 0) != 0), None)
        if failed is not None:
            stop([pid for pid in pids if pid not in codes])
            return failed if failed > 0 else 128 - failed  # killed by a signal: the shell's 128 + n
        if abandoned():
            stop([pid for pid in pids if pid not in codes], grace_s=0)
            return 128 + signal.SIGKILL
        time.sleep(0.1)  # torchrun's --monitor-interval
    return 0


def stop(pids: list[int], grace_s: float = 30) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGTERM if grace_s else signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    for pid in pids:
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.1)


def main(argv: list[str]) -> int:
    nproc, target = int(argv[0]), argv[1:]
    return supervise(start(nproc, target, fresh=True))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
