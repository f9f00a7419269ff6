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


def keep_earlier(path: Path) -> Path:
    """``path``, made free for this call to write: a file an earlier call wrote there is kept,
    renamed ``<stem>-earlier<suffix>`` (``-earlier-2``, ... when that exists too), so that a
    second run of a benchmark into the same folder (a GPU check's short rerun) overwrites
    nothing the first wrote."""
    if not path.exists():
        return path
    stem, suffix = path.name.split(".", 1)
    kept, k = path.with_name(f"{stem}-earlier.{suffix}"), 2
    while kept.exists():
        kept, k = path.with_name(f"{stem}-earlier-{k}.{suffix}"), k + 1
    path.rename(kept)
    return path
