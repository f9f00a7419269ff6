"""The bytes one checkpoint of a run holds, from its config and the model's dimensions, so that
``hpml plan`` and ``hpml doctor`` can say whether a study's checkpoints fit the results disk
before a job finds out (``hpml_core.checkpoint`` keeps ``keep_checkpoints`` of them per run).

It counts the tensors the stepper saves (``hpml_core.stepper``, ``hpml_core.fsdp``, DeepSpeed's
files under ZeRO), from the model state each rank holds (``hpml_core.contract.model_state``, exact
to the byte) less its gradients; ``torch.save`` writes a storage whole, so a parameter that is a
view into a padded buffer (ZeRO-1/2's flat groups, FSDP2's shards) costs its padding too:

- PyTorch path (single, DDP, TP, DP×TP with all-reduce): the first data-parallel replica writes
  each TP rank's fp32 parameters and AdamW's two moments (SGD keeps none);
- ZeRO-1/2: the first replica writes the module in the weights' dtype (each TP rank's flat
  groups, padded), every rank its partitions of the fp32 master weights and moments;
- ZeRO-3: every rank its partitions of the fp32 master weights and moments (the module file of
  each rank holds only placeholders of the partitioned parameters);
- FSDP2: every rank its padded fp32 shards and the moments on them.

What the files add around the tensors (a zip entry per tensor, the pickled structure, DeepSpeed's
settings) is not counted: a few hundred bytes per tensor, under 40 kB per file for the tiny model
in ``tests/test_resume.py`` (1 to 6 % of its checkpoints), nothing next to GPT-2 Large's gigabytes."""

from __future__ import annotations

from hpml_core.contract.config import TrainConfig
from hpml_core.contract.layout import Layout
from hpml_core.contract.model_state import rank_model_state
from hpml_core.contract.models import ModelDims


def checkpoint_bytes(config: TrainConfig, dims: ModelDims, layout: Layout) -> int:
    """Tensor bytes of one checkpoint of the run, summed over the files every rank writes."""
    tp, dp = layout.tp_size, layout.dp_size
    if config.mode in ("zero1", "zero2", "fsdp2"):  # ranks differ in what they hold
        states = [rank_model_state(config, dims, tp, dp, r) for r in range(dp)]
        if config.mode == "fsdp2":
            return tp * sum(s.params + s.optimizer for s in states)
        return tp * (states[0].params + sum(s.optimizer for s in states))
    state = rank_model_state(config, dims, tp, dp)
    if config.mode == "zero3":
        return tp * dp * state.optimizer
    return tp * (state.params + state.optimizer)
