"""Site profiles as a cluster's users need them: `--set KEY=VALUE` on every command, validated as
the profile's own fields; the user's own profiles beside the shipped ones (`hpml sites`); extra
#SBATCH options; data prepared where the site's jobs look; results that never cross sites."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jobs import ledger
from tests.conftest import REPO, WIKITEXT, snapshot


def hpml(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpml_core.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "USER": "alice", **(env or {})}, timeout=300)


def test_set_overrides_fields_for_one_command_and_extra_sbatch_options_are_written(tmp_path):
    done = hpml("render", "seed_study", "--site", "greene", "--set", "account=pr_123", "--set",
                'sbatch_extra=["--constraint=a100_80"]', "--set", "exclusive=true", "--set",
                "container.image=/images/x.sif", "--results", str(tmp_path))
    assert done.returncode == 0, done.stderr
    script = (tmp_path / "seed_study" / "single-r0" / "job.sbatch").read_text()
    lines = script.splitlines()
    assert "#SBATCH --account=pr_123" in lines and "#SBATCH --constraint=a100_80" in lines
    assert "#SBATCH --exclusive" in lines and " /images/x.sif " in script
    # sbatch reads #SBATCH lines only before the first command: the extra ones are among them
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert lines.index("#SBATCH --exclusive") < first_command
    plain = hpml("render", "seed_study", "--site", "greene", "--results", str(tmp_path / "plain"))
    assert plain.returncode == 0 and "--exclusive" not in (tmp_path / "plain" / "seed_study" / "single-r0" /
                                                           "job.sbatch").read_text()


@pytest.mark.parametrize("item,says", [
    ("partition=a b", "--set: partition: 'a b' must be letters, digits"),
    ("sbatch_extra=[\"--time=9:00:00\"]", "--set: sbatch_extra: '--time=9:00:00': hpml sets --time itself"),
    ("sbatch_extra=[\"--exclusive\"]", "'--exclusive': hpml sets --exclusive itself (from the profile's exclusive: true)"),
    ("max_concurrent=0", "--set: max_concurrent: Input should be greater than or equal to 1"),
    ("sbatch_extra=[\"--comment=x;touch /tmp/pwned\"]", "--set: sbatch_extra: '--comment=x;touch /tmp/pwned' must be a "
                                                         "plain --name or --name=value"),
    ("sbatch_extra=[\"--comment=a\\nb\"]", "must be a plain --name or --name=value"),
    ('name="x\\necho pwned"', "--set: name: 'x\\necho pwned' must be letters, digits"),  # YAML's \n: a newline
    ("acount=pr_1", "--set: acount: Extra inputs are not permitted"),
    ("container.imag=/x", "--set: container.imag: Extra inputs are not permitted"),
    ("account", "--set: 'account': expected KEY=VALUE"),
    ("cpus_per_gpu=[1", "--set: cpus_per_gpu: '[1' is not a YAML value"),
])
def test_a_bad_override_exits_2_naming_the_key_and_writes_nothing(tmp_path, item, says):
    before = snapshot(tmp_path)
    done = hpml("render", "seed_study", "--site", "greene", "--set", item, "--results", str(tmp_path))
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and says in done.stderr, done.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args,says", [
    (["--max-concurrent", "0"], "argument --max-concurrent: must be a whole number from 1 (got '0')"),
    (["--max-concurrent", "two"], "argument --max-concurrent: must be a whole number from 1 (got 'two')"),
    (["--site", "local", "--max-concurrent", "2"], "--max-concurrent: local runs one run at a time on this machine"),
])
def test_a_bad_max_concurrent_exits_2_and_runs_nothing(tmp_path, args, says):
    results = REPO / "results" / "tiny_study"
    before = snapshot(results) if results.exists() else None
    done = hpml("submit", "tiny_study", *args)
    assert done.returncode == 2 and says in done.stderr.strip().splitlines()[-1], done.stderr  # after argparse's usage
    assert (snapshot(results) if results.exists() else None) == before


def test_user_profiles_add_to_and_shadow_the_shipped_ones(tmp_path):
    mine = tmp_path / "sites"
    mine.mkdir()
    greene = (REPO / "jobs" / "sites" / "greene.yaml").read_text().replace("pr_000_general", "pr_alice")
    (mine / "greene.yaml").write_text(greene)
    (mine / "greene-h100.yaml").write_text(greene.replace("name: greene", "name: greene-h100")
                                           .replace("gpu_model: a100-40gb", "gpu_model: h100-sxm"))
    env = {"HPML_SITES": str(mine)}
    listed = hpml("sites", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split("│")[1].strip(): line for line in listed.stdout.splitlines() if line.startswith("│")}
    assert "user, shadows the shipped" in rows["greene"] and "user" in rows["greene-h100"]
    assert "shipped" in rows["local"]
    done = hpml("render", "seed_study", "--site", "greene", "--results", str(tmp_path / "r"), env=env)
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --account=pr_alice" in (tmp_path / "r" / "seed_study" / "single-r0" / "job.sbatch").read_text()
    plan = hpml("plan", "seed_study", "--site", "greene-h100", env=env)
    assert plan.returncode == 0 and "fits H100 SXM" in plan.stdout, plan.stderr
    missing = hpml("plan", "seed_study", "--site", "nowhere", env=env)
    assert missing.returncode == 2 and f"yours go in {mine}" in missing.stderr


def test_data_is_prepared_where_the_sites_jobs_look(tmp_path):
    done = hpml("data", "prepare", "--files", str(WIKITEXT / "valid.txt"), "--tokenizer", "train", "--vocab-size",
                "300", "--site", "local", "--set", f"data_root={tmp_path / 'data'}", "--dataset", "wt2")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "data" / "wt2" / "meta.json").read_text())["vocab_size"] == 300
    refused = hpml("data", "prepare", "--files", str(WIKITEXT / "valid.txt"), "--site", "local",
                   "--out", str(tmp_path / "other"))
    assert refused.returncode == 2 and "--dataset" in refused.stderr and not (tmp_path / "other").exists()


def test_results_never_cross_sites(tmp_path):
    folder = tmp_path / "tiny_study"
    ledger.check_site(folder, "local-slurm", record=True)  # the first submission names the site
    ledger.check_site(folder, "local-slurm", record=True)
    assert json.loads((folder / "ledger.json").read_text()) == {"site": "local-slurm", "runs": {}}
    with ledger.locked(folder) as runs:  # entries written later keep it
        runs["single"] = {"submissions": 1}
    assert json.loads((folder / "ledger.json").read_text())["site"] == "local-slurm"
    before = snapshot(tmp_path)
    done = hpml("submit", "tiny_study", "--site", "local", "--set", f"results_root={tmp_path}", "--dry-run")
    assert done.returncode == 2 and snapshot(tmp_path) == before
    assert done.stderr.strip() == (f"hpml submit: error: --site: {folder} holds runs submitted to site local-slurm, "
                                   "not local: results never cross sites; use --site local-slurm, or give this site "
                                   "its own results_root (--set results_root=...)")


def test_doctor_checks_a_site_line_by_line_and_its_smoke_run_completes(tmp_path, token_data):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "wikitext-2").symlink_to(token_data)  # this session's prepared WikiText-2
    done = hpml("doctor", "--site", "local", "--set", f"results_root={tmp_path / 'results'}", "--set",
                f"data_root={tmp_path / 'data'}", "--smoke")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {line.split(":")[0].split()[-1]: line.split()[0] for line in done.stdout.splitlines()
             if line[:4] in ("ok  ", "skip", "warn", "FAIL")}
    assert lines == {"slurm": "skip", "container": "skip", "python": "ok", "data": "ok", "results": "ok",
                     "smoke": "ok"}
    smoke = next((tmp_path / "results").glob("hpml-doctor-*/smoke/attempts/1/rank-0.json"))
    assert json.loads(smoke.read_text())["status"] == "COMPLETED"


def test_doctor_fails_on_the_broken_check_with_the_fix_and_skips_the_smoke_run(tmp_path):
    done = hpml("doctor", "--site", "local", "--set", "container.kind=apptainer", "--set", "container.image=/nope.sif",
                "--set", f"data_root={tmp_path / 'empty'}", "--set", f"results_root={tmp_path / 'results'}", "--smoke")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    container = next(line for line in lines if line.split()[1] == "container:")
    assert container.startswith("FAIL") and ("not on PATH" in container or "/nope.sif" in container)
    assert next(line for line in lines if line.split()[1] == "data:").startswith(
        f"FAIL data: nothing prepared under {tmp_path / 'empty'}: `hpml data prepare ... --site local --dataset NAME`")
    assert lines[-1] == "skip smoke: fix the failures above first"
    assert not list((tmp_path / "results").glob("hpml-doctor-*"))
