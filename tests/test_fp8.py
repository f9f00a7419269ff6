"""``--fp8`` (``hpml_core.fp8``): the blocks' linear layers multiply in FP8 and the run still trains
what a bf16 run trains, within FP8's rounding, on one process and under DDP and FSDP2.

Real runs of the engine on the CPU (PyTorch's own ``_scaled_mm`` there; the GPU's speed is
``make gpu-check``'s), SGD without clipping, so a gradient of the wrong scale changes the
weights (tests/test_parallel_equivalence.py says why).

Why the tolerance. e4m3 keeps 3 significant bits after the leading one (epsilon 2**-3), e5m2 two:
each product's inputs are rounded to a relative 6 % (e4m3) and its incoming gradient to 12 %
(e5m2), against bf16's 0.4 %, though errors of opposite sign average out over the 64 to 256 terms
of each sum. Measured, worst tensor of the tiny model after 6 steps (always a bias, which starts
at zero and is all update): 5.6e-2 between FP8 and bf16 on one process, 5.4e-2 and 5.5e-2 between
DDP on 2 with accumulation 2 or FSDP2 on 2 and one FP8 process; losses within 5.6e-4. Allowed:
8e-2 and 2e-3. Two controls keep it honest: the FP8 run must differ from the bf16 run by more
than bf16's own tolerance (3.1e-2 more than one process and a bf16 layout differ: a run whose
layers did not multiply in FP8 would differ by nothing), and one update fewer must move the
weights well outside the FP8 tolerance (measured 0.35, four times it), so that the tolerance can
see a missing or wrongly scaled update.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

import pytest
import torch

from hpml_core.contract.precision import regime
from tests.conftest import REPO, losses, rank_files
from tests.layouts import LAYOUTS, STEPS

BF16_TOLERANCE = 2 * torch.finfo(torch.bfloat16).eps  # tests/test_mixed_precision.py says why
FP8_TOLERANCE = 8e-2  # relative weight difference per tensor; see the module's docstring
LOSS_TOLERANCE = 2e-3  # absolute, on losses of 6.2
BF16 = ("--precision", "bf16")  # over tests/layouts.py's COMMON (fp32, unclipped, --save-model)


@pytest.fixture
def run(trained):
    """A layout trained with SGD in bf16, with FP8 products or without, through the session's
    shared runs (tests/conftest.py ``trained``)."""

    def train(layout: str, fp8: bool = True, steps: int = STEPS):
        extra = (*BF16, *(("--fp8",) if fp8 else ()), *(("--steps", str(steps)) if steps != STEPS else ()))
        return trained("sgd", layout, extra)

    return train


def weight_differences(out, reference) -> dict[str, float]:
    ours, ref = torch.load(out / "model.pt"), torch.load(reference / "model.pt")
    assert ours.keys() == ref.keys()  # the float8 layers keep the plain model's names
    return {name: ((ours[name] - ref[name]).norm() / ref[name].norm()).item() for name in ref}


def worst(out, reference) -> tuple[str, float]:
    return max(weight_differences(out, reference).items(), key=lambda kv: kv[1])


def loss_difference(out, reference) -> float:
    return max(abs(a - b) for a, b in zip(losses(out), losses(reference), strict=True))


def test_fp8_trains_what_bf16_trains_within_fp8_rounding(run):
    fp8, bf16 = run("single"), run("single", fp8=False)
    [record] = rank_files(fp8).values()
    assert record["status"] == "COMPLETED"
    assert record["precision"] == regime("single", "bf16", fp8=True).model_dump()
    assert record["versions"]["torchao"] == version("torchao")
    # the memory model's blocks save no 16-bit weight copies under FP8 (tests/test_memory_model.py measures it)
    formulas = {out: "".join(line["formula"] for line in rank_files(out)[0]["prediction"]["lines"])
                for out in (fp8, bf16)}
    assert "block weight copies" in formulas[bf16] and "block weight copies" not in formulas[fp8]
    name, difference = worst(fp8, bf16)
    print(f"fp8 against bf16: worst tensor {name} {difference:.2e}, losses {loss_difference(fp8, bf16):.2e}")
    assert difference <= FP8_TOLERANCE, f"{name} differs by {difference:.2e}"
    assert loss_difference(fp8, bf16) <= LOSS_TOLERANCE
    assert difference > BF16_TOLERANCE, "the FP8 run trained as bf16 does: no layer multiplied in FP8"


def test_the_fp8_tolerance_catches_one_missing_update(run):
    short, full = run("single", steps=STEPS - 1), run("single")
    name, difference = worst(short, full)
    print(f"one update fewer: {name} {difference:.2e}")
    assert difference > 3 * FP8_TOLERANCE, f"one update fewer moves {name} by only {difference:.2e}"


@pytest.mark.parametrize("layout", ["ddp-2-accum-2", "fsdp2-2"])
def test_fp8_layouts_train_what_one_fp8_process_trains(layout, run):
    """Each rank scales its own micro-batch's tensors (one scale per tensor), so a layout rounds
    otherwise than one process: FP8's tolerance, not bf16's."""
    out, single = run(layout), run("single")
    files = rank_files(out)
    assert sorted(files) == list(range(LAYOUTS[layout][0]))
    for record in files.values():
        assert record["status"] == "COMPLETED" and record["precision"]["fp8_linears"]
    name, difference = worst(out, single)
    print(f"{layout} fp8 against one fp8 process: worst tensor {name} {difference:.2e}, "
          f"losses {loss_difference(out, single):.2e}")
    assert difference <= FP8_TOLERANCE, f"{name} differs by {difference:.2e}"
    assert loss_difference(out, single) <= LOSS_TOLERANCE


def test_without_torchao_fp8_is_refused_in_one_line_and_nothing_is_written(tmp_path, token_data):
    """A machine whose torchao does not import (here a package that raises, first on the path)."""
    shadow = tmp_path / "shadow" / "torchao"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('torchao is not installed here')\n")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "hpml_core.train", "--test", "--fp8", "--precision", "bf16",
                           "--data", str(token_data), "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": f"{shadow.parent}{os.pathsep}{REPO}"}, timeout=300)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "--fp8" in line and "torchao is not installed here" in line, line
    assert not out.exists()
