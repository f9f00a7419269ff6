"""A run that fails still leaves a complete rank file saying how it failed.

A real CUDA out-of-memory error cannot happen on a CPU machine, so the model's forward is made
to raise the very exception PyTorch raises (torch.OutOfMemoryError) on the third step; the
rest of the engine is the real one, run in this process.
"""

import pytest
import torch

from hpml_core import train
from hpml_core.model import GPT
from hpml_core.contract import rank_file
from hpml_core.contract.errors import EXIT_FAILED, EXIT_OOM


def failing_forward(exc: Exception, at_call: int):
    calls = {"n": 0}
    original = GPT.forward

    def forward(self, idx):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise exc
        return original(self, idx)

    return forward


@pytest.mark.parametrize("exc,status,code", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "OUT_OF_MEMORY", EXIT_OOM),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 bytes"), "OUT_OF_MEMORY", EXIT_OOM),
    (ValueError("something else broke"), "FAILED", EXIT_FAILED),
])
def test_failure_is_recorded_in_the_rank_file(exc, status, code, tmp_path, token_data, monkeypatch):
    monkeypatch.setattr(GPT, "forward", failing_forward(exc, at_call=3))
    out = tmp_path / "run"
    assert train.main(["--test", "--data", str(token_data), "--out", str(out), "--batch-size", "5"]) == code
    record = rank_file.read(out / "attempts" / "1" / "rank-0.json")
    assert record.status == status
    assert str(exc) in record.error
    if status == "OUT_OF_MEMORY":
        assert "batch size 5" in record.error
    assert record.steps_completed == 2 and len(record.loss.values) == 2 and not record.loss.averaged_over_dp
    assert record.throughput is None and record.flops is None and record.throughput_missing_reason is None
    assert not list(out.rglob(".*.tmp"))
