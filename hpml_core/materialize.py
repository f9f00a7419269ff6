"""Give a model built on the meta device its initial weights, each rank only its own part.

Building the whole model on every rank and then sharding it would make every rank hold the
whole fp32 model once, however many ranks share it afterwards: the setup, not the training,
would decide the largest model a layout can train. Instead:

1. ``hpml_core.train`` builds the plain GPT on the meta device (shapes, no memory), and
   tensor parallelism replaces its layers by their shards, still on the meta device;
2. ``materialize`` then goes through the model one part at a time (the embeddings, each block,
   the last LayerNorm) and, for each parameter, draws its whole initial value
   (``hpml_core.model.initial_value``: seeded by the run's seed and the parameter's name, so
   every rank draws the same tensor alone), keeps this rank's tensor-parallel shard of it (the
   layer's ``shard``), copies that to the device and drops the whole value;
3. under ZeRO-3, each part is handed to DeepSpeed's partitioner as soon as it is filled
   (``hpml_core.zero.partitioner``), so a rank keeps only its partition of it.

So a rank holds at most its share of the model plus one whole parameter (the token embedding,
the largest) or one part, and every layout starts from exactly the weights one process gets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn as nn

from hpml_core.model import initial_value


def parameter_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """The whole shape of each parameter of the plain model, by name; taken before tensor
    parallelism replaces the layers by shards, whose ``shard`` then cuts the whole value."""
    return {name: param.shape for name, param in model.named_parameters()}


def parts(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The model's top-level parts, blocks one by one: the units filled (and partitioned) at once."""
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            yield from ((f"{name}.{i}", block) for i, block in enumerate(child))
        else:
            yield name, child


def _give_data(param: nn.Parameter, value: torch.Tensor) -> None:
    """Turn a meta parameter into one holding ``value``, in place: the same object, so a tied
    parameter stays tied and marks set on it (``tensor_model_parallel``) stay with it."""
    marks = dict(param.__dict__)
    torch.utils.swap_tensors(param, nn.Parameter(value, requires_grad=param.requires_grad))
    param.__dict__.update(marks)


def fill(part: nn.Module, prefix: str, shapes: dict[str, torch.Size], n_layer: int, seed: int,
         device: torch.device, dtype: torch.dtype) -> None:
    """Give every parameter of ``part`` still on the meta device (a tied one is filled once, where
    it first appears) this rank's part of its initial value, on ``device`` in ``dtype``."""
    for owner_name, owner in part.named_modules(prefix=prefix):
        for leaf, param in owner.named_parameters(recurse=False):
            if not param.is_meta:
                continue
            name = f"{owner_name}.{leaf}"
            whole = initial_value(name, shapes[name], n_layer, seed)
            local = owner.shard(leaf, whole) if hasattr(owner, "shard") else whole
            _give_data(param, local.to(device=device, dtype=dtype))
            del whole, local  # before the next parameter is drawn


def materialize(model: nn.Module, shapes: dict[str, torch.Size], n_layer: int, seed: int, device: torch.device,
                dtype: torch.dtype, then: Callable[[nn.Module], None] | None = None) -> None:
    """Fill the meta ``model`` part by part, calling ``then`` on each part once it is filled."""
    for prefix, part in parts(model):
        fill(part, prefix, shapes, n_layer, seed, device, dtype)
        if then is not None:
            then(part)
