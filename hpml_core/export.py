"""``--save-model``: the trained weights gathered whole, whatever the layout, as a plain GPT
state dict in ``<out>/model.pt``. It is how a TP or ZeRO-3 run's result is compared with a
single process's, and how a trained model leaves the cluster."""

from __future__ import annotations

from pathlib import Path

import torch

from hpml_core.contract.atomic import atomic_write
from hpml_core.stepper import Stepper

MODEL_FILE = "model.pt"


def save_full_model(stepper: Stepper, out: Path, rank: int) -> Path:
    """Collective: every rank calls it; global rank 0 writes."""
    state = stepper.full_state_dict()
    path = out / MODEL_FILE
    if rank == 0:
        atomic_write(path, lambda f: torch.save(state, f))
    return path
