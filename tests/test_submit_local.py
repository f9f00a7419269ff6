"""`hpml submit --site local`: a study run on this machine, idempotent, with a ledger."""

import json
import textwrap

import pytest

from jobs.cli import main
from tests.conftest import rank_files


@pytest.fixture
def study(tmp_path, token_data):
    """Two runs of the tiny model (one process; DDP on two) on the prepared WikiText-2 tokens."""
    exp = tmp_path / "mini.yaml"
    exp.write_text(textwrap.dedent(f"""
        name: mini
        dataset: {token_data.name}
        defaults: {{model: tiny, seq_len: 64, steps: 4, warmup_steps: 1, precision: fp32}}
        runs:
          - {{name: single, mode: single, gpus: 1, batch_size: 4}}
          - {{name: ddp-2, mode: ddp, gpus: 2, batch_size: 2}}
    """))
    site = tmp_path / "site.yaml"
    site.write_text(f"name: here\nscheduler: local\nproject_dir: .\nresults_root: {tmp_path / 'results'}\n"
                    f"data_root: {token_data.parent}\n")
    return exp, site, tmp_path / "results" / "mini"


def ledger(folder):
    return json.loads((folder / "ledger.json").read_text())["runs"]


def test_submit_runs_what_has_not_completed_and_only_that(study, capsys):
    exp, site, folder = study
    assert main(["submit", str(exp), "--site", str(site)]) == 0
    assert {name: entry["state"] for name, entry in ledger(folder).items()} == {"single": "COMPLETED", "ddp-2": "COMPLETED"}
    assert sorted(rank_files(folder / "ddp-2")) == [0, 1] and sorted(rank_files(folder / "single")) == [0]
    assert "results: " in capsys.readouterr().out
    # Each run trained on its run spec: the file hpml wrote is what every rank recorded, with the
    # run id the engine takes from the run folder's name.
    for run in ("single", "ddp-2"):
        spec = folder / run / "run.json"
        for record in rank_files(folder / run).values():
            assert record["config_source"] == {"file": str(spec), "overrides": []}
            assert record["config"] == {**json.loads(spec.read_text())["config"], "run_id": run}

    assert main(["status", str(exp), "--site", str(site)]) == 0
    table = capsys.readouterr().out
    assert table.count("COMPLETED") == 2 and "completed, step 4/4" in table

    assert main(["submit", str(exp), "--site", str(site)]) == 0  # again: nothing to do
    assert "0 to run, 2 skipped" in capsys.readouterr().out
    assert all(entry["attempts"] == 1 for entry in ledger(folder).values())

    # A run made to fail (its checkpoint is corrupt, and job commands --resume): FAILED, and
    # --only-failed runs it, alone, once the cause is gone.
    (folder / "single" / "rank-0.json").unlink()
    (folder / "single" / "checkpoints").mkdir()
    (folder / "single" / "checkpoints" / "latest.json").write_text("{not json")
    assert main(["submit", str(exp), "--site", str(site)]) == 1
    assert ledger(folder)["single"]["state"] == "FAILED" and ledger(folder)["single"]["exit_code"] == 2
    capsys.readouterr()
    (folder / "single" / "checkpoints" / "latest.json").unlink()
    assert main(["submit", str(exp), "--site", str(site), "--only-failed"]) == 0
    assert "1 to run, 1 skipped" in capsys.readouterr().out
    runs = ledger(folder)
    assert (runs["single"]["state"], runs["single"]["attempts"], runs["ddp-2"]["attempts"]) == ("COMPLETED", 3, 1)


def test_dry_run_runs_nothing(study, capsys):
    exp, site, folder = study
    assert main(["submit", str(exp), "--site", str(site), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would run single" in out and "--nproc_per_node=2" in out
    assert not (folder / "ledger.json").exists()


def test_missing_data_is_refused_before_anything_runs(study, tmp_path, capsys):
    exp, site, folder = study
    exp.write_text(exp.read_text().replace("dataset: wikitext-2", "dataset: not-prepared"))
    assert main(["submit", str(exp), "--site", str(site)]) == 2
    err = capsys.readouterr().err
    assert "dataset" in err and "not-prepared" in err and len(err.strip().splitlines()) == 1
    assert not folder.exists()


def _claim_many(folder, runs, results):
    from jobs import ledger

    busy = lambda entry: entry.get("state") == "RUNNING"  # noqa: E731
    results.put([ledger.claim(folder, run, busy, state="RUNNING") is not None for run in runs])


def test_concurrent_claims_never_start_a_run_twice_nor_lose_an_entry(tmp_path):
    """Four processes race to claim the same 30 runs: each run is claimed exactly once, and the
    ledger, rewritten atomically under its lock, ends with all 30 entries."""
    import multiprocessing

    runs = [f"run{i}" for i in range(30)]
    results = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_claim_many, args=(tmp_path, runs, results)) for _ in range(4)]
    for p in procs:
        p.start()
    claimed = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [sum(won) for won in zip(*claimed)] == [1] * len(runs)
    entries = ledger(tmp_path)
    assert sorted(entries) == sorted(runs) and all(e["attempts"] == 1 for e in entries.values())
