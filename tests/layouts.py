"""The parallel layouts the tests train, and how: shared by the equivalence, resume and compile
tests so that each layout is trained once per session (see the ``trained`` fixture)."""

STEPS = 6
COMMON = ["--test", "--precision", "fp32", "--steps", str(STEPS), "--warmup-steps", "1", "--grad-clip", "0",
          "--save-model"]
# optimizer flags, and the relative tolerance on trained weights (justified in test_parallel_equivalence.py)
OPTIMIZERS = {"sgd": (["--optimizer", "sgd", "--lr", "0.1"], 1e-5), "adamw": (["--optimizer", "adamw"], 1e-3)}
# name: processes, mode, tp size, batch per DP rank, accumulation (global batch 4 everywhere)
LAYOUTS = {
    "ddp-4": (4, "baseline", 1, 1, 1),
    "ddp-2-accum-2": (2, "baseline", 1, 1, 2),
    "zero3-2": (2, "hybrid", 1, 2, 1),
    "zero3-4": (4, "hybrid", 1, 1, 1),
    "tp-2": (2, "baseline", 2, 4, 1),
    "dp2xtp2-allreduce": (4, "baseline", 2, 2, 1),
    "dp2xtp2-zero3": (4, "hybrid", 2, 2, 1),
    "dp2xtp2-zero3-accum-2": (4, "hybrid", 2, 1, 2),
    "zero1-2": (2, "zero1", 1, 2, 1),
    "zero1-4": (4, "zero1", 1, 1, 1),
    "zero2-2": (2, "zero2", 1, 2, 1),
    "zero2-4": (4, "zero2", 1, 1, 1),
    "dp2xtp2-zero1": (4, "zero1", 2, 2, 1),
    "dp2xtp2-zero2": (4, "zero2", 2, 2, 1),
    "fsdp2-2": (2, "fsdp2", 1, 2, 1),
    "fsdp2-4": (4, "fsdp2", 1, 1, 1),
    "fsdp2-2-accum-2": (2, "fsdp2", 1, 1, 2),
    "dp2xtp2-fsdp2": (4, "fsdp2", 2, 2, 1),
}
# AdamW, the second optimizer, on one layout of each mode and on those whose optimizer state
# other tests read back (resume, checkpoints, compile): its moments partitioned, sharded and
# restored in each mode. The others train with SGD alone, where a gradient of the wrong scale
# shows; their AdamW model state is exact in tests/test_memory_model.py and test_zero12_contract.py.
ADAMW_LAYOUTS = ("ddp-2-accum-2", "tp-2", "zero3-2", "dp2xtp2-zero3", "zero1-2", "dp2xtp2-zero1", "zero2-2",
                 "dp2xtp2-zero2", "fsdp2-2", "dp2xtp2-fsdp2")
