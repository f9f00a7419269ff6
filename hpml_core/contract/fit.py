"""What fits on a GPU: a run's predicted memory per GPU (``hpml_core.contract.memory_model``)
against the memory of the GPU its site gives it, and the largest batch per GPU that fits.

The GPU's memory is its total as torch reports it (``total_memory``: ``hpml_core.contract.gpus``,
or the site's ``gpu_memory_gib``), and a prediction's total counts everything a rank holds on
its GPU, inside PyTorch's allocator and outside it (the memory model's "CUDA context" line), so
a run fits when its predicted total is at most the GPU's total. The comparison adds no margin of
its own: what the memory model cannot know (the allocator's fragmentation, NCCL's buffers; its
doc lists them) is not in the prediction, so a run predicted within a few hundred MiB of the
GPU's memory may still run out of it.

Torch-free and cheap: ``hpml plan`` judges every run of a study, and ``largest_batch`` calls
``predict`` (arithmetic) about 2·log2 of the answer times.
"""

from __future__ import annotations

from hpml_core.contract.config import TrainConfig
from hpml_core.contract.gpus import GpuMemory
from hpml_core.contract.layout import Layout
from hpml_core.contract.memory_model import Prediction, predict
from hpml_core.contract.models import ModelDims

# largest_batch stops doubling here: a batch per GPU beyond this is no plan (and a model whose
# prediction did not grow with the batch would otherwise never stop).
MAX_BATCH = 2**16


def fits(prediction: Prediction, gpu: GpuMemory) -> bool:
    """Whether the predicted memory of one rank fits in its GPU's (see the module's doc)."""
    if gpu.total_bytes is None:
        raise ValueError(f"no GPU to fit in: {gpu.missing_reason}")
    return prediction.total_bytes <= gpu.total_bytes


def largest_batch(config: TrainConfig, dims: ModelDims, layout: Layout, gpu: GpuMemory) -> int | None:
    """The largest batch per GPU (``batch_size``, everything else as configured) predicted to fit,
    up to ``MAX_BATCH``; None when not even a batch of 1 does.

    Memory grows with the batch, so the batches that fit are 1..b: doubling finds a batch that
    does not fit, bisection the last one that does."""
    def fits_at(batch: int) -> bool:
        return fits(predict(config.model_copy(update={"batch_size": batch}), dims, layout), gpu)

    if not fits_at(1):
        return None
    good = 1
    while good < MAX_BATCH and fits_at(min(2 * good, MAX_BATCH)):
        good = min(2 * good, MAX_BATCH)
    if good == MAX_BATCH:
        return good
    bad = 2 * good
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits_at(middle) else (good, middle)
    return good
