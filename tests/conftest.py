"""Shared fixtures: real WikiText-2 text from ../shared, tokenized once per test session, and
a helper that runs the engine the way a user would (a process, or one per rank)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The tests see the shipped site profiles only, never the user's own (~/.config/hpml/sites).
os.environ["HPML_SITES"] = str(REPO / "tests" / "no-user-sites")
SHARED = Path(os.environ.get("HPML_SHARED", REPO.parent / "shared"))
WIKITEXT = SHARED / "data" / "wikitext-2"


# `make test` runs the suite on two workers (pytest-xdist, --dist loadfile: each file on one
# worker, so a file's module fixtures are built once). The longest files start first, so that
# the short ones fill the end and both workers finish together: the real-Slurm file first (it
# also waits on the scheduler, while the other worker's CPU-bound files run), then the others
# by their time in CI.
FIRST = ("test_slurm.py", "test_layouts_study.py", "test_setup_memory.py", "test_memory_model.py", "test_train.py",
         "test_parallel_equivalence.py", "test_resume.py", "test_bench.py", "test_submit_local.py")


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
    """Run ``python -m hpml_core.train`` (or ``script``) alone, or as ``nproc`` gloo ranks."""
    cmd = [sys.executable, *([str(script)] if script else ["-m", "hpml_core.train"]), *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if nproc == 1:
        proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)
    else:
        proc = ranks(cmd, nproc, full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} on {nproc} ranks exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def ranks(cmd: list[str], nproc: int, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` as ``nproc`` ranks on this machine, started as the deepspeed launcher starts them:
    each with its RANK, LOCAL_RANK and WORLD_SIZE and one rendezvous address (the engine's "env"
    launch, ``hpml_core.launch``). torchrun, which the local backend and the Slurm job scripts
    use, is tested through them; here it would be one more torch process per launch, 1.5 to 2 s
    of the two cores each time. As torchrun does, the first rank to fail takes the others down
    (SIGTERM, SIGKILL 30 s later); the exit status is that rank's own (torchrun's is 1), and
    stdout and stderr hold every rank's, as they would on a terminal."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rendezvous = {"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
                  "MASTER_PORT": str(port)}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        procs = [subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, text=True,
                                  env={**env, **rendezvous, "RANK": str(rank), "LOCAL_RANK": str(rank)})
                 for rank in range(nproc)]
        deadline = time.monotonic() + timeout
        while True:
            codes = [p.poll() for p in procs]
            if None not in codes or any(code not in (None, 0) for code in codes) or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # torchrun's --monitor-interval
        failed = next((code for code in codes if code not in (None, 0)), None)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if failed is None and any(p.returncode != 0 for p in procs):  # out of time: every rank was stopped
        raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr)
    return subprocess.CompletedProcess(cmd, failed or 0, stdout, stderr)


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
