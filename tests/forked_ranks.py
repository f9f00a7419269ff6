"""Start the ranks of one test launch from one process that has imported what they all import.

    python -m tests.forked_ranks NPROC (-m hpml_core.train | SCRIPT) ARGS...

Most of a tiny test run's time is its ranks importing torch, its compiler (any optimizer imports
it), DTensor (DDP does) and, under ZeRO, DeepSpeed with the Muon optimizer it compiles: 2 to 3.5 s
of CPU per rank, for a run that trains in a fraction of a second. This launcher imports those
once, then forks one child per rank (it has one thread then, so forking is safe), and each
child runs the engine (or the test's wrapper script) as ``__main__``, exactly as
``python -m hpml_core.train`` would after its imports: the engine's own module, its start-up
(the stop handler, gc) and its exit run in the child; only the libraries were loaded before.
The engine's modules other than ``hpml_core.train`` itself are imported too: nothing in them
acts at import.

What it does for the ranks is what torchrun and the deepspeed launcher do: each child gets
RANK, LOCAL_RANK, WORLD_SIZE and one rendezvous address (the engine's "env" launch); the first
rank to fail takes the others down (SIGTERM, SIGKILL 30 s later); the launcher exits with that
rank's status (torchrun's would be 1). The children share the launcher's stdout and stderr.
With ``--fresh`` each child execs a new interpreter instead: for settings read when a process
starts (glibc's MALLOC_* variables), and for memory measured against a fresh process's.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys
import time

ENGINE_MODULES = ("checkpoint", "export", "launch", "resuming", "stopping", "memory", "mesh", "model",
                  "parallelize", "plan", "profile_window", "rank_result", "stepper", "timing", "fsdp", "zero")


def preload(args: list[str]) -> None:
    """Import what every rank of this launch would import at its start and in its first step."""
    import importlib

    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  (torch.optim imports it on an optimizer's first param group)
    import torch.distributed.tensor  # noqa: F401  (DistributedDataParallel imports it)

    for name in ENGINE_MODULES:
        importlib.import_module(f"hpml_core.{name}")
    from hpml_core.contract.config import MODE_ALIASES, ZERO_STAGES

    modes = [value for flag, value in zip(args, args[1:]) if flag == "--mode"]
    if modes and MODE_ALIASES.get(modes[-1], modes[-1]) in ZERO_STAGES:  # the last one wins, as in argparse
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


def main(argv: list[str]) -> int:
    fresh = argv[0] == "--fresh"
    nproc, target = int(argv[fresh]), argv[fresh + 1:]
    if not fresh:
        gc.disable()
        preload(target)
        gc.freeze()
        gc.enable()
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
            os.environ.update(rendezvous, RANK=str(rank), LOCAL_RANK=str(rank))
            if fresh:
                os.execv(sys.executable, [sys.executable, *target])
            run_rank(target)
        pids.append(pid)
    return supervise(pids)


def supervise(pids: list[int]) -> int:
    """Wait for every rank; on the first failure, stop the others as torchrun does."""
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
        time.sleep(0.1)  # torchrun's --monitor-interval
    return 0


def stop(pids: list[int], grace_s: float = 30) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for pid in pids:
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
