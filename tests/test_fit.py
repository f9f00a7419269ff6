"""Sites know their GPUs, and runs are judged against them: the one table of known GPUs, the
site fields that name a GPU (refused in one line when wrong), the largest batch that fits, and
``hpml submit`` refusing a run predicted not to fit before anything is written or submitted."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from hpml_core.contract import fit, gpus, memory_model
from hpml_core.contract.checks import resolve
from hpml_core.contract.config import TrainConfig
from hpml_core.contract.data_meta import DataMeta
from hpml_core.contract.gpus import GpuMemory
from hpml_core.contract.units import GIB, MIB
from jobs import site
from tests.conftest import REPO


def hpml(*args: str) -> subprocess.CompletedProcess:
    """An hpml command as a user types it ($USER set: greene's paths use it)."""
    return subprocess.run([sys.executable, "-m", "hpml_core.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "USER": os.environ.get("USER", "alice")}, timeout=120)


def write_site(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump({"name": path.stem, "scheduler": "local", "project_dir": ".",
                                    "results_root": "results", "data_root": "results/data", **fields}))
    return path


def resolved(model: str = "gpt2-large", mode: str = "single", world: int = 1, data: DataMeta | None = None,
             **fields):
    config = TrainConfig(model=model, mode=mode, data=Path("unused"), **fields)
    return resolve(config, world, world, data)


A100_40 = GpuMemory("A100 40GB", gpus.BY_KEY["a100-40gb"].memory_mib * MIB, "test")


# --- the table of known GPUs ---

@pytest.mark.parametrize("device_name,key", [
    ("NVIDIA A100-SXM4-40GB", "a100-40gb"), ("NVIDIA A100-PCIE-40GB", "a100-40gb"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb"), ("NVIDIA A100 80GB PCIe", "a100-80gb"),
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H100 NVL", "h100-nvl"),
    ("NVIDIA H200", "h200"), ("NVIDIA H200 NVL", "h200-nvl"), ("NVIDIA L40S", "l40s"), ("NVIDIA A10", "a10"),
])
def test_each_gpu_is_found_by_the_name_torch_reports(device_name, key):
    assert gpus.by_device_name(device_name).key == key


def test_the_table_holds_the_gpus_of_the_issue_with_their_memory():
    """Memory as torch reports it: a little under the data sheet's round figure, never over."""
    datasheet_gb = {"a100-40gb": 40, "a100-80gb": 80, "h100-sxm": 80, "h100-pcie": 80, "h100-nvl": 94,
                    "h200": 141, "h200-nvl": 141, "l40s": 48, "a10": 24}
    assert set(gpus.BY_KEY) == set(datasheet_gb)
    for key, gb in datasheet_gb.items():
        assert 0.9 * gb * 1e9 < gpus.BY_KEY[key].memory_mib * MIB <= gb * GIB, key
    assert gpus.by_device_name("Tesla T4") is None and gpus.by_device_name("NVIDIA A10G") is None


# --- site fields ---

def test_greene_says_a100_40gb_and_local_sites_say_why_they_judge_no_fit():
    greene = site.load("greene").gpu_memory()
    assert (greene.label, greene.total_bytes) == ("A100 40GB", 40326 * 2**20)
    for name in ("local", "local-slurm", "generic-apptainer"):
        gpu = site.load(name).gpu_memory()
        assert (gpu.total_bytes, gpu.missing_reason) == (None, f"site {name} names no GPU (gpu_model in its profile)")


def test_gpu_type_names_the_gpu_only_when_it_is_a_key_of_the_table(tmp_path):
    assert site.load(str(write_site(tmp_path / "l.yaml", gpu_type="l40s"))).gpu_memory().label == "L40S"
    ambiguous = site.load(str(write_site(tmp_path / "a.yaml", gpu_type="a100"))).gpu_memory()
    assert ambiguous.total_bytes is None
    assert "gpu_type 'a100' (Slurm's name) may be A100 40GB or A100 80GB: set gpu_model" in ambiguous.missing_reason
    unknown = site.load(str(write_site(tmp_path / "v.yaml", gpu_type="v100"))).gpu_memory()
    assert "is not in hpml's table of known GPUs" in unknown.missing_reason
    measured = site.load(str(write_site(tmp_path / "m.yaml", gpu_type="v100", gpu_memory_gib=31.7))).gpu_memory()
    assert (measured.label, measured.total_bytes) == ("v100", round(31.7 * GIB))
    override = site.load(str(write_site(tmp_path / "o.yaml", gpu_type="a100", gpu_model="a100-80gb",
                                        gpu_memory_gib=79.0))).gpu_memory()
    assert (override.label, override.total_bytes, override.source) == ("A100 80GB", 79 * GIB,
                                                                       "gpu_memory_gib in site o")


@pytest.mark.parametrize("fields,expected", [
    ({"gpu_model": "a100"}, "hpml plan: error: site bad.yaml: gpu_model: 'a100' is not a known GPU: one of "
                            "a100-40gb, a100-80gb, h100-nvl, h100-pcie, h100-sxm, h200-nvl, h200, l40s, a10 "
                            "(or leave it out and give gpu_memory_gib)"),
    ({"gpu_model": "a100-40gb", "gpu_memory_gib": 0}, "hpml plan: error: site bad.yaml: gpu_memory_gib: "
                                                      "Input should be greater than 0"),
])
def test_a_bad_gpu_field_is_one_line_naming_the_field_and_the_allowed_values(tmp_path, fields, expected):
    proc = hpml("plan", "tiny_study", "--site", str(write_site(tmp_path / "bad.yaml", **fields)))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [expected]


# --- what fits ---

@pytest.mark.parametrize("mode,world,tp", [("single", 1, 1), ("ddp", 4, 1), ("zero3", 4, 1), ("zero3", 4, 2),
                                           ("zero3", 1, 1)])
def test_largest_batch_fits_and_one_more_does_not(mode, world, tp):
    run = resolved(mode=mode, world=world, tp_size=tp, seq_len=1024, precision="bf16")
    largest = fit.largest_batch(run.config, run.dims, run.layout, A100_40)
    assert largest is not None

    def fits(batch: int) -> bool:
        config = run.config.model_copy(update={"batch_size": batch})
        return fit.fits(memory_model.predict(config, run.dims, run.layout), A100_40)

    assert all(fits(batch) for batch in range(1, largest + 1))
    assert not fits(largest + 1) and not fits(2 * largest + 1)
    bigger = GpuMemory("A100 80GB", gpus.BY_KEY["a100-80gb"].memory_mib * MIB, "test")
    assert fit.largest_batch(run.config, run.dims, run.layout, bigger) >= largest


def test_largest_batch_is_none_when_not_even_one_fits_and_costs_few_predictions(monkeypatch):
    xl = resolved(model="gpt2-xl", precision="fp32")
    a10 = GpuMemory("A10", gpus.BY_KEY["a10"].memory_mib * MIB, "test")
    assert fit.largest_batch(xl.config, xl.dims, xl.layout, a10) is None
    calls = []
    real = fit.predict
    monkeypatch.setattr(fit, "predict", lambda *args: calls.append(args) or real(*args))
    run = resolved(mode="zero3", world=4, tp_size=2)
    largest = fit.largest_batch(run.config, run.dims, run.layout, A100_40)
    assert len(calls) <= 2 * largest.bit_length() + 1  # doubling, then bisection


# --- hpml submit refuses what cannot fit ---

XL = """
    name: xl
    dataset: {dataset}
    defaults: {{model: gpt2-xl, seq_len: 1024, steps: 2, warmup_steps: 1}}
    runs: [{{name: xl-single, mode: single, gpus: 1, batch_size: 64}}, {{name: xl-small, mode: single, gpus: 1,
            batch_size: 1}}]
"""


@pytest.fixture
def xl_experiment(tmp_path, token_data) -> Path:
    path = tmp_path / "xl.yaml"
    path.write_text(textwrap.dedent(XL.format(dataset=token_data.name)))
    return path


def greene_here(tmp_path: Path, token_data: Path) -> Path:
    """Greene's profile as it is, but for its folders: results and the prepared data here."""
    profile = yaml.safe_load((site.SITES / "greene.yaml").read_text())
    profile.update(project_dir=str(tmp_path), results_root=str(tmp_path / "results"), data_root=str(token_data.parent))
    path = tmp_path / "greene.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def test_submit_refuses_a_run_predicted_not_to_fit_and_writes_nothing(tmp_path, token_data, xl_experiment):
    greene = greene_here(tmp_path, token_data)
    for dry_run in (["--dry-run"], []):
        proc = hpml("submit", str(xl_experiment), "--site", str(greene), *dry_run)
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith("hpml submit: error: run 'xl-single': memory: predicted ")
        assert " GiB per GPU does not fit the 39.4 GiB of site greene's A100 40GB; " in line
        assert not (tmp_path / "results").exists()
    predicted = float(line.split("predicted ")[1].split(" GiB")[0])
    run = resolved(model="gpt2-xl", seq_len=1024, batch_size=64, steps=2, warmup_steps=1,
                   data=DataMeta.read(token_data))
    assert predicted > 39.4
    assert f"{memory_model.predict(run.config, run.dims, run.layout).total_bytes / GIB:.1f}" == f"{predicted:.1f}"


def test_no_fit_check_lets_it_through(tmp_path, token_data, xl_experiment):
    here = write_site(tmp_path / "gpu-here.yaml", gpu_model="a100-40gb", project_dir=str(tmp_path),
                      results_root=str(tmp_path / "results"), data_root=str(token_data.parent))
    refused = hpml("submit", str(xl_experiment), "--site", str(here), "--dry-run")
    assert refused.returncode == 2 and "run 'xl-single': memory: " in refused.stderr
    proc = hpml("submit", str(xl_experiment), "--site", str(here), "--dry-run", "--no-fit-check")
    assert proc.returncode == 0, proc.stderr
    assert "would run xl-single" in proc.stdout and "would run xl-small" in proc.stdout
    assert not (tmp_path / "results").exists()


def test_submit_to_a_site_without_a_gpu_says_the_fit_was_not_checked(tmp_path, token_data, xl_experiment):
    here = write_site(tmp_path / "cpu-here.yaml", project_dir=str(tmp_path), results_root=str(tmp_path / "results"),
                      data_root=str(token_data.parent))
    proc = hpml("submit", str(xl_experiment), "--site", str(here), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == ("memory fit not checked: site cpu-here names no GPU "
                                           "(gpu_model in its profile)")
    assert "would run xl-single" in proc.stdout and not (tmp_path / "results").exists()
