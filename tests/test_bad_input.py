"""Bad input: one line naming the flag or file, exit status 2, and no rank file written.

Two refusals go through a real ``python -m hpml_core.train`` process, to show the exit status
and the one line a user sees; the others call the same entry point (``hpml_core.train.main``)
in this process: it refuses before it opens a process group or writes a file, so a process
each would only add seconds of imports."""

import signal

import pytest
import torch

from hpml_core import stopping
from hpml_core.train import main
from tests.conftest import engine, snapshot


def refused(args, tmp_path, env=None):
    """The engine as a process: exit status 2, one line on stderr, nothing written."""
    out = tmp_path / "run"
    proc = engine([*args, "--out", str(out)], env=env, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert not out.exists()  # refused before anything is written
    return lines[0]


@pytest.fixture
def refused_here(tmp_path, capsys, monkeypatch):
    """The engine's entry point in this process, under the launcher's variables ``env``: the same
    checks as ``refused``. The stop handlers it installs are put back afterwards."""
    def run(args, env=None):
        for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.delenv(name, raising=False)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        handlers = {sig: signal.getsignal(sig) for sig in stopping.STOP_SIGNALS}
        out = tmp_path / "run"
        try:
            code = main([*args, "--out", str(out)])
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        err = capsys.readouterr().err
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert not out.exists()
        return lines[0]

    return run


def test_a_refused_flag_exits_2_with_one_line(tmp_path, token_data):
    assert "--batch-size" in refused(["--test", "--data", str(token_data), "--batch-size", "0"], tmp_path)


def test_a_refused_layout_exits_2_with_one_line_before_any_process_group(tmp_path, token_data):
    line = refused(["--test", "--data", str(token_data), "--mode", "zero3", "--tp-size", "3"], tmp_path,
                   launched(4, 4))
    assert all(word in line for word in ["--tp-size", "3", "world size 4"]), line


@pytest.mark.parametrize("args,flag", [
    (["--batch-size", "0"], "--batch-size"),
    (["--model", "gpt5"], "--model"),
    (["--precision", "fp8"], "--precision"),
    (["--seq-len", "4096"], "--seq-len"),
    (["--steps", "2", "--warmup-steps", "2"], "--steps"),
    (["--tp-size", "2"], "--tp-size"),  # tensor parallelism in a single process
    (["--fp8", "--precision", "fp32"], "--fp8"),  # FP8 products run inside bf16 autocast
    pytest.param(["--dist-backend", "nccl"], "--dist-backend",  # NCCL without a GPU
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    pytest.param(["--mode", "zero2", "--precision", "fp16"], "--precision",  # DeepSpeed's CPU accelerator
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
])
def test_bad_flag_values_are_refused(args, flag, refused_here, token_data):
    line = refused_here(["--test", "--data", str(token_data), *args])
    assert flag in line


def launched(world: int, per_node: int) -> dict:
    """Exactly what torchrun gives rank 0; nobody listens on the port, so reaching
    init_process_group would hang or fail differently."""
    return {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(per_node),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "9"}


@pytest.mark.parametrize("args,world,per_node,words", [
    (["--mode", "zero3", "--tp-size", "3"], 4, 4, ["--tp-size", "3", "world size 4"]),
    (["--mode", "zero3", "--tp-size", "8"], 8, 8, ["--tp-size", "4 attention heads"]),
    (["--mode", "zero3", "--tp-size", "5", "--model", "gpt2-xl"], 5, 5, ["--tp-size", "vocabulary of 512"]),
    (["--mode", "zero3", "--tp-size", "4"], 4, 2, ["--tp-size", "span nodes"]),
    (["--mode", "ddp", "--zero-stage", "3"], 4, 4, ["--zero-stage", "zero3"]),
    (["--mode", "single"], 2, 2, ["--mode", "2 were launched"]),
    (["--mode", "zero2", "--fp8"], 2, 2, ["--fp8", "DeepSpeed"]),  # ZeRO casts the model, no float8 layers
    (["--mode", "ddp", "--tp-size", "2", "--fp8"], 2, 2, ["--fp8", "--tp-size 1"]),
])
def test_layouts_that_cannot_work_are_refused_before_any_process_group(args, world, per_node, words, refused_here,
                                                                      token_data):
    line = refused_here(["--test", "--data", str(token_data), *args], launched(world, per_node))
    assert all(word in line for word in words), line


def test_missing_data_folder_is_named(tmp_path, refused_here):
    line = refused_here(["--test", "--data", str(tmp_path / "no-such-data")])
    assert "--data" in line and "no-such-data" in line


def test_missing_data_flag_is_named(refused_here):
    assert "--data" in refused_here(["--test"])


@pytest.mark.parametrize("layout, nproc, damaged", [
    ([], 1, "state-tp0.pt"),
    # the file of TP rank 1, which rank 0 (the one that prints) does not load: every rank must
    # still refuse the checkpoint, and rank 0 say which file is damaged
    (["--mode", "ddp", "--tp-size", "2", "--batch-size", "2"], 2, "state-tp1.pt"),
], ids=["single", "tp-2-rank-1-file"])
def test_corrupt_checkpoint_is_refused_and_the_run_folder_is_left_alone(layout, nproc, damaged, tmp_path, token_data):
    out = tmp_path / "run"
    args = ["--test", "--data", str(token_data), "--steps", "4", "--warmup-steps", "1", "--profile-steps", "0", *layout]
    engine([*args, "--checkpoint-every", "2", "--out", str(out)], nproc=nproc)
    for state in (out / "checkpoints").glob(f"step-*/{damaged}"):  # both kept checkpoints: none to fall back to
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a write cut short
    before = snapshot(out)
    proc = engine([*args, "--steps", "6", "--resume", "--out", str(out)], nproc=nproc, check=False)
    assert proc.returncode == 2
    [line] = [line for line in proc.stderr.splitlines() if "--resume" in line]
    assert "no usable checkpoint" in line and line.count(f"{damaged} has ") == 2, line
    assert snapshot(out) == before  # no new attempt folder, nothing rewritten


def test_checkpoint_from_another_configuration_is_refused(tmp_path, token_data):
    out = tmp_path / "run"
    engine(["--test", "--data", str(token_data), "--steps", "4", "--warmup-steps", "1", "--checkpoint-every", "2",
            "--out", str(out)])
    proc = engine(["--test", "--data", str(token_data), "--steps", "8", "--warmup-steps", "1", "--batch-size", "3",
                   "--resume", "--out", str(out)], check=False)
    assert proc.returncode == 2 and "--batch-size" in proc.stderr
