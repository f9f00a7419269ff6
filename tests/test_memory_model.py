"""The memory model (``hpml_core.contract.memory_model``) predicts what the engine holds.

Two kinds of evidence, both from the engine's own code on the CPU with gloo:

- In-process measurements (this file is also the script each rank runs: ``worker`` below):
  each rank builds the model exactly as the engine does (``hpml_core.parallelize`` on a GPT
  built on the meta device: TP, each rank's weights, DDP or DeepSpeed ZeRO-3), for every layout
  (single; DDP 2 and 4; ZeRO-3 2 and 4; TP 2; DP 2 x TP 2 with all-reduce and with ZeRO-3), fp32
  and bf16, and two model sizes: the tiny preset and an odd-sized model (width 90, 6 heads of
  15, 3 layers) whose tensors do not divide evenly by 4, so that DeepSpeed pads partitions.
  On each build it runs the forward pass and loss of each variant, SDPA or eager attention with
  checkpointing on or off (both act in the forward alone, so they are switched on the built
  model), under ``torch.autograd.graph.saved_tensors_hooks``, counting the bytes of every
  storage the pass saves for backward once (parameters, model state, left out); then it trains
  one step and measures the model state with the engine's ``hpml_core.measure_model_state``
  (the same for every variant of a build), DDP's bucket sizes as its Reducer reports them, and
  ZeRO-3's whole parameters, persistent and gathered at the start of a later step's backward.
  The activation lines must be within 5% of the saved bytes (they are exact on the CPU), the
  model-state, bucket and ZeRO-3 lines equal to what is measured.
- Real engine launches (``python -m hpml_core.train`` on each rank), one per layout, their
  rank files' ``model_state`` equal to the prediction, byte for byte, with a non-zero
  persistence threshold on one ZeRO-3 run.

The CUDA-only lines (context, cuBLAS workspace, allocator rounding) and the communication
buffers cannot be checked on the CPU; their formulas and sources are in docs/memory-model.md.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from hpml_core.contract import buckets
from hpml_core.contract.config import TrainConfig
from hpml_core.contract.layout import Layout
from hpml_core.contract.memory_model import predict, saved_for_backward, zero3_gathered_elements
from hpml_core.contract.model_state import rank_model_state
from hpml_core.contract.models import model_dims

VOCAB = 512  # the test tokenizer's (tests/conftest.py token_data)
SIZES = {
    "tiny": model_dims("tiny", VOCAB),
    "odd": replace(model_dims("tiny", VOCAB), name="odd", n_layer=3, n_head=6, n_embd=90, n_positions=96),
}
BATCH, SEQ = 2, 32
# name: world size, mode, tp size
LAYOUTS = {
    "single": (1, "single", 1),
    "ddp-2": (2, "ddp", 1), "zero3-2": (2, "zero3", 1), "tp-2": (2, "ddp", 2),
    "ddp-4": (4, "ddp", 1), "zero3-4": (4, "zero3", 1),
    "dp2xtp2-allreduce": (4, "ddp", 2), "dp2xtp2-zero3": (4, "zero3", 2),
}
PERSISTENCE = 300  # ZeRO-3 keeps the odd model's LayerNorms and small biases (90 and 270 elements) whole


def case_config(case: dict, data: Path = Path("unused")) -> TrainConfig:
    _, mode, tp = LAYOUTS[case["layout"]]
    return TrainConfig(mode=mode, model="tiny", tp_size=tp, batch_size=BATCH, seq_len=SEQ, precision=case["precision"],
                       attn=case["attn"], grad_ckpt=case["grad_ckpt"], optimizer="adamw", data=data,
                       zero_persistence_threshold=case.get("threshold", 0), fp8=case.get("fp8", False))


VARIANTS = [dict(attn=attn, grad_ckpt=ckpt) for attn in ("sdpa", "eager") for ckpt in (False, True)]


def builds_for(world: int) -> list[dict]:
    """The models the launch of ``world`` ranks builds, one per layout, size and precision (each
    then runs every attention and checkpointing variant); PyTorch-path layouts first, because
    ZeRO-3 replaces torch.nn.functional.linear for the rest of a process."""
    layouts = sorted((name for name, (w, _, _) in LAYOUTS.items() if w == world),
                     key=lambda name: LAYOUTS[name][1] == "zero3")
    builds = [dict(layout=layout, size=size, precision=precision,
                   threshold=PERSISTENCE if LAYOUTS[layout][1] == "zero3" and size == "odd" else 0)
              for layout in layouts for size in SIZES for precision in ("fp32", "bf16")]
    if world == 1:  # --fp8: the blocks' float8 layers save no weight copies (a width divisible by 16)
        builds += [dict(layout="single", size="tiny", precision="bf16", threshold=0, fp8=True)]
    if world == 2:  # ZeRO-3's release rule alone: a short reuse distance, no prefetching
        builds += [dict(layout="zero3-2", size=size, precision="bf16", threshold=0, reuse_distance=REUSE_DISTANCE)
                   for size in SIZES]
    return builds


REUSE_DISTANCE = 60_000  # elements: the tiny and odd models release some modules' parameters after their forward


def _zero3_settings(reuse_distance: int | None):
    """hpml_core.zero's generated DeepSpeed config, or one with ``stage3_max_reuse_distance`` set
    and prefetching off (``None``: as generated)."""
    from hpml_core import zero

    generated = getattr(zero.deepspeed_config, "generated", zero.deepspeed_config)
    if reuse_distance is None:
        return generated

    def settings(config, mesh):
        ds = generated(config, mesh)
        ds["zero_optimization"].update(stage3_max_reuse_distance=reuse_distance, stage3_prefetch_bucket_size=0)
        return ds

    settings.generated = generated
    return settings


# ---------------------------------------------------------------- the worker (each rank runs this file)

def _param_storages(model) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in model.parameters() if p.numel() > 0}


def _saved_bytes(stepper, x, y) -> int:
    """Bytes of the storages one forward pass and loss save for backward, each once, parameters
    left out; then the backward (and ZeRO-3's step) that the graph expects."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen and storage.data_ptr() not in _param_storages(stepper.model):
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    zero3 = hasattr(stepper, "engine")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if zero3:  # as DeepSpeedStepper.step
            loss = stepper.loss_fn(stepper.engine(x), y)
        else:
            with stepper.autocast:  # as TorchStepper.step
                loss = stepper.loss_fn(stepper.trained(x), y)
    if zero3:
        stepper.engine.backward(loss)
        stepper.engine.step()
    else:
        loss.backward()
        stepper.optimizer.zero_grad(set_to_none=True)
    return sum(seen.values())


def _set_variant(stepper, attn: str, grad_ckpt: bool) -> None:
    """Switch a built model's attention and activation checkpointing in place: both act in the
    forward alone, so one build serves every variant (parameters and model state are the same)."""
    from hpml_core.parallelize import apply_activation_checkpointing

    for block in stepper.model.blocks:
        block.attn.attn = attn
        block.__dict__.pop("forward", None)  # back to Block.forward
    if grad_ckpt:
        apply_activation_checkpointing(stepper.model, name_recomputation=True)


def _measure(build: dict, rank: int, world: int, record_dir: Path) -> list[dict]:
    """One record per variant of ``build``: the bytes its forward saves, and the model state (and
    ZeRO-3's whole parameters, DDP's buckets) the engine's step then measures."""
    import torch

    from hpml_core.mesh import build_mesh
    from hpml_core.model import GPT
    from hpml_core.parallelize import parallelize

    from hpml_core import zero

    config, dims = case_config({**build, **VARIANTS[0]}), SIZES[build["size"]]
    zero.deepspeed_config = _zero3_settings(build.get("reuse_distance"))
    mesh = build_mesh(Layout(world, config.tp_size), rank)
    with torch.device("meta"):
        model = GPT(dims, attn=config.attn)
    stepper = parallelize(model, mesh, config, torch.device("cpu"), record_dir)
    x, y = torch.randint(0, dims.vocab_size, (2, BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    saved = []
    for variant in VARIANTS:
        _set_variant(stepper, **variant)
        saved.append(_saved_bytes(stepper, x, y))
    stepper.step([(x, y)], measure=True)  # the engine's own step and model-state measurement
    zero3 = config.mode == "zero3"
    peaks = {}
    if build["layout"] in PEAK_LAYOUTS:
        for variant in PEAK_VARIANTS:
            _set_variant(stepper, **variant)
            peaks[_variant_key(variant)] = _allocated_peak(stepper, x, y, record_dir / f"timeline-{rank}.json")
    common = {"rank": rank, "model_state": stepper.model_state, "allocated_peaks": peaks,
              "persistent_bytes": _whole_bytes(stepper.model, persistent=True) if zero3 else 0,
              "gathered_bytes": _gathered_at_backward(stepper, x, y) if zero3 else 0,
              "ddp_bucket_bytes": _ddp_bucket_bytes(stepper.trained) if not zero3 else 0}
    return [{**build, **variant, **common, "saved_bytes": bytes_} for variant, bytes_ in zip(VARIANTS, saved)]


# The step's whole peak is measured for PyTorch's own steppers, whose moments the memory model
# tells apart (the start of the backward, a recomputed block, the update), with SDPA: eager
# attention's backward makes T² gradients the model does not count (docs/memory-model.md).
# Without TP: the profiler's memory timeline cannot follow a custom autograd function that
# returns its input (TP's region functions), and refuses the trace.
PEAK_LAYOUTS = ("single", "ddp-2")  # DDP on 4 runs the same code as on 2, twice as slowly on two cores
PEAK_VARIANTS = [dict(attn="sdpa", grad_ckpt=False), dict(attn="sdpa", grad_ckpt=True)]


def _variant_key(variant: dict) -> str:
    return f"{variant['attn']}{' ckpt' if variant['grad_ckpt'] else ''}"


def _allocated_peak(stepper, x, y, timeline: Path) -> int:
    """The most bytes of tensors alive at once in one engine step (after one that warms it up),
    from the profiler's memory timeline: every allocation and release of the CPU allocator, as
    ``torch.cuda.max_memory_allocated`` counts a GPU's."""
    import warnings

    from torch.profiler import ProfilerActivity, profile

    stepper.step([(x, y)])
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        stepper.step([(x, y)])
    with warnings.catch_warnings():  # deprecated for CUDA's memory snapshots, which a CPU has not
        warnings.simplefilter("ignore", FutureWarning)
        prof.export_memory_timeline(str(timeline), device="cpu")
    _, sizes = json.loads(timeline.read_text())
    return max(sum(size) for size in sizes)


def _ddp_bucket_bytes(trained) -> int:
    """Bytes of DDP's gradient buckets, as its Reducer reports them (0 without DDP)."""
    if not hasattr(trained, "_get_ddp_logging_data"):
        return 0
    sizes = trained._get_ddp_logging_data()["bucket_sizes"]
    return sum(int(size) for size in sizes.replace(" ", "").split(",") if size)


def _whole_bytes(model, persistent: bool) -> int:
    """Bytes of the storages behind ZeRO-3's whole (gathered) parameters, persistent or not, each
    once; a whole parameter that is a view of its own partition (dp 1) holds nothing more."""
    partitions = {p.ds_tensor.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()
                if p.data.numel() > 0 and p.ds_persist == persistent}
    return sum(size for ptr, size in storages.items() if ptr not in partitions)


def _gathered_at_backward(stepper, x, y) -> int:
    """Bytes of the whole non-persistent parameters ZeRO-3 holds when the backward starts, on a
    step after the first (whose trace decides what it releases)."""
    loss = stepper.loss_fn(stepper.engine(x), y)
    gathered = _whole_bytes(stepper.model, persistent=False)
    stepper.engine.backward(loss)
    stepper.engine.step()
    return gathered


def worker(builds_file: str, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("gloo")
    torch.set_num_threads(1)
    results = [record for build in json.loads(Path(builds_file).read_text())
               for record in _measure(build, rank, world, Path(out_dir))]
    (Path(out_dir) / f"measured-{rank}.json").write_text(json.dumps(results))
    if world > 1:
        dist.destroy_process_group()


# ---------------------------------------------------------------- the tests

@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> list[dict]:
    """Every case, measured by each rank of a launch of 1, 2 and 4 processes."""
    from tests.conftest import engine

    results = []
    for world in (1, 2, 4):
        out = tmp_path_factory.mktemp(f"measured-{world}")
        builds = out / "builds.json"
        builds.write_text(json.dumps(builds_for(world)))
        engine([str(builds), str(out)], nproc=world, script=Path(__file__))
        for rank in range(world):
            results += json.loads((out / f"measured-{rank}.json").read_text())
    return results


def _predicted(case: dict):
    world, _, tp = LAYOUTS[case["layout"]]
    return predict(case_config(case), SIZES[case["size"]], Layout(world, tp), device_type="cpu")


def _name(case: dict) -> str:
    return (f"{case['layout']} {case['size']} {case['precision']}{' fp8' if case.get('fp8') else ''} {case['attn']}"
            f"{' ckpt' if case['grad_ckpt'] else ''} rank {case['rank']}")


def test_every_case_was_measured(measured):
    # 16 cases a layout (2 sizes x 2 precisions x 2 attentions x checkpointing or not), on each of its ranks
    assert len(measured) == sum(len(builds_for(w)) * len(VARIANTS) * w for w in (1, 2, 4))
    assert len([case for case in measured if "reuse_distance" not in case and not case.get("fp8")]) == \
        16 * (1 + 3 * 2 + 4 * 4)
    assert len([case for case in measured if case.get("fp8")]) == len(VARIANTS)


def test_activations_are_what_the_forward_pass_saves(measured):
    worst = 0.0
    for case in measured:
        world, _, tp = LAYOUTS[case["layout"]]
        predicted = saved_for_backward(case_config(case), SIZES[case["size"]], Layout(world, tp), device_type="cpu")
        error = abs(predicted - case["saved_bytes"]) / case["saved_bytes"]
        assert error <= 0.05, f"{_name(case)}: predicted {predicted:,}, saved {case['saved_bytes']:,}"
        worst = max(worst, error)
    print(f"worst relative error of the activation prediction over {len(measured)} rank-cases: {worst:.2%}")


def test_the_whole_peak_of_pytorch_s_steppers_is_predicted(measured):
    """The allocated peak of a whole engine step (forward, backward, update), measured from every
    allocation, against the prediction's allocated bytes on the CPU: at the start of the backward
    (no gradient made yet), at a recomputed block, or at the update, whichever holds the most."""
    cases = [(case, key, peak) for case in measured for key, peak in case["allocated_peaks"].items()
             if key == _variant_key(case)]
    assert {case["layout"] for case, _, _ in cases} == set(PEAK_LAYOUTS)
    worst = 0.0
    for case, key, peak in cases:
        predicted = _predicted(case).allocated_bytes
        error = predicted / peak - 1
        assert abs(error) <= 0.01, f"{_name(case)}: predicted {predicted:,} B, measured {peak:,} B ({error:+.2%})"
        worst = max(worst, abs(error))
    print(f"worst relative error of the whole peak over {len(cases)} rank-cases: {worst:.2%}")


def test_model_state_is_exactly_what_the_engine_measures(measured):
    for case in measured:
        prediction, state = _predicted(case), case["model_state"]
        for line, key in [("parameters", "params_bytes"), ("gradients", "grads_bytes"),
                          ("optimizer states", "optimizer_bytes")]:
            assert prediction.state_line(line).bytes == state[key], f"{_name(case)}: {line}"


def test_persistent_parameters_are_the_ones_zero3_keeps_whole(measured):
    zero3 = [case for case in measured if LAYOUTS[case["layout"]][1] == "zero3"]
    assert any(case["persistent_bytes"] for case in zero3)
    for case in zero3:
        predicted = rank_model_state(case_config(case), SIZES[case["size"]], LAYOUTS[case["layout"]][2],
                                     LAYOUTS[case["layout"]][0] // LAYOUTS[case["layout"]][2])
        assert predicted.persistent == case["persistent_bytes"], _name(case)
        assert predicted.persistent_count == case["model_state"]["full_params_resident"], _name(case)
        lines = {line.name for line in _predicted(case).lines}
        assert ("ZeRO-3 persistent parameters" in lines) == (predicted.persistent > 0)


def test_zero3_holds_the_predicted_gathered_parameters_when_the_backward_starts(measured):
    """The tiny and odd models are far under DeepSpeed's reuse distance: every non-persistent
    parameter stays gathered through the forward, whole and padded to a multiple of dp. With a
    short reuse distance and no prefetching, exactly the parameters the release rule keeps."""
    released_some = False
    for case in measured:
        if LAYOUTS[case["layout"]][1] != "zero3":
            continue
        world, _, tp = LAYOUTS[case["layout"]]
        if "reuse_distance" in case:
            kept, released = zero3_gathered_elements(case_config(case), SIZES[case["size"]], Layout(world, tp),
                                                     reuse_distance=case["reuse_distance"])
            assert 2 * kept == case["gathered_bytes"], _name(case)  # bf16
            released_some |= released > 0 and kept > 0
        else:
            assert _predicted(case).line("ZeRO-3 gathered parameters").bytes == case["gathered_bytes"], _name(case)
    assert released_some


def test_ddp_buckets_hold_a_copy_of_every_gradient(measured):
    for case in measured:
        lines = {line.name: line.bytes for line in _predicted(case).lines}
        assert lines.get("DDP gradient buckets", 0) == case["ddp_bucket_bytes"], _name(case)
    assert any(case["ddp_bucket_bytes"] for case in measured)


def test_zero3_bucket_sizes_are_the_generated_deepspeed_configs():
    from hpml_core import zero

    class _Mesh:
        layout = Layout(2, 1)

    settings = zero.deepspeed_config(case_config(dict(layout="zero3-2", precision="bf16", attn="sdpa",
                                                      grad_ckpt=False)), _Mesh())["zero_optimization"]
    assert settings["reduce_bucket_size"] == buckets.ZERO3_REDUCE_BUCKET
    assert settings["stage3_prefetch_bucket_size"] == buckets.ZERO3_PREFETCH_BUCKET
    assert settings["contiguous_gradients"]  # what preallocates the reduce bucket


def test_lines_are_named_explained_and_add_up():
    case = dict(layout="dp2xtp2-zero3", size="odd", precision="bf16", attn="eager", grad_ckpt=False, threshold=300)
    prediction = predict(case_config(case), SIZES["odd"], Layout(4, 2))
    names = [line.name for line in prediction.lines]
    assert len(names) == len(set(names))
    for name in ["parameters", "gradients", "optimizer states", "ZeRO-3 persistent parameters", "activations",
                 "logits and loss", "logits gradients", "ZeRO-3 reduce bucket", "ZeRO-3 gathered parameters",
                 "CUDA context", "cuBLAS workspace", "allocator rounding"]:
        line = prediction.line(name)
        assert line.bytes > 0 and line.formula, name
    assert prediction.total_bytes == sum(line.bytes for line in prediction.lines)
    assert prediction.total_bytes - prediction.allocated_bytes == prediction.line("CUDA context").bytes
    on_cpu = predict(case_config(case), SIZES["odd"], Layout(4, 2), device_type="cpu")
    assert not {"CUDA context", "cuBLAS workspace", "allocator rounding"} & {line.name for line in on_cpu.lines}
    ddp = predict(case_config(dict(layout="ddp-4", precision="fp32", attn="sdpa", grad_ckpt=False)),
                  SIZES["tiny"], Layout(4, 1))
    assert ddp.line("DDP gradient buckets").bytes == ddp.state_line("gradients").bytes  # a flat copy of every gradient


def test_checkpointing_peaks_at_the_logits_or_at_a_recomputed_block():
    """With a vocabulary far wider than a block, the logits' gradients are the peak; with a long
    sequence under eager attention (T² probabilities per head), the recomputed block is."""
    def lines(seq_len: int, attn: str) -> set[str]:
        config = TrainConfig(model="tiny", seq_len=seq_len, attn=attn, grad_ckpt=True, data=Path("unused"))
        return {line.name for line in predict(config, SIZES["tiny"], Layout(1, 1)).lines}

    assert {"logits and loss", "logits gradients"} <= lines(32, "sdpa") and "recomputed block" not in lines(32, "sdpa")
    assert "recomputed block" in lines(256, "eager") and "logits gradients" not in lines(256, "eager")


# ---------------------------------------------------------------- real engine launches: the rank files

# One launch per layout; sizes, precisions and attention alternate so each appears in several
# layouts. The odd model pads every sharded layout: ZeRO-3's partitions and FSDP2's rows (90 and
# 270 rows over 4 ranks); ZeRO-1/2's flat buffers are checked per rank in test_zero12_contract.py.
# name: world size, mode, tp size, model size, precision, more flags
ENGINE_RUNS = {
    "single": (1, "single", 1, "tiny", "fp32", []),
    "ddp-2": (2, "ddp", 1, "odd", "bf16", ["--grad-ckpt", "--attn", "eager"]),
    "ddp-4": (4, "ddp", 1, "tiny", "bf16", []),
    "zero3-2": (2, "zero3", 1, "odd", "bf16", ["--zero-persistence-threshold", str(PERSISTENCE)]),
    "zero3-4": (4, "zero3", 1, "odd", "fp32", []),
    "tp-2": (2, "ddp", 2, "odd", "fp32", ["--attn", "eager"]),
    "dp2xtp2-allreduce": (4, "ddp", 2, "tiny", "bf16", ["--grad-ckpt"]),
    "dp2xtp2-zero3": (4, "zero3", 2, "odd", "bf16", []),
    "fsdp2-4": (4, "fsdp2", 1, "odd", "bf16", []),
    "dp2xtp2-fsdp2": (4, "fsdp2", 2, "odd", "fp32", ["--grad-ckpt"]),
}


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory, token_data) -> dict[str, Path]:
    """Each layout trained 2 steps by the real engine; the odd size through the tiny preset's sizes."""
    from tests.conftest import engine, engine_script_with_tiny_sized_as

    root = tmp_path_factory.mktemp("engine-runs")
    script = engine_script_with_tiny_sized_as(SIZES["odd"], root)
    runs = {}
    for layout, (world, mode, tp, size, precision, extra) in ENGINE_RUNS.items():
        out = root / layout
        engine(["--test", "--seq-len", str(SEQ), "--steps", "2", "--warmup-steps", "1", "--batch-size", str(BATCH),
                "--profile-steps", "0",
                "--precision", precision, "--mode", mode, "--tp-size", str(tp), *extra,
                "--data", str(token_data), "--out", str(out)],
               nproc=world, script=script if size == "odd" else None)
        runs[layout] = out
    return runs


@pytest.mark.parametrize("layout", ENGINE_RUNS)
def test_rank_files_model_state_is_predicted_exactly(layout, engine_runs):
    from tests.conftest import rank_files

    world, size = ENGINE_RUNS[layout][0], ENGINE_RUNS[layout][3]
    files = rank_files(engine_runs[layout])
    assert sorted(files) == list(range(world))
    for rank, record in files.items():
        assert record["status"] == "COMPLETED"
        config = TrainConfig.model_validate(record["config"])
        # FSDP2's ranks differ (the last rows' AdamW moments are not padded): each rank's own
        prediction = predict(config, SIZES[size], Layout(record["world_size"], config.tp_size),
                             dp_rank=record["dp_rank"])
        state = record["model_state"]
        assert (prediction.state_line("parameters").bytes, prediction.state_line("gradients").bytes,
                prediction.state_line("optimizer states").bytes) == \
               (state["params_bytes"], state["grads_bytes"], state["optimizer_bytes"]), f"{layout} rank {rank}"
        assert state["expected_bytes"] == state["total_bytes"]  # the rank file's own expectation is exact too
        assert record["prediction"]["model_state_bytes"] == state["total_bytes"]  # and the one it recorded
        if config.zero_persistence_threshold:
            dp = record["world_size"] // config.tp_size
            persistent = rank_model_state(config, SIZES[size], config.tp_size, dp).persistent_count
            assert state["full_params_resident"] == persistent > 0


if __name__ == "__main__":
    worker(*sys.argv[1:])
