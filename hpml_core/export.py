"""``--save-model``: the trained weights gathered whole, whatever the layout, as a plain GPT
state dict in ``<out>/model.pt``. It is how a TP or ZeRO-3 run's result is compared with a
single process's, and how a trained model leaves the cluster."""

from __future__ import annotations

from pathlib import Path

import torch

from hpml_core import tensor_parallel
from hpml_core.mesh import Mesh
from hpml_core.contract.atomic import atomic_write

MODEL_FILE = "model.pt"


def save_full_model(stepper, mesh: Mesh, out: Path, rank: int) -> Path:
    """Collective: every rank calls it; global rank 0 writes."""
    with stepper.gathered():  # ZeRO-3 partitions gathered whole for the duration
        model = stepper.model
        state = tensor_parallel.full_state_dict(model, mesh) if mesh.tp_size > 1 else model.state_dict()
        state = {name: tensor.detach().float().cpu().clone() for name, tensor in state.items()}
    path = out / MODEL_FILE
    if rank == 0:
        atomic_write(path, lambda f: torch.save(state, f))
    return path
