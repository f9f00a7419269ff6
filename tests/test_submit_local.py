"""`hpml submit --site local`: a study run on this machine, idempotent, with a ledger; --force
from step 0; an out-of-memory rank and a rank killed with SIGKILL, each decided from the rank
files and shown alike by the ledger, `hpml status` and `hpml report`."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hpml_core.cli import main
from hpml_core.contract.errors import UsageError
from tests.conftest import REPO, rank_files


@pytest.fixture
def study(tmp_path, token_data):
    """Two runs of the tiny model (one process; DDP on two) on the prepared WikiText-2 tokens."""
    exp = tmp_path / "mini.yaml"
    exp.write_text(textwrap.dedent(f"""
        name: mini
        dataset: {token_data.name}
        defaults: {{model: tiny, seq_len: 64, steps: 4, warmup_steps: 1, precision: fp32, profile_steps: 0}}
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
    assert all(entry["submissions"] == 1 for entry in ledger(folder).values())

    # A run whose rank file is gone is no longer COMPLETED; made to fail (its checkpoint is
    # corrupt, and job commands --resume): FAILED, in the words of its exit, and --only-failed
    # runs it, alone, once the cause is gone, into its next attempt folder.
    (folder / "single" / "attempts" / "1" / "rank-0.json").unlink()
    (folder / "single" / "checkpoints" / "step-00000001").mkdir(parents=True)
    (folder / "single" / "checkpoints" / "step-00000001" / "manifest.json").write_text("{not json")
    assert main(["submit", str(exp), "--site", str(site)]) == 1
    entry = ledger(folder)["single"]
    assert (entry["state"], entry["why"], entry["exit_code"]) == ("FAILED", "exit status 2", 2)
    capsys.readouterr()
    shutil.rmtree(folder / "single" / "checkpoints")
    assert main(["submit", str(exp), "--site", str(site), "--only-failed"]) == 0
    assert "1 to run, 1 skipped" in capsys.readouterr().out
    runs = ledger(folder)
    assert (runs["single"]["state"], runs["single"]["submissions"], runs["ddp-2"]["submissions"]) == ("COMPLETED", 3, 1)
    assert sorted(rank_files(folder / "single", attempt=2)) == [0] and runs["single"]["first_attempt"] == 2


def test_where_no_rank_server_can_start_each_run_starts_its_own_processes_and_says_so(study, tmp_path,
                                                                                      monkeypatch, capsys):
    """The runs are forked from a warm process (jobs/rank_servers.py) whose socket lives in a
    temporary folder; where none can be made, every run still runs, started afresh, as said."""
    import tempfile

    exp, site, folder = study
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    assert main(["submit", str(exp), "--site", str(site)]) == 0
    out = capsys.readouterr().out
    assert out.count("(started afresh: hpml's rank server did not start: [Errno 2] No such file") == 2, out
    assert {entry["state"] for entry in ledger(folder).values()} == {"COMPLETED"}
    assert sorted(rank_files(folder / "ddp-2")) == [0, 1]


def test_dry_run_runs_nothing(study, capsys):
    exp, site, folder = study
    assert main(["submit", str(exp), "--site", str(site), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would run single" in out and "hpml_core.local_ranks 2 -m hpml_core.train" in out
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
    assert sorted(entries) == sorted(runs) and all(e["submissions"] == 1 for e in entries.values())


def test_a_ledger_of_the_old_version_counts_its_submissions_on(tmp_path, capsys):
    """A ledger written before the count of submissions had its name calls it ``attempts``: it is
    read as ``submissions``, the next claim counts on from it, and a count that is not one makes
    it an unreadable ledger (a usage error naming the file), not a traceback."""
    from jobs import ledger as ledger_module

    (tmp_path / "ledger.json").write_text(json.dumps({"runs": {"single": {"state": "FAILED", "attempts": 2}}}))
    assert ledger_module.read(tmp_path)["single"]["submissions"] == 2
    assert ledger_module.claim(tmp_path, "single", lambda entry: False, state="RUNNING") == 3
    assert ledger(tmp_path)["single"]["submissions"] == 3 and "attempts" not in ledger(tmp_path)["single"]
    (tmp_path / "ledger.json").write_text(json.dumps({"runs": {"single": {"attempts": "two"}}}))
    with pytest.raises(UsageError, match="unreadable ledger .*submissions is not a count"):
        ledger_module.read(tmp_path)


def one_run(tmp_path, token_data, run: str, **defaults):
    """A study of one run (a flow-style YAML mapping) on the prepared tokens, and its site."""
    settings = {"model": "tiny", "seq_len": 64, "steps": 4, "warmup_steps": 1, "precision": "fp32", "profile_steps": 0,
                **defaults}
    exp = tmp_path / "one.yaml"
    exp.write_text(f"name: one\ndataset: {token_data.name}\ndefaults: {json.dumps(settings)}\nruns:\n  - {run}\n")
    site = tmp_path / "site.yaml"
    site.write_text(f"name: here\nscheduler: local\nproject_dir: .\nresults_root: {tmp_path / 'results'}\n"
                    f"data_root: {token_data.parent}\n")
    return exp, site, tmp_path / "results" / "one"


def report_of(exp, site, folder) -> tuple[dict, dict, str]:
    """hpml report's runs.csv and summary.csv rows (by run, by configuration) and summary.md."""
    import pandas as pd

    from analysis.report import main as report

    assert report([str(exp), "--site", str(site)]) == 0
    runs = pd.read_csv(folder / "report" / "runs.csv").set_index("run").to_dict("index")
    summary = pd.read_csv(folder / "report" / "summary.csv").set_index("configuration").to_dict("index")
    return runs, summary, (folder / "report" / "summary.md").read_text()


def words(text: str) -> str:
    """Text with its line breaks and runs of spaces made single spaces: a table's caption wraps."""
    return " ".join(text.split())


def test_force_starts_from_step_0_and_keeps_the_old_run_aside(tmp_path, token_data, capsys):
    """A completed run with checkpoints: --force trains it again from step 0 (a --resume would
    do nothing: its last attempt completed) and keeps everything it had in previous-1/."""
    exp, site, folder = one_run(tmp_path, token_data, "{name: ddp-2, mode: ddp, gpus: 2, batch_size: 2}",
                                checkpoint_every=2)
    run = folder / "ddp-2"
    assert main(["submit", str(exp), "--site", str(site)]) == 0
    first = rank_files(run)
    assert (run / "checkpoints" / "step-00000004" / "manifest.json").is_file()
    assert main(["submit", str(exp), "--site", str(site), "--report"]) == 0  # completed: nothing to do...
    assert "0 to run, 1 skipped" in capsys.readouterr().out
    assert "| ddp-2 |" in (folder / "report" / "summary.md").read_text()  # ...but the report, as asked

    assert main(["submit", str(exp), "--site", str(site), "--force"]) == 0
    assert f"the previous run kept in {run / 'previous-1'}" in capsys.readouterr().out
    kept = run / "previous-1"
    assert rank_files(kept, attempt=1) == first  # the old run, untouched
    assert {"attempts", "checkpoints", "status.json", "run.json", "local-1.out"} <= {p.name for p in kept.iterdir()}
    fresh = rank_files(run)
    assert [p.name for p in (run / "attempts").iterdir()] == ["1"]
    assert fresh[0]["resumed_from_step"] is None and fresh[0]["loss"]["start_step"] == 0
    assert fresh[0]["loss"]["values"][0] == first[0]["loss"]["values"][0]
    assert fresh[0]["loss"]["values"] == pytest.approx(first[0]["loss"]["values"], abs=1e-6)
    entry = ledger(folder)["ddp-2"]
    assert (entry["state"], entry["submissions"], entry["first_attempt"]) == ("COMPLETED", 2, 1)

    assert main(["submit", str(exp), "--site", str(site), "--force"]) == 0  # again: previous-2, previous-1 kept
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("previous-")) == ["previous-1", "previous-2"]
    assert rank_files(run / "previous-1", attempt=1) == first


INJECT_OOM = '''
import os

import torch

from hpml_core import model

forward, calls = model.GPT.forward, []


def out_of_memory_on_rank_1_s_third_call(self, *args, **kwargs):
    # Asked at the call: the ranks are forked from the launcher after this file ran in it.
    if os.environ.get("RANK") == "1":
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
    return forward(self, *args, **kwargs)


model.GPT.forward = out_of_memory_on_rank_1_s_third_call
'''


def test_a_local_out_of_memory_is_out_of_memory_in_ledger_status_and_report(tmp_path, token_data, monkeypatch,
                                                                           capsys):
    """Rank 1 of 2 runs out of memory at its third step: the engine exits 3, the launcher passes
    it on, and the run is OUT_OF_MEMORY everywhere, from the rank files (as on Slurm, where a
    multi-node job's torchrun turns 3 into 1)."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(INJECT_OOM)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")])))
    exp, site, folder = one_run(tmp_path, token_data, "{name: ddp-2, mode: ddp, gpus: 2, batch_size: 2}", steps=6)
    assert main(["submit", str(exp), "--site", str(site)]) == 1
    entry = ledger(folder)["ddp-2"]
    assert (entry["state"], entry["exit_code"]) == ("OUT_OF_MEMORY", 3)
    assert entry["why"].startswith("rank 1: out of memory at batch size 2 per rank: OutOfMemoryError: CUDA out of")
    files = rank_files(folder / "ddp-2")
    assert files[1]["status"] == "OUT_OF_MEMORY" and files[1]["steps_completed"] == 2
    capsys.readouterr()

    assert main(["status", str(exp), "--site", str(site)]) == 0
    out = words(capsys.readouterr().out)
    assert "│ ddp-2 │ local │ OUT_OF_MEMORY │" in out
    assert f"ddp-2: OUT_OF_MEMORY: {entry['why']}" in out

    runs, summary, markdown = report_of(exp, site, folder)
    assert (runs["ddp-2"]["status"], runs["ddp-2"]["reason"]) == ("OUT_OF_MEMORY", entry["why"])
    assert summary["ddp-2"]["status"] == "OUT_OF_MEMORY"
    assert f"ddp-2: ddp-2: OUT_OF_MEMORY ({entry['why']})" in markdown


def processes() -> dict[int, tuple[bytes, int]]:
    """Every process's command line and parent, by pid, read from /proc."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            found[int(proc.name)] = ((proc / "cmdline").read_bytes(),
                                     int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]))
        except (OSError, IndexError, ValueError):  # not a process, or gone meanwhile
            continue
    return found


def running_ranks(submitter: subprocess.Popen) -> tuple[bytes | None, dict[int, int]]:
    """The command line of the rank server ``hpml submit`` started, and the ranks forked from it
    for the run in progress, pid by rank. A forked process keeps its server's command line: the
    server's child is the run's launcher, whose children are its ranks, forked in rank order."""
    table = processes()
    server = next((pid for pid, (argv, parent) in table.items()
                   if parent == submitter.pid and b"hpml_core.rank_server\0serve" in argv), None)
    if server is None:
        return None, {}
    launchers = [pid for pid, (_, parent) in table.items() if parent == server]
    ranks = sorted(pid for pid, (_, parent) in table.items() if parent in launchers)
    return table[server][0], dict(enumerate(ranks))


def left_over(server_argv: bytes) -> list[int]:
    """The processes still running with the rank server's command line: it, its launchers, ranks."""
    return [pid for pid, (argv, _) in processes().items() if argv == server_argv]


def start_submit(exp, site) -> subprocess.Popen:
    """`hpml submit` of a local study, in the background, its output captured; in a process group
    of its own, as a shell starts a job in a terminal."""
    return subprocess.Popen([sys.executable, "-m", "hpml_core.cli", "submit", str(exp), "--site", str(site)],
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, process_group=0)


def ranks_in_training(submitter: subprocess.Popen, run_dir: Path, count: int) -> tuple[bytes, dict[int, int]]:
    """Wait until the run has written status.json (once every rank has joined the process group)
    and its ``count`` ranks are found, then 2 s more, into the model's building and the steps
    with their collectives; hand back ``running_ranks``."""
    deadline = time.monotonic() + 180
    while True:
        server, ranks = running_ranks(submitter)
        if (run_dir / "status.json").is_file() and sorted(ranks) == list(range(count)):
            break
        assert time.monotonic() < deadline and submitter.poll() is None, "the run did not start"
        time.sleep(0.5)
    time.sleep(2)
    return server, ranks


def test_kill_9_of_one_rank_fails_the_run_with_a_reason_and_leaves_no_process(tmp_path, token_data, capsys):
    """kill -9 of rank 2 of 4 in training: hpml submit returns within 60 s, the run is FAILED
    with the reason in the ledger, status and report, and no process of the run is left."""
    exp, site, folder = one_run(tmp_path, token_data, "{name: ddp-4, mode: ddp, gpus: 4, batch_size: 2}",
                                steps=100000, warmup_steps=1)
    submitter = start_submit(exp, site)
    try:
        server, ranks = ranks_in_training(submitter, folder / "ddp-4", 4)
        os.kill(ranks[2], signal.SIGKILL)
        killed = time.monotonic()
        out, _ = submitter.communicate(timeout=90)
        assert time.monotonic() - killed < 60, out
    finally:
        if submitter.poll() is None:
            submitter.kill()
    assert submitter.returncode == 1, out
    assert left_over(server) == []

    entry = ledger(folder)["ddp-4"]
    assert entry["state"] == "FAILED" and entry["exit_code"] != 0
    assert entry["why"].startswith("no rank file from rank(s) 2: killed before writing it"), entry["why"]
    assert sorted(rank_files(folder / "ddp-4")) == [0, 1, 3]
    capsys.readouterr()
    assert main(["status", str(exp), "--site", str(site)]) == 0
    out = words(capsys.readouterr().out)
    assert "│ ddp-4 │ local │ FAILED │" in out and f"ddp-4: FAILED: {words(entry['why'])}" in out
    runs, _, _ = report_of(exp, site, folder)
    assert (runs["ddp-4"]["status"], runs["ddp-4"]["reason"]) == ("FAILED", entry["why"])


def test_a_killed_hpml_submit_leaves_no_run_training_on_unseen(tmp_path, token_data, capsys):
    """kill -9 of hpml submit in a run: nothing is left to watch the run, and a later hpml submit
    would start it again, so the run must not train on: its ranks stop at a checkpoint (STOPPED,
    as after a SIGTERM, which the next hpml submit resumes) and no process of it is left."""
    exp, site, folder = one_run(tmp_path, token_data, "{name: ddp-2, mode: ddp, gpus: 2, batch_size: 2}",
                                steps=100000, warmup_steps=1)
    submitter = start_submit(exp, site)
    try:
        server, _ = ranks_in_training(submitter, folder / "ddp-2", 2)
    finally:
        submitter.kill()
        submitter.communicate()
    try:
        deadline = time.monotonic() + 60
        while left_over(server):
            assert time.monotonic() < deadline, f"still running: {left_over(server)}"
            time.sleep(0.5)
    finally:  # not to leave a run training through the other tests
        for pid in left_over(server):
            os.kill(pid, signal.SIGKILL)
    files = rank_files(folder / "ddp-2")
    assert {f["status"] for f in files.values()} == {"STOPPED"} and sorted(files) == [0, 1]
    assert list((folder / "ddp-2" / "checkpoints").glob("step-*/manifest.json"))
    capsys.readouterr()
    assert main(["status", str(exp), "--site", str(site)]) == 0
    out = words(capsys.readouterr().out)
    assert "│ ddp-2 │ local │ STOPPED │" in out and "ddp-2: STOPPED: rank 0: stopped by SIGTERM" in out, out


def test_ctrl_c_stops_a_local_run_at_a_checkpoint_and_starts_no_other(tmp_path, token_data):
    """SIGINT to hpml submit's process group (a terminal's Ctrl-C) reaches the run's processes,
    in sessions of their own, only as hpml submit passes it on, as SIGTERM: the engine saves a
    checkpoint and stops, the run is STOPPED (resumed by the next hpml submit), the next run is
    not started and no process is left."""
    exp, site, folder = one_run(tmp_path, token_data, "{name: ddp-2, mode: ddp, gpus: 2, batch_size: 2}",
                                steps=100000, warmup_steps=1)
    exp.write_text(exp.read_text() + "  - {name: later, mode: single, gpus: 1, batch_size: 2}\n")
    submitter = start_submit(exp, site)
    try:
        server, _ = ranks_in_training(submitter, folder / "ddp-2", 2)
        os.killpg(submitter.pid, signal.SIGINT)  # a terminal's Ctrl-C: to its whole foreground group
        out, _ = submitter.communicate(timeout=90)
    finally:
        if submitter.poll() is None:
            submitter.kill()
    assert submitter.returncode == 1 and "SIGINT: the runs after ddp-2 were not started" in out, out
    assert left_over(server) == []
    entry = ledger(folder)["ddp-2"]
    assert (entry["state"], entry["why"]) == ("STOPPED", "rank 0: stopped by SIGTERM; checkpoint saved")
    files = rank_files(folder / "ddp-2")
    assert {f["status"] for f in files.values()} == {"STOPPED"} and sorted(files) == [0, 1]
    assert list((folder / "ddp-2" / "checkpoints").glob("step-*/manifest.json"))
    assert "later" not in ledger(folder)
