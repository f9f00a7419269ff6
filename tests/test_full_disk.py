"""A full disk said in words: a write the file system refuses for space (a checkpoint, the
ledger, the report) ends the command with one line naming the path, the bytes it needed and the
bytes free, exit status 5 (a training failure is 1), and nothing already written damaged.

The disk is a real tmpfs of a chosen size (``mount -t tmpfs``, as root): writes fail as they
would on a full scratch file system, with ENOSPC from the kernel."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from hpml_core import checkpoint
from hpml_core.cli import main
from hpml_core.contract.errors import EXIT_WRITE_REFUSED
from tests.conftest import engine, rank_files, snapshot
from tests.test_checkpoints import CASES, _args, _hpml_traceback


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of a given size (bytes) at a new folder; unmounted at the end."""
    mounted = []

    def mount(size: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "--lazy", str(point)], check=False)


def fill(disk: Path) -> None:
    """Take every free byte of ``disk``."""
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


@pytest.mark.parametrize("layout", list(CASES))
def test_a_disk_too_small_for_a_checkpoint_is_said_in_one_line(layout, small_disk, tmp_path, token_data):
    """Checkpoints on a tmpfs that holds one checkpoint and a half: the step-4 save fails on every
    rank with one line naming the file, the bytes it needed and the bytes free; the rank files say
    FAILED with that line; no step-4 folder or temporary file is left; step 2's checkpoint is whole
    (it still verifies); the launch exits 5, not a training failure's 1."""
    probe = tmp_path / "probe"
    args, nproc = _args(layout, token_data, probe)
    engine([*args, "--steps", "2", "--checkpoint-every", "2"], nproc=nproc)
    one_checkpoint = sum(p.stat().st_size for p in (probe / "checkpoints").rglob("*") if p.is_file())
    disk = small_disk(one_checkpoint * 3 // 2)

    out = tmp_path / "run"
    args, nproc = _args(layout, token_data, out)
    proc = engine([*args, "--steps", "6", "--checkpoint-every", "2", "--checkpoint-dir", str(disk)], nproc=nproc,
                  check=False)
    assert proc.returncode == EXIT_WRITE_REFUSED, proc.stderr
    refused = [line for line in proc.stderr.splitlines() if "cannot write" in line]
    assert refused and all(f"cannot write {disk}/step-00000004/" in line and "no space left on device" in line
                           and "free there)" in line and "it needs " in line for line in refused), proc.stderr
    assert not _hpml_traceback(proc.stderr)
    for record in rank_files(out).values():
        assert record["status"] == "FAILED" and record["error"].startswith(f"cannot write {disk}/step-00000004/")
        assert record["steps_completed"] == 4
    assert sorted(p.name for p in disk.iterdir()) == ["step-00000002"]
    assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]
    step2 = disk / "step-00000002"
    checkpoint._verify(step2, json.loads((step2 / "manifest.json").read_text())["files"])


def test_a_full_results_disk_is_one_line_for_the_report_and_submit(small_disk, tmp_path, token_data, capsys):
    """A study on a results disk that fills up after its first run: `hpml report` and `hpml
    submit` (of a new run) each end with one line naming the file they could not write and exit
    5; every file already there (the ledger, the run's files, the earlier report) is unchanged."""
    from analysis.report import main as report

    disk = small_disk(8 * 2**20)
    exp = tmp_path / "mini.yaml"
    runs = ["{name: single, mode: single, gpus: 1, batch_size: 4}"]
    study = "name: mini\ndataset: {data}\ndefaults: {{model: tiny, seq_len: 64, steps: 3, warmup_steps: 1, " \
            "precision: fp32, profile_steps: 0}}\nruns:\n{runs}\n"
    exp.write_text(study.format(data=token_data.name, runs="\n".join(f"  - {r}" for r in runs)))
    site = tmp_path / "site.yaml"
    site.write_text(textwrap.dedent(f"""\
        name: here
        scheduler: local
        project_dir: .
        results_root: {disk}
        data_root: {token_data.parent}
    """))
    assert main(["submit", str(exp), "--site", str(site)]) == 0
    assert report([str(exp), "--site", str(site)]) == 0
    folder = disk / "mini"
    capsys.readouterr()
    assert main(["plan", str(exp), "--site", str(site)]) == 0  # the rank files now measured, and counted
    rank_file = (folder / "single" / "attempts" / "1" / "rank-0.json").stat().st_size
    assert f"rank files and traces {rank_file:,} bytes per rank, as measured" in capsys.readouterr().out
    fill(disk)
    before = snapshot(folder)
    capsys.readouterr()

    assert report([str(exp), "--site", str(site)]) == EXIT_WRITE_REFUSED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"hpml report: error: cannot write {folder}/report/"), err
    assert "no space left on device (it needs " in err and "free there)" in err

    exp.write_text(study.format(data=token_data.name, runs="\n".join(
        f"  - {r}" for r in [*runs, "{name: again, mode: single, gpus: 1, batch_size: 2}"])))
    assert main(["submit", str(exp), "--site", str(site)]) == EXIT_WRITE_REFUSED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"hpml submit: error: cannot write {folder}/"), err
    assert "no space left on device" in err
    after = snapshot(folder)
    assert {name: after.get(name) for name in before} == before  # nothing there changed or went
    assert not [name for name in after if name.endswith(".tmp") or ".staging" in name]


def test_plan_and_doctor_warn_when_a_studys_checkpoints_would_not_fit(small_disk, tmp_path, token_data, capsys):
    """Two tiny runs checkpointing on a 1 MB results disk: keeping 2 checkpoints each (2 x 2 x
    0.6 MB) does not fit, and `hpml plan` and `hpml doctor --experiment` say so; keeping 1 on
    one run only does, and neither warns."""
    disk = small_disk(2**20)
    site = tmp_path / "site.yaml"
    site.write_text(f"name: here\nscheduler: local\nproject_dir: .\nresults_root: {disk}\n"
                    f"data_root: {token_data.parent}\n")
    exp = tmp_path / "mini.yaml"

    def study(runs: str) -> str:
        exp.write_text(f"name: mini\ndataset: {token_data.name}\ndefaults: {{model: tiny, seq_len: 64, steps: 4, warmup_steps: 1, "
                       f"precision: fp32, optimizer: sgd, checkpoint_every: 2}}\nruns:\n{runs}")
        assert main(["plan", str(exp), "--site", str(site)]) == 0
        plan_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("disk: "))
        assert main(["doctor", "--site", str(site), "--experiment", str(exp)]) == 0
        return plan_line + "\n" + capsys.readouterr().out

    said = study("  - {name: a, mode: single, gpus: 1, batch_size: 4}\n  - {name: b, mode: ddp, gpus: 2, batch_size: 2}\n")
    assert said.startswith("disk: NOT ENOUGH: checkpoints need up to 2.39 MB (runs keeping their newest: 2,"), said
    assert f"free in {disk}: keep fewer (keep_checkpoints: 1)" in said
    assert "warn disk: mini: NOT ENOUGH: " in said

    said = study("  - {name: a, mode: single, gpus: 1, batch_size: 4, keep_checkpoints: 1}\n")
    assert said.startswith("disk: checkpoints need up to 596,992 bytes") and "NOT ENOUGH" not in said, said
    assert "ok   disk: mini: checkpoints need up to 596,992 bytes" in said
