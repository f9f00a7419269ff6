"""Checkpoints that survive what clusters do to files: a damaged newest checkpoint falls back to
the one before (and the losses after it are an uninterrupted run's), every checkpoint damaged is
one line and exit 2 naming each, and only the newest K are kept, each verifiable. (A disk too
small for a checkpoint: tests/test_full_disk.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hpml_core import checkpoint
from hpml_core.contract.errors import EXIT_USAGE
from tests.conftest import engine, losses, rank_files, snapshot
from tests.layouts import COMMON, LAYOUTS, OPTIMIZERS

# layout: (optimizer, the step-folder file damaged; single is one process at batch 4)
CASES = {"single": ("sgd", "state-tp0.pt"), "zero2-2": ("adamw", "zero_pp_rank_1_mp_rank_00_optim_states.pt")}


def _args(layout: str, token_data: Path, out: Path) -> tuple[list[str], int]:
    optimizer = CASES[layout][0]
    args = [*COMMON, *OPTIMIZERS[optimizer][0], "--data", str(token_data), "--out", str(out), "--profile-steps", "0"]
    if layout == "single":
        return [*args, "--batch-size", "4"], 1
    nproc, mode, tp, batch, _ = LAYOUTS[layout]
    return [*args, "--mode", mode, "--tp-size", str(tp), "--batch-size", str(batch)], nproc


def _step_folders(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").glob("step-*"))


def _hpml_traceback(stderr: str) -> bool:
    """A traceback through hpml's code (a launcher's own, such as torchrun's, does not count)."""
    return any(line.strip().startswith('File "') and "hpml_core" in line for line in stderr.splitlines())


def _flip_a_byte(path: Path) -> None:
    """Damage that keeps the size: only the checksum can see it."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("layout", list(CASES))
def test_damaged_newest_checkpoint_falls_back_to_the_one_before(layout, trained, tmp_path, token_data):
    """4 steps, a checkpoint every 2 (both kept); the newest cut short: the resume continues from
    step 2, says so in the status and rank files, and trains steps 2-6 exactly as the uninterrupted
    run did. With the step-2 one damaged too (a flipped byte, same size), the resume is one line and
    exit 2 naming both, and writes nothing."""
    out = tmp_path / "run"
    args, nproc = _args(layout, token_data, out)
    engine([*args, "--steps", "4", "--checkpoint-every", "2"], nproc=nproc)
    assert _step_folders(out) == ["step-00000002", "step-00000004"]
    both_damaged = tmp_path / "both"
    shutil.copytree(out, both_damaged)

    damaged = out / "checkpoints" / "step-00000004" / CASES[layout][1]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    engine([*args, "--steps", "6", "--checkpoint-every", "2", "--resume"], nproc=nproc)
    record = rank_files(out)[0]
    assert record["resumed_from_step"] == 2 and record["steps_retrained"] == 2
    assert [s["tag"] for s in record["checkpoints_skipped"]] == ["step-00000004"]
    assert "the manifest says" in record["checkpoints_skipped"][0]["reason"]
    note = json.loads((out / "status.json").read_text())["note"]
    assert note.startswith("resumed from step-00000002: step-00000004 is damaged") and "2 steps trained again" in note
    optimizer = CASES[layout][0]
    assert losses(out) == losses(trained(optimizer, layout))[2:]
    assert _step_folders(out) == ["step-00000004", "step-00000006"]  # the damaged one written again, then kept

    both_args, _ = _args(layout, token_data, both_damaged)
    cut = both_damaged / "checkpoints" / "step-00000004" / CASES[layout][1]
    cut.write_bytes(cut.read_bytes()[:100])
    _flip_a_byte(both_damaged / "checkpoints" / "step-00000002" / CASES[layout][1])
    before = snapshot(both_damaged)
    proc = engine([*both_args, "--steps", "6", "--resume"], nproc=nproc, check=False)
    assert proc.returncode == EXIT_USAGE
    line = next(line for line in proc.stderr.splitlines() if "no usable checkpoint" in line)
    assert "tried 2: step-00000004:" in line and "step-00000002: " in line and "does not match its checksum" in line
    assert not _hpml_traceback(proc.stderr)
    assert snapshot(both_damaged) == before


def test_the_newest_k_checkpoints_are_kept(tmp_path, token_data):
    """--keep-checkpoints 3 with a checkpoint every step keeps the newest 3; each verifies."""
    out = tmp_path / "run"
    args, _ = _args("single", token_data, out)
    engine([*args, "--steps", "5", "--checkpoint-every", "1", "--keep-checkpoints", "3"])
    assert _step_folders(out) == ["step-00000003", "step-00000004", "step-00000005"]
    for step in (3, 4, 5):
        checkpoint._verify(out / "checkpoints" / f"step-{step:08d}",
                           json.loads((out / "checkpoints" / f"step-{step:08d}" / "manifest.json").read_text())["files"])
