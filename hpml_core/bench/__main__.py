"""``make bench`` (``python -m hpml_core.bench``): the original study's style of training loop
against hpml's engine, on one device, same model, sequence length and data, each variant in
its own process. Prints and writes ``OUT/bench.json``: tokens/s, TFLOP/s per device, MFU and
peak memory of each, and the ratio of the engine's tokens/s to the original loop's.

``--engine-args`` may be given several times: each is one engine variant (its own process and
run folder), all measured against the same original-loop run, so that one call shows what
each speed setting is worth on the device at hand.

    python -m hpml_core.bench --model gpt2-large --data DATA --vocab-size 50257 \
        --engine-args "--precision bf16" --engine-args "--precision bf16 --compile --batch-size 16"
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from hpml_core.bench import common_arguments, source
from hpml_core.contract import rank_file
from hpml_core.contract.attempts import latest_rank_files
from hpml_core.contract.atomic import atomic_write_json
from hpml_core.contract.errors import EXIT_USAGE
from hpml_core.contract.run_states import COMPLETED


DEFAULT_ENGINE_ARGS = "--precision bf16 --compile"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hpml_core.bench", description=__doc__.split("\n\n")[0])
    common_arguments(parser, out=Path("results/bench"), steps=30, warmup_steps=10)
    parser.add_argument("--original-batch", type=int, default=8, help="the original study's batch (8)")
    parser.add_argument("--original-precision", choices=("fp16", "bf16", "fp32"), default="fp16")
    parser.add_argument("--engine-batch", type=int, default=8, help="the largest batch that fits, for the engine")
    parser.add_argument("--engine-args", action="append",
                        help=f"one engine variant's settings, after --batch-size ENGINE_BATCH, so they may change it; "
                             f"repeat for several variants (default: {DEFAULT_ENGINE_ARGS!r})")
    parser.add_argument("--vocab-size", type=int,
                        help="both models' vocabulary, at least the data's (50257: GPT-2's over any prepared data)")
    args = parser.parse_args(argv)
    args.engine_args = args.engine_args or [DEFAULT_ENGINE_ARGS]
    return args


def _run(command: list[str], what: str) -> int:
    print(f"[bench] {what}: {shlex.join(command)}", file=sys.stderr, flush=True)
    return subprocess.run(command).returncode


def nvidia_driver() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def engine_result(run_dir: Path, engine_args: str) -> dict:
    """The engine's figures, from rank 0 of the run's latest attempt (an earlier bench's run in the
    same folder is an earlier attempt)."""
    record = rank_file.read(latest_rank_files(run_dir)[0])
    variant = {"variant": f"hpml engine {engine_args}", "engine_args": engine_args, "status": record.status}
    if record.status != COMPLETED:  # out of memory, say: recorded as such, with no figures
        return {**variant, "error": record.error, "batch_size": record.config.batch_size}
    peak_bytes, metric = record.memory.peak()
    return {
        **variant,
        "settings": record.config.model_dump(mode="json", include={"model", "seq_len", "batch_size", "precision",
                                                                   "grad_ckpt", "attn", "compile", "optimizer",
                                                                   "vocab_size"}),
        "device": record.device_name,
        "timing": record.throughput.timing,
        "step_time_median_s": record.throughput.step_time_median_s,
        "tokens_per_s": record.throughput.run_tokens_per_s,
        "samples_per_s": record.throughput.run_samples_per_s,
        "flops_per_token": record.flops.flops_per_token,
        "achieved_tflops_per_s": record.flops.achieved_tflops_per_s,
        "peak_tflops_per_s": record.flops.peak_tflops_per_s,
        "mfu": record.flops.mfu,
        "mfu_missing_reason": record.flops.mfu_missing_reason,
        "peak_memory_bytes": peak_bytes,
        "memory_metric": metric,
        "losses": record.loss.values,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    common = ["--model", args.model, "--seq-len", str(args.seq_len), "--steps", str(args.steps),
              "--warmup-steps", str(args.warmup_steps), "--data", str(args.data)]
    if args.vocab_size is not None:
        common += ["--vocab-size", str(args.vocab_size)]
    original = [sys.executable, "-m", "hpml_core.bench.original_loop", *common, "--batch-size",
                str(args.original_batch), "--precision", args.original_precision, "--out",
                str(args.out / "original.json")]
    if _run(original, "original loop") != 0:
        raise SystemExit("[bench] the original loop failed: nothing to compare with")
    baseline = json.loads((args.out / "original.json").read_text())
    commands, engines = {"original": shlex.join(original)}, []
    for index, engine_args in enumerate(args.engine_args):
        # No profiled window: the benchmark wants tokens/s, and a GPU's minutes (the memory bench's
        # layouts are profiled, and hpml_core.bench.step_profile profiles one variant in depth).
        engine = [sys.executable, "-m", "hpml_core.train", "--mode", "single", *common, "--batch-size",
                  str(args.engine_batch), "--profile-steps", "0", *shlex.split(engine_args),
                  "--out", str(args.out / f"engine-{index}")]
        if _run(engine, f"hpml engine {engine_args}") == EXIT_USAGE or not latest_rank_files(args.out / f"engine-{index}"):
            raise SystemExit(f"[bench] hpml engine {engine_args} refused its flags or failed before training")
        result = engine_result(args.out / f"engine-{index}", engine_args)
        if result["status"] == COMPLETED:
            result["tokens_per_s_ratio_over_original"] = result["tokens_per_s"] / baseline["tokens_per_s"]
        commands[f"engine-{index}"] = shlex.join(engine)
        engines.append(result)
    report = {
        "date": datetime.now(timezone.utc).isoformat(),
        "device": baseline["device"],
        "driver": nvidia_driver(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda},
        "source": source.describe(),
        "commands": commands,
        "original": baseline,
        "engines": engines,
    }
    atomic_write_json(args.out / "bench.json", report)

    table = Table(title=f"{args.model}, sequence {args.seq_len}, on {report['device']}")
    for column in ("variant", "batch", "precision", "tokens/s", "TFLOP/s", "MFU", "peak memory (GiB)", "x original"):
        table.add_column(column, justify="left" if column in ("variant", "precision") else "right")
    for result in (baseline, *engines):
        if result.get("status", COMPLETED) != COMPLETED:
            table.add_row(result["variant"], str(result["batch_size"]), "", result["status"], "", "", "", "")
            continue
        mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a"
        ratio = result.get("tokens_per_s_ratio_over_original")
        table.add_row(result["variant"], str(result["settings"]["batch_size"]), result["settings"]["precision"],
                      f"{result['tokens_per_s']:,.0f}", f"{result['achieved_tflops_per_s']:.3g}", mfu,
                      f"{result['peak_memory_bytes'] / 1024**3:.2f} ({result['memory_metric']})",
                      f"{ratio:.2f}" if ratio is not None else "1")
    console = Console(width=160)
    console.print(table)
    reason = next((e["mfu_missing_reason"] for e in engines if e.get("mfu_missing_reason")), None)
    if reason:
        console.print(f"MFU n/a: {reason}")
    console.print(f"wrote {args.out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
