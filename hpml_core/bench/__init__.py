"""Benchmarks on one GPU: ``make bench`` (the original study's loop against the engine) and
``make bench-memory`` (the study's memory table)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hpml_core.contract.models import PRESETS


def common_arguments(parser: argparse.ArgumentParser, out: Path | None, steps: int, warmup_steps: int) -> None:
    """The flags every benchmark shares; ``out`` None makes --out required."""
    parser.add_argument("--model", choices=sorted(PRESETS), default="gpt2-large")
    parser.add_argument("--data", type=Path, required=True, help="a folder made by `hpml data prepare`")
    parser.add_argument("--out", type=Path, default=out, required=out is None, help="where to write")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup-steps", type=int, default=warmup_steps)
