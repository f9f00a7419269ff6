"""Design a study before spending GPU hours on it: ``hpml tune --model M --gpus G --site SITE``
enumerates the layouts that could train M on G GPUs per node (× ``--nodes``), predicts each one's
memory and speed with the planner, ranks those predicted to fit by tokens/s, and writes an
experiment file of the best ``--top`` K with the 1-process runs their comparisons need, ready
for ``hpml submit``.

The candidates: every mode (one process alone; else DDP, ZeRO-1, ZeRO-2, ZeRO-3 and FSDP2), every
tensor-parallel size that divides the GPUs of a node (the contract's checks, ``Layout.check``,
refuse those that do not divide the heads or the vocabulary), activation checkpointing off and
on. The batch per GPU: with ``--global-batch B``, each power of two whose DP replicas reach B by
whole accumulation steps, the largest that fits; without, the largest batch predicted to fit the
site's GPU (``hpml_core.contract.fit``), or ``--batch-size`` on a site whose GPU memory is not
known (a CPU site), where nothing is judged to fit or not. A candidate is dropped, with its
reason under ``--explain``, when the contract refuses it or not even a batch of 1 fits.

Speed: the step-time model (``hpml_core.contract.step_time``) at the site's rates, calibrated
where the site has a calibration (``hpml calibrate``). Baselines: each listed mode's 1-process
run at the same batch per GPU and checkpointing (each mode trains in its own precision regime,
so each is compared with one process of its own mode: docs/report.md#baselines).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from hpml_core.contract import fit
from hpml_core.contract.atomic import atomic_write
from hpml_core.contract.checks import resolve
from hpml_core.contract.config import TrainConfig
from hpml_core.contract.data_meta import DataMeta
from hpml_core.contract.errors import UsageError
from hpml_core.contract.gpus import GpuMemory
from hpml_core.contract.memory_model import predict
from hpml_core.contract.models import PRESETS, model_dims
from hpml_core.contract.names import SAFE_NAME
from hpml_core.contract.step_time import StepPrediction, predict_step
from hpml_core.contract.units import GIB
from jobs import cli, site

MULTI_PROCESS_MODES = ("ddp", "zero1", "zero2", "zero3", "fsdp2")


@dataclass(frozen=True)
class Candidate:
    mode: str
    tp: int
    grad_ckpt: bool
    batch: int | None = None  # per GPU; None: refused
    accum: int = 1
    dp: int = 1
    memory_bytes: int | None = None  # predicted per GPU
    step: StepPrediction | None = None
    refused: str | None = None  # why it cannot run

    @property
    def name(self) -> str:
        accum = f"-a{self.accum}" if self.accum > 1 else ""
        return f"{self.mode}-dp{self.dp}xtp{self.tp}-b{self.batch}{accum}{'-ckpt' if self.grad_ckpt else ''}"

    @property
    def tokens_per_s(self) -> float | None:
        return self.step.tokens_per_s if self.step is not None else None


@dataclass(frozen=True)
class Request:
    model: str
    gpus: int  # per node
    nodes: int
    seq_len: int
    precision: str
    global_batch: int | None
    batch_size: int  # per GPU where the site's GPU memory is unknown
    steps: int
    warmup_steps: int


def _batches(request: Request, dp: int, largest: int | None) -> list[tuple[int, int]]:
    """(batch per GPU, accumulation) to try, largest batch first."""
    ceiling = largest if largest is not None else request.batch_size
    if request.global_batch is None:
        return [(ceiling, 1)]
    found, batch = [], 1
    while batch <= ceiling:
        if request.global_batch % (dp * batch) == 0:
            found.append((batch, request.global_batch // (dp * batch)))
        batch *= 2
    return sorted(found, reverse=True)


def evaluate(request: Request, mode: str, tp: int, grad_ckpt: bool, gpu: GpuMemory, profile: site.Site,
             vocab_size: int) -> Candidate:
    """One candidate: refused with the reason, or its batch, memory and predicted step."""
    world = request.gpus * request.nodes
    base = Candidate(mode, tp, grad_ckpt)
    settings = dict(model=request.model, mode=mode, tp_size=tp, seq_len=request.seq_len, precision=request.precision,
                    grad_ckpt=grad_ckpt, batch_size=1, vocab_size=vocab_size, steps=request.steps,
                    warmup_steps=request.warmup_steps, data=Path("unused"))
    try:
        run = resolve(TrainConfig(**settings), world, request.gpus, None)
    except UsageError as exc:
        return Candidate(mode, tp, grad_ckpt, refused=str(exc))
    dp = run.layout.dp_size
    largest = fit.largest_batch(run.config, run.dims, run.layout, gpu) if gpu.total_bytes is not None else None
    if gpu.total_bytes is not None and largest is None:
        return Candidate(mode, tp, grad_ckpt, dp=dp, refused=f"not even a batch of 1 is predicted to fit the "
                                                             f"{gpu.total_gib:.1f} GiB of {gpu.label}")
    tried = _batches(request, dp, largest)
    if not tried:
        return Candidate(mode, tp, grad_ckpt, dp=dp, refused=f"no batch per GPU up to {largest or request.batch_size} "
                         f"reaches the global batch {request.global_batch} over {dp} DP replicas")
    performance, device = profile.performance(), profile.gpu()
    best = base
    for batch, accum in tried:
        config = run.config.model_copy(update={"batch_size": batch, "grad_accum": accum})
        memory = predict(config, run.dims, run.layout).total_bytes
        step = predict_step(config, run.dims, run.layout, request.gpus, device, performance)
        candidate = Candidate(mode, tp, grad_ckpt, batch, accum, dp, memory, step)
        if best.batch is None or (candidate.tokens_per_s or 0) > (best.tokens_per_s or 0):
            best = candidate
    return best


def candidates(request: Request, profile: site.Site, vocab_size: int) -> list[Candidate]:
    world = request.gpus * request.nodes
    modes = ("single",) if world == 1 else MULTI_PROCESS_MODES
    tps = [t for t in range(1, request.gpus + 1) if request.gpus % t == 0] if world > 1 else [1]
    gpu = profile.gpu_memory()
    return [evaluate(request, mode, tp, ckpt, gpu, profile, vocab_size)
            for mode in modes for tp in tps for ckpt in (False, True)]


def ranked(found: list[Candidate]) -> list[Candidate]:
    """The runnable candidates, fastest predicted first (no prediction: last, in enumeration order)."""
    runnable = [c for c in found if c.refused is None]
    return sorted(runnable, key=lambda c: -(c.tokens_per_s or 0))


def baseline_of(candidate: Candidate) -> Candidate:
    """The 1-process run of the candidate's mode that its figures are compared with."""
    mode = "single" if candidate.mode == "ddp" else candidate.mode
    return Candidate(mode, 1, candidate.grad_ckpt, candidate.batch, 1, 1)


def _run_entry(candidate: Candidate, gpus: int, nodes: int) -> dict:
    entry = {"name": candidate.name,
             "mode": candidate.mode, "gpus": gpus, "batch_size": candidate.batch, "grad_ckpt": candidate.grad_ckpt}
    if nodes > 1:
        entry["nodes"] = nodes
    if candidate.tp > 1:
        entry["tp_size"] = candidate.tp
    if candidate.accum > 1:
        entry["grad_accum"] = candidate.accum
    return entry


def experiment_text(name: str, dataset: str, request: Request, top: list[Candidate], profile: site.Site,
                    repeats: int) -> str:
    runs = [_run_entry(c, request.gpus, request.nodes) for c in top]
    if request.gpus * request.nodes > 1:
        baselines = {baseline_of(c).name: baseline_of(c) for c in top}
        runs += [{**_run_entry(b, 1, 1), "name": f"{b.mode}-1-b{b.batch}{'-ckpt' if b.grad_ckpt else ''}"}
                 for b in baselines.values()]
    predicted = "; ".join(f"{c.name}: {c.tokens_per_s:,.0f} tokens/s" if c.tokens_per_s else f"{c.name}: n/a"
                          for c in top)
    spec = {"name": name, "description": f"hpml tune: the {len(top)} layouts predicted fastest for {request.model} "
                                         f"on {request.nodes} x {request.gpus} GPUs of site {profile.name}",
            "dataset": dataset,
            "defaults": {"model": request.model, "seq_len": request.seq_len, "precision": request.precision,
                         "steps": request.steps, "warmup_steps": request.warmup_steps},
            "runs": runs, "repeats": repeats}
    header = (f"# Written by hpml tune for site {profile.name} ({profile.performance().describe()}).\n"
              f"# Predicted, fastest first: {predicted}.\n"
              "# The 1-process runs after them are their baselines (each mode in its own precision regime).\n")
    return header + yaml.safe_dump(spec, sort_keys=False)


def table(request: Request, found: list[Candidate], top_k: int, unit: str) -> Table:
    out = Table(title=f"hpml tune: {request.model} on {request.nodes} x {request.gpus} GPUs, ranked by predicted "
                      "tokens/s")
    for column in ("#", "run", "mode", "DP", "TP", "batch/GPU", "accum", "global batch", "ckpt", "GiB/GPU",
                   "tokens/s", unit):
        out.add_column(column, justify="right" if column not in ("run", "mode") else "left")
    for i, c in enumerate(found, 1):
        hours = c.step.gpu_hours(request.steps, request.gpus * request.nodes) if c.step else None
        out.add_row(f"{i}{'*' if i <= top_k else ''}", c.name, c.mode, str(c.dp), str(c.tp), str(c.batch),
                    str(c.accum), str(c.dp * c.batch * c.accum), "yes" if c.grad_ckpt else "no",
                    f"{c.memory_bytes / GIB:.1f}" if c.memory_bytes is not None else "n/a",
                    f"{c.tokens_per_s:,.0f}" if c.tokens_per_s else "n/a",
                    f"{hours:.3g}" if hours is not None else "n/a")
    return out


def _vocab_size(profile: site.Site, dataset: str) -> int | None:
    """The prepared dataset's vocabulary on this site, if it is there (else GPT-2's is assumed)."""
    folder = profile.dataset_folder(dataset)
    return DataMeta.read(folder).vocab_size if DataMeta.exists(folder) else None


def main(argv: list[str] | None = None) -> int:
    parser = cli.command_parser("tune", __doc__)
    parser.add_argument("--model", required=True, help=f"one of {', '.join(PRESETS)}")
    parser.add_argument("--gpus", type=cli.positive_int, required=True, help="GPUs (processes) per node")
    parser.add_argument("--nodes", type=cli.positive_int, default=1)
    parser.add_argument("--global-batch", type=cli.positive_int, help="reach this global batch (by accumulation)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=8,
                        help="batch per GPU where the site's GPU memory is not known (default 8)")
    parser.add_argument("--seq-len", type=cli.positive_int, default=1024)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16")
    parser.add_argument("--steps", type=cli.positive_int, default=100, help="steps of each run (default 100)")
    parser.add_argument("--warmup-steps", type=cli.positive_int, default=10)
    parser.add_argument("--dataset", default="wikitext-103", help="the experiment's dataset (default wikitext-103)")
    parser.add_argument("--top", type=cli.positive_int, default=4, help="layouts in the experiment (default 4)")
    parser.add_argument("--repeats", type=cli.positive_int, default=2, help="repeats of each run (default 2: a spread)")
    parser.add_argument("--name", help="the experiment's name (default tuned_<model>_<nodes>x<gpus>)")
    parser.add_argument("--out", type=Path, help="the experiment file to write (default ./<name>.yaml)")
    parser.add_argument("--explain", action="store_true", help="also list each layout left out, and why")
    cli.add_site(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        if args.model not in PRESETS:
            raise UsageError("--model", f"{args.model!r}: one of {', '.join(PRESETS)}")
        name = args.name or f"tuned_{args.model.replace('-', '_')}_{args.nodes}x{args.gpus}"
        if not SAFE_NAME.match(name):
            raise UsageError("--name", f"{name!r}: letters, digits, '.', '_' and '-'")
        profile = cli.load_site(args)
        seq_len = min(args.seq_len, model_dims(args.model, 50257).n_positions)
        request = Request(args.model, args.gpus, args.nodes, seq_len, args.precision, args.global_batch,
                          args.batch_size, args.steps, args.warmup_steps)
        if args.warmup_steps >= args.steps:
            raise UsageError("--warmup-steps", f"{args.warmup_steps} leaves no timed step of the {args.steps}")
        found = candidates(request, profile, _vocab_size(profile, args.dataset) or 50257)
        order = ranked(found)
        if not order:
            raise UsageError("--model", f"no layout of {args.model} is predicted to run on {args.nodes} x {args.gpus} "
                                        "GPUs of this site (--explain lists why)")
        unit = "GPU-hours" if profile.gpu() is not None else "process-hours"
        console = Console(width=180)
        console.print(table(request, order, args.top, unit))
        gpu = profile.gpu_memory()
        judged = (f"judged against {gpu.label} ({gpu.total_gib:.1f} GiB)" if gpu.total_bytes is not None
                  else f"not judged ({gpu.missing_reason}): batch per GPU {args.batch_size}")
        print(f"fit: {judged}; speed: {profile.performance().describe()}; {unit} of {args.steps} steps")
        if args.explain:
            for c in found:
                if c.refused is not None:
                    print(f"left out: {c.mode}, TP {c.tp}, checkpointing {'on' if c.grad_ckpt else 'off'}: {c.refused}")
        out = args.out or Path(f"{name}.yaml")
        text = experiment_text(name, args.dataset, request, order[:args.top], profile, args.repeats)
        atomic_write(out, lambda f: f.write(text.encode()))
        baselines = " and their baselines" if request.gpus * request.nodes > 1 else ""
        print(f"wrote {out}: the top {min(args.top, len(order))} (*){baselines}; hpml plan {out}, "
              f"then hpml submit {out} --site {args.site}")
        return 0

    return cli.run("tune", body)


if __name__ == "__main__":
    sys.exit(main())
