"""The contract between the login node and the job: everything both sides must agree on, and
nothing that needs torch, transformers or DeepSpeed.

- ``config``: the run spec (``TrainConfig``), read from flags or from ``<run>/run.json``;
- ``models``: model presets and dimensions; ``flops``: the FLOP formula, GPU peaks and MFU;
  ``precision``: how each layout holds and computes in the run's precision (its regime);
- ``layout``: the DP × TP rank grid and every rule derived from it (groups, global batch);
- ``checks``: every refusal a run can meet before training, made the same way by ``hpml plan``
  and by the engine; ``data_meta``: what a prepared data folder says about itself;
- ``attempts``: where each attempt of a run writes (``<run>/attempts/<n>/``);
  ``rank_file`` and ``status_file``: what an attempt writes; ``run_states``: the one vocabulary
  of a run's states and the rule that decides them (ledger, Slurm, rank files);
  ``model_state``: the model-state bytes a rank should hold; ``memory_model``: its whole predicted
  memory per GPU, line by line; ``gpus``: the GPUs hpml knows; ``fit``: what fits on one;
- ``errors`` and ``atomic``: one error type for bad input, one way to write a file.

The jobs layer (``jobs/``) and the report (``analysis/``) import this package and nothing else
from ``hpml_core``; the engine (the rest of ``hpml_core``) imports it plus torch.
"""
