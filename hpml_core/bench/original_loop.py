"""The original study's style of training loop, kept as the yardstick of ``make bench``:
transformers' ``GPT2LMHeadModel`` (unpadded vocabulary), fp16 autocast with a GradScaler,
gradient checkpointing, torch's AdamW (not fused), and the loss read back every step, as a loop
that prints it does. Everything else matches hpml's engine so that only the loop differs: the
same prepared tokens and batches, the same step timing (median of the steps after warm-up, the
device synchronised at each step's end), the same FLOP formula and peak table for MFU, and the
same energy counter over the same steps (``hpml_core.energy``).

    python -m hpml_core.bench.original_loop --model gpt2-large --data DATA --out original.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from hpml_core.batches import TokenBatches, TokenData
from hpml_core.bench import common_arguments
from hpml_core.energy import EnergyMeter
from hpml_core.memory import PhasePeaks
from hpml_core.rank_result import cpu_name
from hpml_core.contract.atomic import atomic_write_json
from hpml_core.contract import metrics
from hpml_core.contract.metrics import FORMULA, lookup_peak, palm_flops_per_token
from hpml_core.contract.errors import EXIT_OOM
from hpml_core.contract.layout import Layout
from hpml_core.contract.run_states import OUT_OF_MEMORY
from hpml_core.contract.models import PRESETS

AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}
VARIANT = "original study's loop (transformers GPT2LMHeadModel)"


def matmul_weights(model: GPT2LMHeadModel) -> int:
    """N of the PaLM formula, counted on the model itself: every Conv1D weight of the blocks and
    the LM head (tied to the token embedding, so once)."""
    blocks = sum(module.weight.numel() for name, module in model.named_modules()
                 if type(module).__name__ == "Conv1D")
    return blocks + model.lm_head.weight.numel()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="original_loop", description=__doc__.split("\n\n")[0])
    common_arguments(parser, out=None, steps=30, warmup_steps=10)  # --out: the JSON file to write
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", choices=sorted(AUTOCAST), default="fp16")
    parser.add_argument("--no-grad-ckpt", dest="grad_ckpt", action="store_false")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--vocab-size", type=int, help="the model's vocabulary, at least the data's (default: the data's)")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup_steps:
        parser.error(f"--steps: must be more than --warmup-steps ({args.warmup_steps}), or nothing is timed")
    return args


def train(args: argparse.Namespace, model: GPT2LMHeadModel, optimizer: torch.optim.Optimizer,
          scaler: torch.amp.GradScaler, batches: TokenBatches, memory: PhasePeaks, energy: EnergyMeter,
          device: torch.device) -> tuple[list[float], list[float]]:
    """The loop as the study wrote it: each step's loss and wall time."""
    dtype = AUTOCAST[args.precision]
    losses, times = [], []
    for step in range(args.steps):
        if step == args.warmup_steps:
            memory.start_training()
            energy.start()
        started = time.perf_counter()
        inputs, targets = (t.to(device, non_blocking=True) for t in batches.batch(step))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(input_ids=inputs).logits
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())  # the host waits for the device here, every step
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    energy.stop()
    memory.end_training()
    return losses, times


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    data = TokenData.open(args.data)
    if args.vocab_size is not None and args.vocab_size < data.vocab_size:
        print(f"original_loop: error: --vocab-size: {args.vocab_size} is smaller than the data's {data.vocab_size}",
              file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    config = GPT2Config(**PRESETS[args.model], vocab_size=args.vocab_size or data.vocab_size, use_cache=False,
                        bos_token_id=None, eos_token_id=None)
    # Initialised where it trains: GPT-2 Large's random init took 8 s on this project's 2-core host,
    # seconds of a GPU lease that a GPU does in a fraction of one. The timed steps are the same.
    with device:
        model = GPT2LMHeadModel(config)
    if args.grad_ckpt:  # the method's newer name in transformers 5, the older one before
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    batches = TokenBatches(data, args.seq_len, args.batch_size, layout=Layout(1, 1), dp_rank=0, seed=args.seed)
    # The engine's memory spans (hpml_core.memory), so both variants' peaks cover the same steps.
    memory = PhasePeaks(device)
    memory.end_setup()
    energy = EnergyMeter(device)  # ...and the engine's energy span, the timed steps

    try:
        losses, times = train(args, model, optimizer, scaler, batches, memory, energy, device)
    except torch.OutOfMemoryError as exc:  # at a batch too large for the device: said, with no figures
        atomic_write_json(args.out, {"variant": VARIANT, "status": OUT_OF_MEMORY, "batch_size": args.batch_size,
                                     "error": f"out of memory at batch size {args.batch_size}: {exc}"[:2000]})
        print(f"original_loop: out of memory at batch size {args.batch_size}", file=sys.stderr)
        return EXIT_OOM
    timed = times[args.warmup_steps:]
    joules, energy_missing_reason = energy.record(len(timed), args.batch_size * args.seq_len * len(timed))
    median = statistics.median(timed)
    tokens_per_s = metrics.tokens_per_s(args.batch_size * args.seq_len, median)
    n = matmul_weights(model)
    flops_per_token = palm_flops_per_token(n, config.n_layer, config.n_head, config.n_embd // config.n_head, args.seq_len)
    achieved = metrics.achieved_tflops_per_device(flops_per_token, tokens_per_s, devices=1)
    peak = lookup_peak(device.type, device_name, args.precision)
    peak_bytes, metric = memory.record().peak()
    result = {
        "variant": VARIANT,
        "settings": {"model": args.model, "seq_len": args.seq_len, "batch_size": args.batch_size,
                     "precision": args.precision, "grad_ckpt": args.grad_ckpt, "optimizer": "torch AdamW (foreach)",
                     "vocab_size": config.vocab_size, "steps": args.steps, "warmup_steps": args.warmup_steps},
        "device": device_name,
        "timing": "wall clock per step, device synchronised at each step's end; median of the steps after warm-up",
        "step_time_median_s": median,
        "tokens_per_s": tokens_per_s,
        "samples_per_s": args.batch_size / median,
        "flops_formula": FORMULA,
        "flops_per_token": flops_per_token,
        "n_params_matmul": n,
        "achieved_tflops_per_s": achieved,
        "peak_tflops_per_s": peak.tflops,
        "peak_source": peak.source,
        "mfu": metrics.mfu(achieved, peak.tflops),
        "mfu_missing_reason": peak.missing_reason,
        "peak_memory_bytes": peak_bytes,
        "memory_metric": metric,
        "joules_per_token": joules.run_joules_per_token if joules else None,
        "mean_power_w": joules.mean_power_w if joules else None,
        "energy_missing_reason": energy_missing_reason,
        "losses": losses,
    }
    atomic_write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("tokens_per_s", "achieved_tflops_per_s", "mfu")}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
