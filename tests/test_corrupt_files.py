"""Files a run left that are not what they should be (a status.json cut to `{}`, a ledger whose
runs are not a table) never make `hpml status` or `hpml report` answer with a traceback: a
status file that is not one counts as none; a ledger, or a run's kept trace, that is not one is
one line, exit 2."""

from __future__ import annotations

import gzip
import subprocess
import sys

import pytest
import yaml

from hpml_core.contract.config import write_run_spec
from jobs.local_backend import free_log
from tests.conftest import REPO


def hpml(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpml_core.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def site(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"name": "copy", "scheduler": "local", "project_dir": str(tmp_path),
                                    "results_root": str(tmp_path / "results"), "data_root": str(tmp_path / "data")}))
    return path


@pytest.mark.parametrize("text", ["{}", "[1]", '{"state": "RUNNING"}', "not json"])
def test_a_status_file_that_is_not_one_counts_as_none(tmp_path, site, text):
    run = tmp_path / "results" / "tiny_study" / "single-r0"
    run.mkdir(parents=True)
    (run / "status.json").write_text(text)
    for command in ("status", "report"):
        proc = hpml(command, "tiny_study", "--site", str(site))
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("text", ['{"runs": []}', '{"runs": {"single-r0": "x"}}', "{", '{"other": 1}'])
def test_a_ledger_that_is_not_one_is_one_line(tmp_path, site, text):
    folder = tmp_path / "results" / "tiny_study"
    folder.mkdir(parents=True)
    (folder / "ledger.json").write_text(text)
    for command in ("status", "report"):
        proc = hpml(command, "tiny_study", "--site", str(site))
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "unreadable ledger" in proc.stderr and "ledger.json" in proc.stderr


def test_a_local_log_is_never_overwritten(tmp_path):
    (tmp_path / "local-1.out").write_text("an earlier submission whose engine stopped before its attempt")
    assert free_log(tmp_path, 1) == tmp_path / "local-2.out"
    assert free_log(tmp_path, 3) == tmp_path / "local-3.out"


def test_test_defaults_cannot_be_mixed_into_a_run_spec(tmp_path):
    from hpml_core.contract.config import TrainConfig

    spec = tmp_path / "run.json"
    write_run_spec(spec, TrainConfig(data=tmp_path))
    proc = subprocess.run([sys.executable, "-m", "hpml_core.train", "--config", str(spec), "--test"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "hpml train: error: --test: cannot be combined with --config: the run spec already holds every setting"]


@pytest.mark.parametrize("payload", [b"not gzip", gzip.compress(b"{not json"), gzip.compress(b"[1, 2]"),
                                     gzip.compress(b'{"traceEvents": {"a": 1}}'),
                                     gzip.compress(b'{"traceEvents": [{"ph": "X", "name": "hpml.step", "ts": "x"}, 5]}')])
def test_a_trace_that_is_not_one_is_one_line(tmp_path, payload):
    """``python -m hpml_core.bench.step_profile`` on a run whose kept trace is damaged."""
    from analysis.sample_rank_files import write_run

    write_run(tmp_path, "r", mode="single", world=1, tp=1, batch=8, parts_ms={"forward": 1.0})
    (tmp_path / "r" / "attempts" / "1" / "trace-rank-0.json.gz").write_bytes(payload)
    proc = subprocess.run([sys.executable, "-m", "hpml_core.bench.step_profile", str(tmp_path / "r"), "--out",
                           str(tmp_path / "profile")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "profile").exists()
