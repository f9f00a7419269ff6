"""The memory table of the original study, measured: per-rank peak memory of one model at one
batch in the four layouts (single; DDP on 4; ZeRO-3 on 4; DP 2 × TP 2 with ZeRO-3), set
against the figures the study reported (about 21 GB single and DDP, 20 GB ZeRO-3, 6 GB DP×TP),
with where each layout's step goes (its rank files' profiled steps, ``docs/time-parts.md``).

The four ranks run as four processes. With fewer than four GPUs they share GPU 0 and talk over
gloo (``--dist-backend gloo``: NCCL refuses two ranks on one device), which changes the speed,
not what each rank allocates. On a CPU the figure is each process's peak RSS. A layout whose
ranks run out of memory (four ranks sharing one GPU need four times a rank's peak) is a row of
its own, with the memory model's prediction of each rank's peak, and the other layouts still run.

    python -m hpml_core.bench.memory --model gpt2-large --batch-size 8 --data DATA
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from hpml_core.bench import common_arguments, keep_earlier, source
from hpml_core.contract import rank_file
from hpml_core.contract.attempts import latest_rank_files
from hpml_core.contract.atomic import atomic_write_json
from hpml_core.contract.run_states import COMPLETED, FAILED, OUT_OF_MEMORY
from hpml_core.contract.units import GIB

# name, engine flags, processes, the original study's reported peak memory per GPU (GB)
LAYOUTS = (
    ("single", ["--mode", "single"], 1, 21.0),
    ("ddp-4", ["--mode", "ddp"], 4, 21.0),
    ("zero3-4", ["--mode", "zero3"], 4, 20.0),
    ("dp2xtp2-zero3", ["--mode", "zero3", "--tp-size", "2"], 4, 6.0),
)


# The order they run in, most telling first, so that a run cut short keeps what matters: the
# baseline, the study's headline (DP x TP), ZeRO-3, then DDP, whose four whole replicas are the
# most that ranks sharing one GPU must fit in it. Rows are shown in LAYOUTS' order.
RUN_ORDER = ("single", "dp2xtp2-zero3", "zero3-4", "ddp-4")

# The study's figures are for GPT-2 Large at batch 8 and sequence 1024; other settings have none.
STUDY_SETTINGS = ("gpt2-large", 8, 1024)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hpml_core.bench.memory", description=__doc__.split("\n\n")[0])
    common_arguments(parser, out=Path("results/bench/memory"), steps=6, warmup_steps=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--engine-args", default="--precision bf16",
                        help="further engine flags, the same for every layout (default: %(default)s)")
    return parser.parse_args(argv)


def share_one_gpu(processes: int) -> bool:
    """Whether ``processes`` ranks must share GPU 0 (and so talk over gloo, through host memory)."""
    return processes > 1 and 0 < torch.cuda.device_count() < processes


def command(flags: list[str], processes: int, args: argparse.Namespace, out: Path) -> list[str]:
    engine = ["-m", "hpml_core.train", *flags, "--model", args.model, "--batch-size", str(args.batch_size),
              "--seq-len", str(args.seq_len), "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
              "--data", str(args.data), "--out", str(out), *shlex.split(args.engine_args)]
    if processes == 1:
        return [sys.executable, *engine]
    if share_one_gpu(processes):
        engine.append("--dist-backend=gloo")
    return [sys.executable, "-m", "hpml_core.local_ranks", str(processes), *engine]  # as the local site starts them


def layout_row(name: str, run: list[str], files: list[rank_file.RankFile], reported_gb: float | None) -> dict:
    """One layout's measured peaks and model state per rank, beside the memory model's
    prediction of each (hpml_core.contract.memory_model, recorded in the rank file): on a GPU the
    training peak is set against the predicted allocated bytes, both being what PyTorch's
    allocator holds; on a CPU the resident set also holds the interpreter and its libraries,
    which the model does not predict, so only the model state is compared there."""
    peaks = [f.memory.peak()[0] for f in files]
    predicted = [f.prediction for f in files]
    metric = files[0].memory.peak()[1]
    return {"layout": name, "command": shlex.join(run), "status": COMPLETED, "ranks": len(files),
            "device": files[0].device_name,
            "ranks_share_one_gpu": share_one_gpu(len(files)), "memory_metric": metric, "peak_bytes_per_rank": peaks,
            "peak_gib_max": max(peaks) / GIB,
            "model_state_bytes_per_rank": [f.model_state.total_bytes for f in files],
            "predicted_model_state_bytes_per_rank": [p.model_state_bytes if p else None for p in predicted],
            "predicted_peak_bytes_per_rank": [p.allocated_bytes if p and metric.startswith("cuda") else None
                                              for p in predicted],
            "original_study_gb": reported_gb, **_where_time_goes(files)}


def unfinished_row(name: str, run: list[str], processes: int, files: list[rank_file.RankFile], code: int,
                   reported_gb: float | None) -> dict:
    """A layout that did not complete: the first unfinished rank's status and error (the exit
    status where no rank wrote a file), beside the memory model's prediction of each rank's
    peak, so that ranks out of memory on a GPU they shared say what they needed."""
    unfinished = next((f for f in files if f.status != COMPLETED), None)
    return {"layout": name, "command": shlex.join(run), "ranks": processes,
            "status": unfinished.status if unfinished else FAILED,
            "error": unfinished.error if unfinished else f"exit status {code}, and no rank file",
            "ranks_share_one_gpu": share_one_gpu(processes),
            "predicted_peak_bytes_per_rank": [f.prediction.allocated_bytes if f.prediction and f.device_type == "cuda"
                                              else None for f in files],
            "original_study_gb": reported_gb}


def _where_time_goes(files: list[rank_file.RankFile]) -> dict:
    """Each rank's median profiled step, part by part (ms), and rank 0's collectives, or why there are none."""
    missing = next((f.profile_missing_reason for f in files if f.profile is None), None)
    if missing is not None:
        return {"parts_ms_per_rank": None, "collectives": None, "profile_missing_reason": missing}
    return {"parts_ms_per_rank": [{part: 1e3 * s for part, s in f.profile.median_parts().items()} for f in files],
            "collectives": [c.model_dump() for c in files[0].profile.collectives_per_step().values()],
            "profile_how": files[0].profile.how, "profile_missing_reason": None}


def _error(predicted: int | None, measured: int) -> str:
    return f"{(predicted - measured) / measured:+.0%}" if predicted else "n/a"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    rows, ran = [], source.describe()  # the code these layouts run
    comparable = (args.model, args.batch_size, args.seq_len) == STUDY_SETTINGS
    summary = keep_earlier(args.out / "memory.json")  # an earlier call's, kept; this call's rewritten below
    shown = [layout[0] for layout in LAYOUTS]
    for name, flags, processes, reported in sorted(LAYOUTS, key=lambda layout: RUN_ORDER.index(layout[0])):
        run = command(flags, processes, args, args.out / name)
        print(f"[memory] {name}: {shlex.join(run)}", file=sys.stderr, flush=True)
        started = time.monotonic()
        code = subprocess.run(run).returncode
        seconds = round(time.monotonic() - started, 1)  # what the layout cost a GPU lease, start-up included
        files = [rank_file.read(path) for _, path in sorted(latest_rank_files(args.out / name).items())]
        if code == 0 and len(files) == processes and all(f.status == COMPLETED for f in files):
            rows.append({**layout_row(name, run, files, reported if comparable else None), "process_s": seconds})
        else:
            rows.append({**unfinished_row(name, run, processes, files, code, reported if comparable else None),
                         "process_s": seconds})
            print(f"[memory] {name}: {rows[-1]['status']}: {rows[-1]['error']}", file=sys.stderr, flush=True)
        rows.sort(key=lambda row: shown.index(row["layout"]))
        # after each layout, so that a run cut short keeps the layouts it measured
        atomic_write_json(summary, {"model": args.model, "batch_size": args.batch_size, "seq_len": args.seq_len,
                                    "source": ran, "layouts": rows})
    done = [row for row in rows if row["status"] == COMPLETED]
    where = f" on {done[0]['device']} ({done[0]['memory_metric']})" if done else ""
    table = Table(title=f"Peak memory per rank: {args.model}, batch {args.batch_size}, sequence {args.seq_len}{where}")
    for column in ("layout", "ranks", "peak per rank, max (GiB)", "predicted (GiB)", "model state per rank (GiB)",
                   "predicted (GiB)", "original study (GB)"):
        table.add_column(column, justify="left" if column == "layout" else "right")
    for row in rows:
        reported = row["original_study_gb"]
        if row["status"] != COMPLETED:
            predicted = max((p for p in row["predicted_peak_bytes_per_rank"] if p), default=None)
            table.add_row(row["layout"], str(row["ranks"]), row["status"],
                          f"{predicted / GIB:.3g}" if predicted else "n/a", "", "",
                          f"{reported:.0f}" if reported else "- (other settings)")
            continue
        worst = max(range(row["ranks"]), key=lambda rank: row["peak_bytes_per_rank"][rank])
        peak, predicted_peak = row["peak_bytes_per_rank"][worst], row["predicted_peak_bytes_per_rank"][worst]
        state, predicted_state = row["model_state_bytes_per_rank"][worst], row["predicted_model_state_bytes_per_rank"][worst]
        table.add_row(row["layout"], str(row["ranks"]), f"{peak / GIB:.3g}",
                      f"{predicted_peak / GIB:.3g} ({_error(predicted_peak, peak)})" if predicted_peak else "n/a (CPU)",
                      f"{state / GIB:.3g}",
                      f"{predicted_state / GIB:.3g} ({_error(predicted_state, state)})" if predicted_state else "n/a",
                      f"{reported:.0f}" if reported else "- (other settings)")
    Console(width=140).print(table)
    print(f"wrote {args.out / 'memory.json'}")
    # Running out of memory is a measurement (the layout does not fit there); any other end is not.
    return 0 if all(row["status"] in (COMPLETED, OUT_OF_MEMORY) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
