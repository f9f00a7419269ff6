"""A run stopped and resumed from its checkpoint trains exactly like one that never stopped."""

import json
import math

import pytest

from hpml_core.contract.checkpoint_size import checkpoint_bytes
from hpml_core.contract.checks import resolve
from hpml_core.contract.config import TrainConfig
from tests.conftest import engine, losses, rank_files
from tests.layouts import COMMON, LAYOUTS, OPTIMIZERS


def test_resumed_run_continues_with_the_same_losses(tmp_path, token_data):
    """2K steps in one go equal K steps, then K more resumed from the checkpoint (DDP, fp16 loss scaling)."""
    args = ["--test", "--precision", "fp16", "--warmup-steps", "1", "--mode", "ddp", "--batch-size", "2",
            "--data", str(token_data), "--profile-steps", "0"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    engine([*args, "--steps", "6", "--out", str(whole)], nproc=2)
    engine([*args, "--steps", "3", "--checkpoint-every", "3", "--out", str(split)], nproc=2)
    first_half = losses(split)
    assert json.loads((split / "checkpoints" / "step-00000003" / "manifest.json").read_text())["step"] == 3
    engine([*args, "--steps", "6", "--resume", "--out", str(split)], nproc=2)
    record = rank_files(split)[0]
    assert record["resumed_from_step"] == 3 and record["loss"]["start_step"] == 3
    assert first_half + record["loss"]["values"] == losses(whole)
    assert all(math.isfinite(v) for v in losses(whole))


def checkpoint_sizes(out) -> tuple[int, int, int]:
    """(predicted, measured) bytes of the run's newest checkpoint, ``hpml_core.contract.checkpoint_size``
    against the files in its step folder (its manifest aside), and how many files those are."""
    record = rank_files(out)[0]
    config = TrainConfig(**{**record["config"], "vocab_size": record["model"]["vocab_size"]})
    resolved = resolve(config, record["world_size"], record["world_size"], None)
    newest = max((out / "checkpoints").glob("step-*"))
    files = [p for p in newest.iterdir() if p.name != "manifest.json"]
    return checkpoint_bytes(config, resolved.dims, resolved.layout), sum(p.stat().st_size for p in files), len(files)


@pytest.mark.parametrize("layout", ["tp-2", "dp2xtp2-zero3", "zero1-2", "dp2xtp2-zero1", "zero2-2", "dp2xtp2-zero2",
                                    "fsdp2-2", "dp2xtp2-fsdp2"])
def test_resumed_layout_continues_with_the_same_losses(layout, trained, tmp_path, token_data):
    """3 steps, a checkpoint (per TP rank; DeepSpeed's partitions under ZeRO; each rank's shards under FSDP2), then 3 more
    resumed in a new launch: the same 6 losses as one uninterrupted run. The checkpoint's size is the
    one the plan predicts for the disk, within the files' own headers."""
    nproc, mode, tp, batch, _ = LAYOUTS[layout]
    out = tmp_path / "split"
    args = [*COMMON, *OPTIMIZERS["adamw"][0], "--data", str(token_data), "--out", str(out),
            "--mode", mode, "--tp-size", str(tp), "--batch-size", str(batch), "--profile-steps", "0"]
    engine([*args, "--steps", "3", "--checkpoint-every", "3"], nproc=nproc)  # the last --steps wins
    first_half = losses(out)
    predicted, measured, files = checkpoint_sizes(out)
    assert 0 <= measured - predicted <= 40_000 * files, (predicted, measured)  # each file's zip entries and pickle
    engine([*args, "--resume"], nproc=nproc)
    assert rank_files(out)[0]["resumed_from_step"] == 3
    assert first_half + losses(out) == losses(trained("adamw", layout))
