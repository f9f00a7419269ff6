"""``make bench`` (``python -m hpml_core.bench``): the original study's style of training loop
against hpml's engine, on one device, same model, sequence length and data, each run in its own
process. Prints and writes ``OUT/bench.json``: tokens/s, TFLOP/s per device, MFU, peak memory
and energy per token of each run, each engine run's ratio to the original loop, and the
headline: the fastest engine variant against the original loop, at the same batch and at each
one's best batch, with the spread of their repeats.

``--engine-args`` may be given several times: each is one engine variant (its own process and
run folder). ``--original-batch`` too: the first is the study's batch (8). ``--repeats N`` runs
the original loop at the study's batch, and the fastest engine variant, N times in all, so the
headline's figures are medians with their range. ``bench.json`` is rewritten after every run, so
a benchmark cut short keeps what it measured.

A variant with ``--fp8`` (FP8 products in the blocks' linear layers) is another numeric regime than
the original loop's 16-bit products: it is a row of its own, run after the headline's runs, set
against the fastest 16-bit variant by tokens/s (its MFU is against the FP8 peak), never the headline.

    python -m hpml_core.bench --model gpt2-large --data DATA --vocab-size 50257 --repeats 3 \
        --engine-args "--precision bf16 --compile" --engine-args "--precision bf16 --compile --batch-size 32"
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from hpml_core.bench import common_arguments, keep_earlier, source
from hpml_core.contract import rank_file
from hpml_core.contract.attempts import latest_rank_files
from hpml_core.contract.atomic import atomic_write_json
from hpml_core.contract.errors import EXIT_USAGE
from hpml_core.contract.run_states import COMPLETED


DEFAULT_ENGINE_ARGS = "--precision bf16 --compile"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hpml_core.bench", description=__doc__.split("\n\n")[0])
    common_arguments(parser, out=Path("results/bench"), steps=30, warmup_steps=10)
    parser.add_argument("--original-batch", type=int, action="append",
                        help="a batch for the original loop; repeat for several, the first being the study's "
                             "(default: 8, the original study's)")
    parser.add_argument("--original-precision", choices=("fp16", "bf16", "fp32"), default="fp16")
    parser.add_argument("--engine-batch", type=int, default=8, help="the largest batch that fits, for the engine")
    parser.add_argument("--engine-args", action="append",
                        help=f"one engine variant's settings, after --batch-size ENGINE_BATCH, so they may change it; "
                             f"repeat for several variants (default: {DEFAULT_ENGINE_ARGS!r})")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs in all of the original loop at the study's batch and of the fastest engine variant")
    parser.add_argument("--vocab-size", type=int,
                        help="both models' vocabulary, at least the data's (50257: GPT-2's over any prepared data)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: must be at least 1, not {args.repeats}")
    args.engine_args = args.engine_args or [DEFAULT_ENGINE_ARGS]
    args.original_batch = args.original_batch or [8]
    return args


def _run(command: list[str], what: str) -> tuple[int, float]:
    """The run's exit status and its process's wall seconds: start-up, compilation, warm-up, the
    timed steps and the profiled window, what a GPU lease pays for the run."""
    print(f"[bench] {what}: {shlex.join(command)}", file=sys.stderr, flush=True)
    started = time.monotonic()
    code = subprocess.run(command).returncode
    return code, round(time.monotonic() - started, 1)


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
                                                                   "grad_ckpt", "attn", "compile", "fp8",
                                                                   "optimizer", "vocab_size"}),
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
        "joules_per_token": record.energy.run_joules_per_token if record.energy else None,
        "mean_power_w": record.energy.mean_power_w if record.energy else None,
        "energy_missing_reason": record.energy_missing_reason,
        "losses": record.loss.values,
    }


def spread(runs: list[dict], key: str) -> dict | None:
    """The median of a figure over the completed runs that have it, with its range."""
    values = [run[key] for run in runs if run.get("status", COMPLETED) == COMPLETED and run.get(key) is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def is_fp8(engine_args: str) -> bool:
    return "--fp8" in shlex.split(engine_args)


def precision_label(result: dict) -> str:
    """A completed run's precision as its row says it: "bf16, FP8 linears" for an ``--fp8`` run."""
    return result["settings"]["precision"] + (", FP8 linears" if result["settings"].get("fp8") else "")


def _batch(run: dict) -> int:
    return run["settings"]["batch_size"] if "settings" in run else run["batch_size"]


def _group(runs: list[dict], **fixed) -> dict:
    """One variant's runs summed up: its tokens/s, MFU and joules per token over its repeats."""
    return {**fixed, "batch_size": _batch(runs[0]), "runs": len(runs),
            **{figure: spread(runs, figure) for figure in ("tokens_per_s", "mfu", "joules_per_token")}}


def _ratio(engine: dict, original: dict, why: str) -> dict:
    """Median over median, and the range the two spreads allow (fastest over slowest and back)."""
    e, o = engine["tokens_per_s"], original["tokens_per_s"]
    return {"why": why, "engine_args": engine["engine_args"], "engine_batch": engine["batch_size"],
            "original_batch": original["batch_size"], "ratio": e["median"] / o["median"],
            "min": e["min"] / o["max"], "max": e["max"] / o["min"]}


def headline(originals: list[dict], engines: list[dict]) -> dict:
    """The fastest engine variant against the original loop: at the study's batch (the original's
    first) and at each one's best batch, each a ratio of medians over the repeats."""
    by_batch: dict[int, list[dict]] = {}
    for run in originals:
        by_batch.setdefault(_batch(run), []).append(run)
    by_args: dict[str, list[dict]] = {}
    for run in engines:
        by_args.setdefault(run["engine_args"], []).append(run)
    original_groups = [g for g in (_group(runs, variant=runs[0]["variant"]) for runs in by_batch.values())
                       if g["tokens_per_s"] is not None]
    groups = [g for g in (_group(runs, engine_args=args) for args, runs in by_args.items())
              if g["tokens_per_s"] is not None]
    measured = [g for g in groups if not is_fp8(g["engine_args"])]
    if not original_groups or not measured:
        return {"missing_reason": "no 16-bit engine variant completed" if original_groups else
                "the original loop did not run"}
    study, best_original = original_groups[0], max(original_groups, key=lambda g: g["tokens_per_s"]["median"])
    best = max(measured, key=lambda g: g["tokens_per_s"]["median"])
    same = [g for g in measured if g["batch_size"] == study["batch_size"]]
    fp8 = [{**g, "over_best_16_bit": _ratio(g, best, "tokens/s of the FP8 variant over the fastest 16-bit one")}
           for g in groups if is_fp8(g["engine_args"])]
    return {
        "fp8": fp8,
        "best_engine": best, "original": study, "best_original": best_original,
        "same_batch": _ratio(max(same, key=lambda g: g["tokens_per_s"]["median"]), study,
                             f"the fastest engine variant at the study's batch {study['batch_size']}") if same else
        {"missing_reason": f"no engine variant completed at the study's batch {study['batch_size']}"},
        "best_batches": _ratio(best, best_original, "the fastest engine variant against the original loop at its "
                                                    "fastest batch"),
    }


class Bench:
    """The benchmark's runs so far, written to ``bench.json`` after each. An earlier call's files
    in the same folder are kept, renamed (``keep_earlier``); its engine runs' folders get this
    call's runs as their next attempts."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.commands, self.originals, self.engines = args, {}, [], []
        keep_earlier(args.out / "bench.json")
        self.report = {"date": datetime.now(timezone.utc).isoformat(), "device": None, "driver": nvidia_driver(),
                       "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                    "cuda": torch.version.cuda},
                       "source": source.describe()}
        common = ["--model", args.model, "--seq-len", str(args.seq_len), "--steps", str(args.steps),
                  "--warmup-steps", str(args.warmup_steps), "--data", str(args.data)]
        self.common = common + (["--vocab-size", str(args.vocab_size)] if args.vocab_size is not None else [])

    def save(self) -> None:
        atomic_write_json(self.args.out / "bench.json", {
            **self.report, "commands": self.commands, "originals": self.originals, "engines": self.engines,
            "headline": headline(self.originals, self.engines)})

    def original(self, batch: int, repeat: int) -> None:
        name = f"original-b{batch}-r{repeat}"
        written = keep_earlier(self.args.out / f"{name}.json")
        command = [sys.executable, "-m", "hpml_core.bench.original_loop", *self.common, "--batch-size", str(batch),
                   "--precision", self.args.original_precision, "--out", str(written)]
        code, seconds = _run(command, f"original loop, batch {batch}, run {repeat + 1}")
        if code != 0 and (batch == self.args.original_batch[0] or not written.exists()):
            raise SystemExit(f"[bench] the original loop failed at batch {batch} (exit status {code})")
        result = json.loads(written.read_text())  # at a larger batch, it may have run out of memory
        self.report["device"] = self.report["device"] or result.get("device")
        self.commands[name] = shlex.join(command)
        self.originals.append({**result, "repeat": repeat, "process_s": seconds})
        self.save()

    def engine(self, index: int, engine_args: str, repeat: int) -> dict:
        # A variant's first run has the engine's profiled window after its timed steps (where its
        # step goes, which jobs.bench_planner calibrates the planner on); its repeats, which only
        # add to the spread of tokens/s, spare the GPU's seconds.
        name = f"engine-{index}" + (f"-r{repeat}" if repeat else "")
        command = [sys.executable, "-m", "hpml_core.train", "--mode", "single", *self.common, "--batch-size",
                   str(self.args.engine_batch), *(["--profile-steps", "0"] if repeat else []),
                   *shlex.split(engine_args), "--out", str(self.args.out / name)]
        code, seconds = _run(command, f"hpml engine {engine_args}, run {repeat + 1}")
        if code == EXIT_USAGE or not latest_rank_files(self.args.out / name):
            raise SystemExit(f"[bench] hpml engine {engine_args} refused its flags or failed before training")
        result = {**engine_result(self.args.out / name, engine_args), "run": name, "repeat": repeat,
                  "process_s": seconds}
        study = spread([o for o in self.originals if _batch(o) == self.args.original_batch[0]], "tokens_per_s")
        if result["status"] == COMPLETED:
            result["tokens_per_s_ratio_over_original"] = result["tokens_per_s"] / study["median"]
        self.commands[name] = shlex.join(command)
        self.engines.append(result)
        self.save()
        return result


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    bench = Bench(args)
    for batch in args.original_batch:
        for repeat in range(args.repeats if batch == args.original_batch[0] else 1):
            bench.original(batch, repeat)
    sixteen_bit = [(index, variant) for index, variant in enumerate(args.engine_args) if not is_fp8(variant)]
    first = [(index, bench.engine(index, variant, 0)) for index, variant in sixteen_bit]
    done = [(index, result) for index, result in first if result["status"] == COMPLETED]
    if done:
        fastest, _ = max(done, key=lambda pair: pair[1]["tokens_per_s"])
        for repeat in range(1, args.repeats):
            bench.engine(fastest, args.engine_args[fastest], repeat)
    for index, variant in enumerate(args.engine_args):  # after the headline's runs: a row of their own
        if is_fp8(variant):
            bench.engine(index, variant, 0)
    print_tables(bench, args)
    return 0


def print_tables(bench: Bench, args: argparse.Namespace) -> None:
    table = Table(title=f"{args.model}, sequence {args.seq_len}, on {bench.report['device']}")
    for column in ("variant", "run", "batch", "precision", "tokens/s", "TFLOP/s", "MFU", "mJ/token",
                   "peak memory (GiB)", "x original", "process s"):
        table.add_column(column, justify="left" if column in ("variant", "precision") else "right")
    for result in (*bench.originals, *bench.engines):
        run = str(result["repeat"] + 1)
        if result.get("status", COMPLETED) != COMPLETED:
            table.add_row(result["variant"], run, str(result["batch_size"]), "", result["status"], "", "", "", "", "",
                          f"{result['process_s']:.0f}")
            continue
        mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a"
        joules = f"{result['joules_per_token'] * 1e3:.3g}" if result.get("joules_per_token") is not None else "n/a"
        ratio = result.get("tokens_per_s_ratio_over_original")
        table.add_row(result["variant"], run, str(result["settings"]["batch_size"]), precision_label(result),
                      f"{result['tokens_per_s']:,.0f}", f"{result['achieved_tflops_per_s']:.3g}", mfu, joules,
                      f"{result['peak_memory_bytes'] / 1024**3:.2f} ({result['memory_metric']})",
                      f"{ratio:.2f}" if ratio is not None else "", f"{result['process_s']:.0f}")
    console = Console(width=170)
    console.print(table)
    for line in headline_lines(headline(bench.originals, bench.engines)):
        console.print(line)
    for figure in ("mfu", "energy"):
        reason = next((r[f"{figure}_missing_reason"] for r in (*bench.originals, *bench.engines)
                       if r.get(f"{figure}_missing_reason")), None)
        if reason:
            console.print(f"{'MFU' if figure == 'mfu' else 'Energy'} n/a: {reason}")
    console.print(f"wrote {args.out / 'bench.json'}")


def _median_range(figure: dict | None, scale: float = 1, digits: str = ",.0f", unit: str = "") -> str:
    if figure is None:
        return "n/a"
    text = f"{figure['median'] * scale:{digits}}{unit}"
    if figure["runs"] > 1:
        text += f" [{figure['min'] * scale:{digits}}–{figure['max'] * scale:{digits}}{unit}]"
    return text


def headline_lines(head: dict) -> list[str]:
    """The headline in words: medians [min–max] over the repeats, and the two ratios."""
    if "missing_reason" in head:
        return [f"No headline: {head['missing_reason']}."]
    best, original = head["best_engine"], head["original"]
    lines = [f"Fastest engine variant ({best['engine_args']}, batch {best['batch_size']}, {best['runs']} run(s)): "
             f"{_median_range(best['tokens_per_s'])} tokens/s, MFU {_median_range(best['mfu'], 100, '.1f', ' %')}, "
             f"energy {_median_range(best['joules_per_token'], 1e3, '.3g', ' mJ/token')}.",
             f"Original loop at the study's batch {original['batch_size']} ({original['runs']} run(s)): "
             f"{_median_range(original['tokens_per_s'])} tokens/s, MFU "
             f"{_median_range(original['mfu'], 100, '.1f', ' %')}, "
             f"energy {_median_range(original['joules_per_token'], 1e3, '.3g', ' mJ/token')}."]
    for key in ("same_batch", "best_batches"):
        ratio = head[key]
        if "missing_reason" in ratio:
            lines.append(f"No ratio at the same batch: {ratio['missing_reason']}.")
            continue
        lines.append(f"{ratio['ratio']:.2f}× [{ratio['min']:.2f}–{ratio['max']:.2f}]: {ratio['why']} "
                     f"(engine batch {ratio['engine_batch']}, original batch {ratio['original_batch']}; medians, "
                     f"the range from the runs' extremes).")
    for row in head.get("fp8", []):
        over = row["over_best_16_bit"]
        lines.append(f"FP8, a row apart ({row['engine_args']}, batch {row['batch_size']}, {row['runs']} run(s)): "
                     f"{_median_range(row['tokens_per_s'])} tokens/s, {over['ratio']:.2f}× [{over['min']:.2f}–"
                     f"{over['max']:.2f}] the fastest 16-bit variant's; MFU against the FP8 peak "
                     f"{_median_range(row['mfu'], 100, '.1f', ' %')}.")
    return lines


if __name__ == "__main__":
    sys.exit(main())
