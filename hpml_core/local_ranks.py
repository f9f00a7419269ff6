"""Start the ranks of one run on this machine, as torchrun would: by hand, for the benchmarks,
and (``start`` and ``supervise``, through hpml_core/rank_server.py) for the local site.

    python -m hpml_core.local_ranks [--fresh] NPROC (-m hpml_core.train | SCRIPT) ARGS...

What it gives each rank is what torchrun and the deepspeed launcher give: RANK, LOCAL_RANK,
WORLD_SIZE and one rendezvous address (the engine's "env" launch), standard output and error
shared with the launcher, and, as torchrun does, OMP_NUM_THREADS=1 unless it is set. The first
rank to fail takes the others down (SIGTERM, SIGKILL 30 s later; after a usage error, which every
rank finds and rank 0 says, once they have had 10 s to end on their own) and the launch ends
with that rank's status, the engine's own (2: usage, 3: out of memory, 4: stopped), where
torchrun would say 1. A stop signal to the launcher (SIGTERM, SIGUSR1; SIGINT and SIGHUP as
SIGTERM) is passed on to the ranks, which save a checkpoint and stop, and the launcher waits
for them.

Why not torchrun: on a CPU, most of a small run's time is its ranks starting. Each rank imports
torch, its compiler (any optimizer imports it), DTensor (DDP does) and, under ZeRO, DeepSpeed
with the Muon optimizer it compiles: 2 to 3.5 s of CPU per rank, and torchrun's own process
another 1.8 s. ``preload`` imports those once, in this process, which then forks one child
per rank (it has one thread then, so forking is safe). Each child runs the engine (or a
script) as ``__main__``, exactly as ``python -m hpml_core.train`` would after its imports: the
engine's own module, its start-up (the stop handler, gc) and its exit run in the child; only
the libraries were loaded before. A ZeRO-3 launch of the tiny model on 4 ranks of a 2-core
machine took 10.5 s of CPU this way against 22.8 s under torchrun (docs/testing.md).

CUDA must not be touched before a fork, so on a machine with a GPU, and with ``--fresh``, each
child execs a new interpreter instead (for settings read when a process starts, such as glibc's
MALLOC_* variables, or memory measured against a fresh process's). The rank server that the
local site's ``hpml submit`` and the tests fork their launches from (hpml_core/rank_server.py)
starts and supervises ranks with ``start`` and ``supervise`` too.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hpml_core.contract.errors import EXIT_USAGE

ENGINE_MODULES = ("checkpoint", "export", "launch", "resuming", "stopping", "memory", "mesh", "model",
                  "parallelize", "plan", "profile_window", "rank_result", "stepper", "timing", "fsdp", "zero")
# Device files of a GPU driver: where one exists, CUDA (or ROCm) may be used, and ranks start fresh.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/kfd")
# How long the other ranks may take to end on their own after one ended with a usage error.
USAGE_GRACE_S = 10
FORWARDED = {signal.SIGTERM: signal.SIGTERM, signal.SIGUSR1: signal.SIGUSR1,
             signal.SIGINT: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM}


def has_gpu() -> bool:
    """Whether this machine has a GPU driver, asked without touching CUDA."""
    return any(Path(path).exists() for path in GPU_DEVICE_FILES)


def uses_deepspeed(args: list[str]) -> bool:
    """Whether the engine's arguments choose a ZeRO mode: the last --mode (as in argparse), else
    the run spec's. Only a guess for ``preload``: a rank imports whatever it needs itself."""
    from hpml_core.contract.config import MODE_ALIASES, ZERO_STAGES, read_run_spec
    from hpml_core.contract.errors import UsageError

    modes = [value for flag, value in zip(args, args[1:]) if flag == "--mode"]
    if not modes and "--config" in args[:-1]:
        try:
            modes = [read_run_spec(Path(args[args.index("--config") + 1]))["mode"]]
        except UsageError:  # the engine says so, in its words
            return False
    return bool(modes) and MODE_ALIASES.get(modes[-1], modes[-1]) in ZERO_STAGES


def preload(deepspeed: bool) -> None:
    """Import what every rank would import at its start and in its first step, with the cycle
    collector off while they are made and what they made frozen (as the engine does at start)."""
    import importlib

    gc.disable()
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  (torch.optim imports it on an optimizer's first param group)
    import torch.distributed.tensor  # noqa: F401  (DistributedDataParallel imports it)

    for name in ENGINE_MODULES:
        importlib.import_module(f"hpml_core.{name}")
    if deepspeed:
        import deepspeed  # noqa: F401
        import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: F401  (ZeRO's optimizer check imports it)
    gc.freeze()
    gc.enable()


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
    waits for the launch is gone (``abandoned``, asked every 0.1 s, torchrun's
    --monitor-interval; the rank server's also passes on the stop signals its client relays),
    the ranks are killed at once.

    Woken by SIGCHLD as a rank exits, so that the first rank to fail is the one whose status
    the launch ends with: a rank that runs out of memory exits 3, and its peers fail a moment
    later on the connection it closed (as the tests' out-of-memory run shows).

    A usage error (status 2) is found by every rank before they meet, and said by rank 0
    alone. So the others get up to ``USAGE_GRACE_S`` to end on their own before they are
    stopped: a rank 0 still starting (not yet past the engine's first lines, where it takes its
    stop handler) when rank 1 had failed was killed by that stop before it said why, and the
    launch ended with status 2 and nothing on its standard error."""
    codes: dict[int, int] = {}
    failed: int | None = None  # the first failure's status
    stop_at = 0.0
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])  # pending until taken below
    try:
        while len(codes) < len(pids):
            for pid in pids:
                if pid not in codes:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        codes[pid] = os.waitstatus_to_exitcode(status)
            if failed is None:
                failed = next((codes[pid] for pid in pids if codes.get(pid, 0) != 0), None)
                stop_at = time.monotonic() + (USAGE_GRACE_S if failed == EXIT_USAGE else 0)
            if failed is not None and time.monotonic() >= stop_at:
                stop([pid for pid in pids if pid not in codes])
                break
            if abandoned():
                stop([pid for pid in pids if pid not in codes], grace_s=0)
                return 128 + signal.SIGKILL
            signal.sigtimedwait([signal.SIGCHLD], 0.1)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    if failed is None:
        return 0
    return failed if failed > 0 else 128 - failed  # killed by a signal: the shell's 128 + n


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


def pass_on_stop_signals(pids: list[int]) -> None:
    """In the launcher, after the fork (a child must not inherit this): a stop signal reaches
    every rank still running, which stops at a checkpoint; ``supervise`` waits for them."""

    def forward(signum, _frame) -> None:
        for pid in pids:
            try:
                os.kill(pid, FORWARDED[signal.Signals(signum)])
            except ProcessLookupError:  # already gone
                pass

    for signum in FORWARDED:
        signal.signal(signum, forward)


def main(argv: list[str]) -> int:
    fresh = argv[:1] == ["--fresh"]
    argv = argv[1:] if fresh else argv
    if len(argv) < 2 or not argv[0].isdigit() or int(argv[0]) < 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    nproc, target = int(argv[0]), argv[1:]
    if nproc > 1:
        # As torchrun does: ranks that each start a thread per core oversubscribe the cores, and
        # OpenMP's idle threads spin while they wait. Set before torch is imported, here or in a
        # fresh rank, which is when OpenMP reads it.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    fresh = fresh or has_gpu()
    if not fresh:
        preload(uses_deepspeed(target))
    pids = start(nproc, target, fresh)
    pass_on_stop_signals(pids)
    code = supervise(pids)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # without the teardown of what preload imported (hpml_core.train says why)


if __name__ == "__main__":
    main(sys.argv[1:])
