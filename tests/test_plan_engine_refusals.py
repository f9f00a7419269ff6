"""`hpml plan` refuses what the engine refuses, in the same words: each bad configuration goes
through the engine's own launch check (``hpml_core.plan.make_plan``, in process, as rank 0 of
the launch the run asks for) and through ``jobs.experiment.load`` (an experiment file whose
dataset is this session's prepared WikiText-2, with its real 512-token vocabulary), and both
must name the same field (``--tp-size`` is ``tp_size``) with the identical message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpml_core.launch import ProcessEnv
from hpml_core.contract.config import field_of
from hpml_core.contract.errors import UsageError
from hpml_core.plan import make_plan
from jobs import experiment, plan

BASE = {"model": "tiny", "seq_len": 64, "steps": 10, "warmup_steps": 2}
JOB = ("nodes", "gpus")


def case(name: str, fields: dict, field: str, says: str, **marks):
    """A bad run: its fields (nodes and gpus included), the field refused, and what the message says."""
    return pytest.param(fields, field, says, id=name, **marks)


CASES = [
    case("tp-not-dividing-world", {"mode": "ddp", "tp_size": 3, "gpus": 4}, "tp_size", "world size 4"),
    case("tp-spanning-nodes", {"mode": "ddp", "tp_size": 4, "nodes": 2, "gpus": 2}, "tp_size", "span nodes"),
    case("tp-not-dividing-heads", {"mode": "ddp", "tp_size": 8, "gpus": 8}, "tp_size", "4 attention heads of tiny"),
    # gpt2-xl's 25 heads take TP 5; the data's 512 tokens (padded: 512) do not. GPT-2's vocabulary
    # (50304 padded) would not either, but only the real data gives this message.
    case("tp-not-dividing-real-vocab", {"model": "gpt2-xl", "mode": "zero3", "tp_size": 5, "gpus": 5}, "tp_size",
         "padded vocabulary of 512"),
    case("seq-len-above-positions", {"seq_len": 512}, "seq_len", "256 positions of tiny"),
    case("vocab-below-the-data's", {"vocab_size": 300}, "vocab_size", "smaller than the 512 tokens"),
    case("single-on-two-ranks", {"mode": "single", "gpus": 2}, "mode", "2 were launched"),
    case("zero-stage-with-ddp", {"mode": "ddp", "zero_stage": 3, "gpus": 2}, "zero_stage", "--mode zero1, zero2 or zero3"),
    case("steps-not-above-warmup", {"steps": 2, "warmup_steps": 2}, "steps", "no timed step"),
    case("max-samples-too-small", {"batch_size": 8, "max_samples": 16}, "max_samples", "2 steps of 8"),
    case("global-batch-above-data", {"mode": "ddp", "batch_size": 100_000, "gpus": 2}, "batch_size",
         "global batch 200000 exceeds"),
    # no --steps: one epoch of the 8,304 samples of 64 tokens at a global batch of 4,000 is 2 steps
    case("epoch-not-above-warmup", {"steps": None, "batch_size": 4000}, "warmup_steps", "is 2 steps of 4000"),
    case("unknown-model", {"model": "gpt5"}, "model", "gpt5"),
    case("batch-size-zero", {"batch_size": 0}, "batch_size", "greater than or equal to 1"),
    case("fp8-in-fp32", {"fp8": True, "precision": "fp32"}, "fp8", "needs --precision bf16"),
    case("fp8-under-zero3", {"fp8": True, "mode": "zero3", "gpus": 2}, "fp8", "DeepSpeed's"),
    case("fp8-with-tp", {"fp8": True, "mode": "ddp", "tp_size": 2, "gpus": 2}, "fp8", "--tp-size 1"),
]


def engine_refusal(fields: dict, data: Path) -> tuple[str, str]:
    """(field, message) of the engine's refusal, launched as rank 0 of nodes x gpus ranks."""
    argv = ["--data", str(data)]
    for name, value in fields.items():
        if name not in JOB and value is not None:  # None: the flag is not given
            argv += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    gpus, nodes = fields.get("gpus", 1), fields.get("nodes", 1)
    env = ProcessEnv(rank=0, local_rank=0, world_size=nodes * gpus, master_addr="127.0.0.1", master_port=29500,
                     launcher="torchrun", local_world_size=gpus)
    with pytest.raises(UsageError) as caught:
        make_plan(argv, env)
    return field_of(caught.value.field), str(caught.value).removeprefix(f"{caught.value.field}: ")


def plan_refusal(tmp_path: Path, fields: dict, data: Path, data_root: Path) -> tuple[str, str]:
    """(field, message) of ``hpml plan``'s refusal of the same run, in an experiment file."""
    path = tmp_path / "exp.yaml"
    path.write_text(f"name: refused\ndataset: {data.name}\ndefaults: {json.dumps(BASE)}\n"
                    f"runs: [{json.dumps({'name': 'x', **fields})}]\n")
    with pytest.raises(experiment.ExperimentError) as caught:
        experiment.load(path, data_root=data_root)
    where = "run 'x': "
    assert caught.value.field.startswith(where)
    return caught.value.field.removeprefix(where), str(caught.value).removeprefix(f"{caught.value.field}: ")


@pytest.mark.parametrize("fields,field,says", CASES)
def test_plan_and_engine_refuse_alike(tmp_path, token_data, fields, field, says):
    run = {**BASE, **fields}
    engine = engine_refusal(run, token_data)
    plan = plan_refusal(tmp_path, fields, token_data, data_root=token_data.parent)
    assert plan == engine
    assert plan[0] == field and says in plan[1], plan


def test_without_prepared_data_the_plan_validates_with_gpt2s_vocabulary_and_says_so(tmp_path, token_data):
    """No data under the data_root: the runs are still validated (layout, positions, steps), the
    vocabulary is GPT-2's (so a TP that divides it passes), and the plan says it was assumed."""
    path = tmp_path / "exp.yaml"
    path.write_text(f"name: assumed\ndataset: {token_data.name}\ndefaults: {json.dumps(BASE)}\n"
                    "runs: [{name: xl, model: gpt2-xl, mode: zero3, tp_size: 5, gpus: 5, max_samples: 5000}]\n")
    with pytest.raises(experiment.ExperimentError, match=r"^run 'xl': tp_size: 5 does not divide the padded "
                                                         r"vocabulary of 50304$"):
        experiment.load(path, data_root=tmp_path / "nothing-here")
    path.write_text(path.read_text().replace("model: gpt2-xl, mode: zero3, tp_size: 5, gpus: 5",
                                             "model: tiny, mode: zero3, tp_size: 2, gpus: 4"))
    exp = experiment.load(path, data_root=tmp_path / "nothing-here")
    assert exp.data is None and exp.data_folder == tmp_path / "nothing-here" / token_data.name
    assert (exp.runs[0].dp_size, exp.runs[0].global_batch, exp.runs[0].steps) == (2, 16, 10)
    assert plan.data_line(exp) == (f"data: not prepared at {exp.data_folder}: vocabulary assumed GPT-2's 50257, "
                                  "data size not checked")
    with_data = experiment.load(path, data_root=token_data.parent)
    assert with_data.data is not None and with_data.data.vocab_size == 512
    assert plan.data_line(with_data).endswith("(checked: vocabulary, size)")


def test_vocab_size_widens_the_model_beyond_the_data(token_data):
    """GPT-2's vocabulary over data tokenized with 512 tokens: the model is built 50,304 wide."""
    env = ProcessEnv(rank=0, local_rank=0, world_size=1, master_addr="127.0.0.1", master_port=29500,
                     launcher="none", local_world_size=1)
    assert make_plan(["--test", "--data", str(token_data), "--vocab-size", "50257"], env).dims.vocab_size == 50304
    assert make_plan(["--test", "--data", str(token_data)], env).dims.vocab_size == 512
