"""Shared fixtures: real WikiText-2 text from ../shared, tokenized once per test session, and
a helper that runs the engine the way a user would (a process, or one per rank)."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hpml_core import local_ranks
from jobs.rank_servers import RankServers

REPO = Path(__file__).resolve().parents[1]
# The tests see the shipped site profiles only, never the user's own (~/.config/hpml/sites).
os.environ["HPML_SITES"] = str(REPO / "tests" / "no-user-sites")
# One OpenMP thread per process, in every process the tests start: the two
# workers' processes share the cores, and a thread per core in each spins while it waits for
# the others (a 1-process ZeRO-3 step of the tiny model beside two busy processes: 0.092 s with
# a thread per core, 0.057 s with one).
os.environ["OMP_NUM_THREADS"] = "1"
SHARED = Path(os.environ.get("HPML_SHARED", REPO.parent / "shared"))
WIKITEXT = SHARED / "data" / "wikitext-2"


# `make test` runs the suite on two workers (pytest-xdist, --dist loadfile: each file on one
# worker, so a file's module fixtures are built once; --no-loadscope-reorder, or xdist would
# start the files with the most tests first). The longest files start first, so that the short
# ones fill the end and both workers finish together: the real-Slurm file first (it also waits
# on the scheduler, while the other worker's CPU-bound files run), then the others by their
# time in a full run, except the Slurm fault file, which holds the cluster alone: it comes when
# test_slurm.py is likely over (in a full run of 296ca1e it waited 71 s for it, its worker idle).
FIRST = ("test_slurm.py", "test_layouts_study.py", "test_parallel_equivalence.py", "test_setup_memory.py",
         "test_memory_model.py", "test_resume.py", "test_bench.py", "test_mixed_precision.py", "test_train.py",
         "test_slurm_faults.py", "test_tune.py", "test_submit_local.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: FIRST.index(item.path.name) if item.path.name in FIRST else len(FIRST))


@pytest.fixture(scope="session")
def wikitext_valid() -> Path:
    path = WIKITEXT / "valid.txt"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the tests read real WikiText-2 text from ../shared (or $HPML_SHARED)")
    return path


@pytest.fixture(scope="session")
def token_data(tmp_path_factory, wikitext_valid) -> Path:
    """WikiText-2 valid tokenized with a 512-token BPE trained on it: small vocabulary, tiny model."""
    from hpml_core import data

    out = tmp_path_factory.mktemp("data") / "wikitext-2"
    assert data.main(["prepare", "--files", str(wikitext_valid), "--tokenizer", "train",
                      "--vocab-size", "512", "--out", str(out)]) == 0
    return out


def engine(args: list[str], nproc: int = 1, env: dict | None = None, check: bool = True,
           script: Path | None = None) -> subprocess.CompletedProcess:
    """Run the engine (``python -m hpml_core.train``, or ``script``) as one process or as ``nproc``
    gloo ranks, forked by this worker's rank server (hpml_core/rank_server.py, which says why; the
    local backend forks its runs from one of its own, the Slurm job scripts start ranks with
    srun, and tests/test_train.py runs DDP under torchrun). ``env`` beyond HPML_* test hooks
    (glibc's MALLOC_*, read when a process starts), or a GPU on this machine, gets fresh
    processes, started by hpml_core/local_ranks.py."""
    target = [str(script)] if script else ["-m", "hpml_core.train"]
    full_env = {**os.environ, **(env or {})}
    if any(not name.startswith("HPML_") for name in env or {}) or local_ranks.has_gpu():
        cmd = [sys.executable, *target, *args] if nproc == 1 else \
            [sys.executable, "-m", "hpml_core.local_ranks", "--fresh", str(nproc), *target, *args]
    else:
        cmd = RANK_SERVERS.launch_command(local_ranks.uses_deepspeed(args), nproc, [*target, *args],
                                          dict(os.environ), REPO)
    with subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as launch:
        try:
            stdout, stderr = launch.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(launch.pid, signal.SIGKILL)  # the ranks too (a rank server's launcher kills them)
            raise
    proc = subprocess.CompletedProcess(cmd, launch.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


# This worker's rank servers, without DeepSpeed and with it (imported only for a ZeRO mode, as
# in a fresh rank), each started by the first launch that needs it.
RANK_SERVERS = RankServers()
atexit.register(RANK_SERVERS.stop)


def engine_script_with_tiny_sized_as(dims, folder: Path) -> Path:
    """A script that runs the engine with the tiny preset's sizes replaced by those of ``dims``
    (a ``ModelDims``), for a model no preset has: an odd width that makes every layout pad."""
    sizes = dict(n_layer=dims.n_layer, n_head=dims.n_head, n_embd=dims.n_embd, n_positions=dims.n_positions)
    script = folder / f"engine_{dims.name}.py"
    script.write_text(f"from hpml_core.contract import models\nmodels.PRESETS['tiny'] = {sizes!r}\n"
                      "from hpml_core.train import exit_quickly, main\nexit_quickly(main())\n")
    return script


def rank_files(out: Path, attempt: int | None = None) -> dict[int, dict]:
    """The rank files of one attempt of the run in ``out`` (default: its latest), by rank."""
    from hpml_core.contract import attempts

    paths = attempts.latest_rank_files(out) if attempt is None else attempts.rank_files(out, attempt)
    return {rank: json.loads(path.read_text()) for rank, path in paths.items()}


def losses(out: Path, rank: int = 0, attempt: int | None = None) -> list[float]:
    return rank_files(out, attempt)[rank]["loss"]["values"]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file under ``folder`` with its bytes, and every folder (None), to show that a
    command created, changed and removed nothing there."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def shared_folder(tmp_path_factory, name: str) -> Path:
    """A folder of this test session that every pytest-xdist worker sees (each worker's own
    temporary folders lie inside the session's, which is removed with it)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    folder.mkdir(exist_ok=True)
    return folder


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on ``path`` (created if missing), across processes."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, token_data):
    """Train a layout of tests/layouts.py once per session and hand back its run folder. The
    two workers of `make test` share the runs (one lock each), so a layout that files on both
    of them read is trained once; the runs are the same wherever they are trained (the same
    seed and data), and the tests only read them."""
    from tests.layouts import COMMON, LAYOUTS, OPTIMIZERS

    root = shared_folder(tmp_path_factory, "layouts")

    def run(optimizer: str, layout: str, extra: tuple[str, ...] = ()):
        out = root / "-".join([optimizer, layout, *(flag.strip("-") for flag in extra)])
        done = out.with_name(out.name + ".trained")  # beside the run: its folder is only the engine's
        with locked(out.with_name(out.name + ".lock")):
            if not done.exists():
                shutil.rmtree(out, ignore_errors=True)  # a run of this session that failed
                args = [*COMMON, *OPTIMIZERS[optimizer][0], "--data", str(token_data), "--out", str(out), *extra]
                if layout == "single":
                    engine([*args, "--batch-size", "4"])
                else:
                    nproc, mode, tp, batch, accum = LAYOUTS[layout]
                    engine([*args, "--mode", mode, "--tp-size", str(tp), "--batch-size", str(batch),
                            "--grad-accum", str(accum)], nproc=nproc)
                done.touch()
        return out

    return run
