"""The run spec, ``<run>/run.json``: what `hpml render` and `hpml submit` write is what the engine
reads with ``--config``, field for field; flags given with it win and are recorded; a spec the
engine cannot read is one line naming --config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpml_core.contract.config import TrainConfig, parse_args, write_run_spec
from hpml_core.contract.errors import UsageError
from hpml_core.cli import main
from jobs.experiment import EXPERIMENTS, load
from tests.conftest import REPO

# Every field of TrainConfig, each away from its default: a field added to the config and not
# carried by the run spec fails here.
NON_DEFAULT = dict(
    mode="zero3", model="tiny", tp_size=2, batch_size=3, grad_accum=2, seq_len=64, steps=9, warmup_steps=2,
    vocab_size=50257, max_samples=700, precision="fp16", grad_ckpt=True, attn="eager", compile=True, optimizer="sgd", lr=0.01,
    weight_decay=0.0, grad_clip=0.5, seed=7, data=Path("/data/wikitext-2"), out=Path("/results/x/run"),
    run_id="run-7", checkpoint_every=3, keep_checkpoints=3, checkpoint_dir=Path("/ckpt/run"), resume=True, save_model=True,
    zero_stage=3, zero_persistence_threshold=0, dist_backend="gloo", test=True, profile_steps=5,
    fsdp_reshard_after_forward=False, fp8=True,
)


def test_every_field_round_trips_through_run_json(tmp_path):
    assert set(NON_DEFAULT) == set(TrainConfig.model_fields)
    config = TrainConfig(**NON_DEFAULT)
    defaults = TrainConfig(data=Path("/data/wikitext-2"))
    assert [name for name in NON_DEFAULT if name != "data" and getattr(config, name) == getattr(defaults, name)] == []
    path = tmp_path / "run.json"
    write_run_spec(path, config)
    parsed, source = parse_args(["--config", str(path)])
    assert parsed == config
    assert (source.file, source.overrides) == (str(path), [])


def test_flags_next_to_config_override_it_and_are_recorded(tmp_path):
    path = tmp_path / "run.json"
    write_run_spec(path, TrainConfig(mode="ddp", batch_size=8, data=Path("/data/d")))
    parsed, source = parse_args(["--config", str(path), "--batch-size", "4", "--grad-ckpt", "--mode", "hybrid"])
    assert (parsed.batch_size, parsed.grad_ckpt, parsed.mode, parsed.data) == (4, True, "zero3", Path("/data/d"))
    assert sorted(source.overrides) == ["--batch-size", "--grad-ckpt", "--mode"]
    plain, source = parse_args(["--data", "/data/d"])
    assert source.file is None and source.overrides == []


@pytest.mark.parametrize("text,says", [
    ("{not json", "JSONDecodeError"),
    (json.dumps({"run_spec_version": 99, "config": {"data": "/d"}}), "run_spec_version is 99, expected 1"),
    (json.dumps({"run_spec_version": 1, "config": {"data": "/d", "batch_size": 0}}), "batch_size: "),
    (json.dumps({"run_spec_version": 1, "config": {"data": "/d", "batchsize": 8}}), "batchsize: "),
    (json.dumps([1, 2]), "AttributeError"),
])
def test_an_unreadable_run_spec_is_one_line_naming_config(tmp_path, text, says):
    path = tmp_path / "run.json"
    path.write_text(text)
    with pytest.raises(UsageError) as caught:
        parse_args(["--config", str(path)])
    assert caught.value.field == "--config"
    assert str(caught.value).startswith(f"--config: {path} is not a readable run spec (") and says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_engine_refuses_a_corrupt_run_spec_with_one_line_and_status_2(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "hpml_core.train", "--config", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--config" in lines[0] and str(path) in lines[0]


def test_the_run_json_hpml_render_writes_is_the_experiments_config(tmp_path, monkeypatch):
    """Each run's spec parses back to the experiment's fields plus what the site says: its data
    folder, the run folder as the job sees it, and resume (a requeued job continues)."""
    monkeypatch.setenv("USER", "alice")
    assert main(["render", "seed_study", "--site", "greene", "--results", str(tmp_path)]) == 0
    exp = load(EXPERIMENTS / "seed_study.yaml")
    for run in exp.runs:
        parsed, source = parse_args(["--config", str(tmp_path / "seed_study" / run.name / "run.json")])
        assert parsed == TrainConfig(**run.train, data=Path("/scratch/alice/hpml/data/wikitext-103"),
                                     out=Path(f"/scratch/alice/hpml/results/seed_study/{run.name}"), resume=True)
        assert source.overrides == []
    modes = {run.name: parse_args(["--config", str(tmp_path / "seed_study" / run.name / "run.json")])[0].mode
             for run in exp.runs}
    assert modes == {run.name: run.mode for run in exp.runs}
    assert set(modes.values()) == {"single", "ddp", "zero3"}
