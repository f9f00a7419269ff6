"""``hpml calibrate``: the rates it fits from profiled steps are the rates that made them.

Rank files are built from the schema (``analysis.sample_rank_files``) with a profiled step
computed from known rates by the step-time model's own arithmetic: each pass's model FLOPs at a
TFLOP/s of its own, the optimizer's bytes at a GB/s, each collective kind in flight for
count × latency + bytes sent ÷ bandwidth with a known share hidden, and fixed data and other
parts. The fit must give those rates back within 1 %, and the planner, calibrated, must then
predict exactly the step the files hold. Layouts whose all-reduces differ in size and number
(DDP's few gradient buckets, DP 2 × TP 2's many activation all-reduces) let the latency be told
from the bandwidth; a single layout cannot, which the fit must say instead of guessing.
"""

from __future__ import annotations

import statistics
import textwrap
from dataclasses import replace

import pandas as pd
import pytest
import yaml

from analysis.sample_rank_files import A100, H100, rank_file
from hpml_core.cli import main
from hpml_core.contract import collectives
from hpml_core.contract import rank_file as rf
from hpml_core.contract.calibration import Calibration
from hpml_core.contract.gpus import BY_KEY
from hpml_core.contract.layout import Layout
from hpml_core.contract.models import model_dims
from hpml_core.contract.step_parts import PARTS, CollectiveUse, ProfiledStep, StepProfile
from hpml_core.contract.step_time import Performance, compute_flops, optimizer_bytes, predict_step, ring_share
from jobs import calibrate, site

TFLOPS = {"forward": 120.0, "backward": 100.0, "recompute": 110.0}
OPTIMIZER_GB_PER_S = 900.0
LINK = {"all-reduce": (40e-6, 80.0), "all-gather": (25e-6, 120.0), "reduce-scatter": (30e-6, 110.0)}  # s, GB/s
HIDDEN = {"ddp": {"all-reduce": 0.6}, "zero3": {"all-gather": 0.5, "reduce-scatter": 0.7}}
DATA_S, OTHER_S = 0.002, 0.003
# name: mode, world, tp, batch, activation checkpointing
RUNS = {"ddp-4": ("ddp", 4, 1, 8, True), "dp2xtp2": ("ddp", 4, 2, 8, False), "single": ("single", 1, 1, 8, False),
        "zero3-4": ("zero3", 4, 1, 4, True), "dp2xtp2-zero3": ("zero3", 4, 2, 8, False),
        "zero3-1": ("zero3", 1, 1, 8, False)}
KEYS = ("bf16 autocast", "bf16 cast model")  # PyTorch's AMP and DeepSpeed's bf16 model: each fitted alone
DIMS = model_dims("gpt2-large", 50304)


def profiled_step(record: rf.RankFile, pace: float = 1.0) -> ProfiledStep:
    """One step of ``record``'s run as the known rates make it, its compute at ``pace`` times them."""
    config, layout = record.config, Layout(record.world_size, record.tp_size)
    flops = compute_flops(config, DIMS, layout)
    parts = dict.fromkeys(PARTS, 0.0) | {part: flops[part] / (pace * TFLOPS[part] * 1e12) for part in TFLOPS}
    parts |= {"optimizer": optimizer_bytes(config, DIMS, layout)[0] / (OPTIMIZER_GB_PER_S * 1e9),
              "data": DATA_S, "other": OTHER_S}
    sizes = {"dp": layout.dp_size, "tp": layout.tp_size, "world": layout.world_size}
    uses, flying, hidden_total = [], 0.0, 0.0
    per_step = collectives.per_step(config, DIMS, layout, config.backend_on(record.device_type))
    for kind, total in collectives.by_kind(per_step).items():
        count = total.count or 24  # the contract leaves some counts open; the engine counts them
        sent = sum(ring_share(c.kind, sizes[c.group]) * c.bytes for c in per_step if c.kind == kind)
        latency, gb_per_s = LINK[kind]
        in_flight = count * latency + sent / (gb_per_s * 1e9)
        hidden = HIDDEN.get(config.mode, {}).get(kind, 0.0) * in_flight
        parts[kind] = in_flight - hidden
        uses.append(CollectiveUse(kind=kind, count=count, bytes=total.bytes, in_flight_s=in_flight))
        flying, hidden_total = flying + in_flight, hidden_total + hidden
    return ProfiledStep(wall_s=sum(parts.values()), parts_s=parts, collectives=uses, comm_in_flight_s=flying,
                        comm_hidden_s=hidden_total)


def write_study(tmp_path, device_name: str = A100, precision: str = "bf16", paces: dict | None = None) -> tuple:
    """The runs' rank files under a site's results folder, the experiment file and the site;
    ``paces``: a mode's compute pace against TFLOPS (default 1)."""
    exp = tmp_path / "calib.yaml"
    runs = "\n".join(f"  - {{name: {name}, mode: {mode}, gpus: {world}, tp_size: {tp}, batch_size: {batch}, "
                     f"grad_ckpt: {str(ckpt).lower()}}}" for name, (mode, world, tp, batch, ckpt) in RUNS.items())
    exp.write_text(textwrap.dedent("""\
        name: calib
        dataset: wikitext-103
        defaults: {model: gpt2-large, seq_len: 1024, precision: PRECISION, steps: 10, time_limit: "01:00:00"}
        runs:
        """).replace("PRECISION", precision) + runs + "\n")
    profile = tmp_path / "site.yaml"
    profile.write_text(f"name: calibsite\nscheduler: local\nproject_dir: .\nresults_root: {tmp_path / 'results'}\n"
                       f"data_root: {tmp_path / 'data'}\ngpu_model: a100-80gb\n")
    for name, (mode, world, tp, batch, ckpt) in RUNS.items():
        for rank in range(world):
            record = rank_file(run=name, rank=rank, mode=mode, world=world, tp=tp, batch=batch,
                               device_name=device_name, job_id=None, precision=precision)
            record = record.model_copy(update={"config": record.config.model_copy(update={"grad_ckpt": ckpt})})
            step = profiled_step(record, (paces or {}).get(mode, 1.0))
            timed = record.throughput.model_copy(update={  # the timed steps at the profiled step's pace
                "step_times_s": [step.wall_s] * record.throughput.timed_steps, "step_time_median_s": step.wall_s,
                "step_time_mean_s": step.wall_s})
            record = record.model_copy(update={"throughput": timed, "profile": StepProfile(
                steps=[step, step], how="sample", overhead=0.0, trace_file=None, trace_bytes=None)})
            rf.write(tmp_path / "results" / "calib" / name, record)
    return exp, profile


@pytest.fixture
def user_sites(tmp_path, monkeypatch):
    folder = tmp_path / "user-sites"
    monkeypatch.setenv("HPML_SITES", str(folder))
    return folder


def test_the_fit_recovers_the_rates_that_made_the_steps(tmp_path, user_sites, capsys):
    exp, profile = write_study(tmp_path)
    assert main(["calibrate", str(exp), "--site", str(profile)]) == 0
    path = user_sites / "calibrations" / "calibsite.yaml"
    assert f"wrote {path}" in capsys.readouterr().out
    fitted = Calibration.model_validate(yaml.safe_load(path.read_text()))
    assert fitted.device_name == A100 and fitted.experiments == ["calib"]
    assert fitted.runs == sorted(f"calib/{name}" for name in RUNS)
    assert set(fitted.compute_tflops) == set(KEYS)
    for key in KEYS:
        for part, rate in TFLOPS.items():
            assert fitted.compute_tflops[key][part].value == pytest.approx(rate, rel=0.01), (key, part)
        assert fitted.optimizer_gb_per_s[key].value == pytest.approx(OPTIMIZER_GB_PER_S, rel=0.01)
        assert fitted.overhead_s[key]["data"].value == pytest.approx(DATA_S, rel=0.01)
    for kind, (latency, gb_per_s) in LINK.items():
        link = fitted.links["intra-node"][kind]
        assert link.gb_per_s == pytest.approx(gb_per_s, rel=0.01)
        assert link.latency_fitted and link.latency_s == pytest.approx(latency, rel=0.01), kind
    assert fitted.hidden_share["ddp"]["all-reduce"].value == pytest.approx(0.6, rel=0.01)
    assert fitted.hidden_share["zero3"]["reduce-scatter"].value == pytest.approx(0.7, rel=0.01)
    assert "inter-node" not in fitted.links  # every run on one node: nothing says how fast between nodes

    # The planner, calibrated, predicts the very step the files hold; without it, it does not.
    calibrated = site.load(str(profile)).performance()
    assert calibrated.calibration == fitted
    for name, (mode, world, tp, batch, ckpt) in RUNS.items():
        record = rf.read(next((tmp_path / "results" / "calib" / name).rglob("rank-0.json")))
        layout = Layout(world, tp)
        step = predict_step(record.config, DIMS, layout, world, BY_KEY["a100-80gb"], calibrated)
        assert step.step_s == pytest.approx(record.profile.steps[0].wall_s, rel=0.01), name
        assumed = predict_step(record.config, DIMS, layout, world, BY_KEY["a100-80gb"],
                               Performance(0.40, 100.0, 10.0, None, "defaults"))
        assert abs(assumed.step_s / record.profile.steps[0].wall_s - 1) > 0.05, name

    # hpml plan says which rates it used
    assert main(["plan", str(exp), "--site", str(profile)]) == 0
    assert "calibrated from 6 runs of calib" in capsys.readouterr().out

    # and the report judges the planner before and after: calibrated, exact; assumed, as computed here
    assert main(["report", str(exp), "--site", str(profile)]) == 0
    summary = pd.read_csv(tmp_path / "results" / "calib" / "report" / "summary.csv").set_index("label")
    assumed_errors = []
    for name, (mode, world, tp, batch, ckpt) in RUNS.items():
        record = rf.read(next((tmp_path / "results" / "calib" / name).rglob("rank-0.json")))
        assumed = predict_step(record.config, DIMS, Layout(world, tp), world, BY_KEY["a100-80gb"],
                               replace(calibrated, calibration=None))
        expected = 100 * (record.profile.steps[0].wall_s / assumed.step_s - 1)  # tokens/s: step time inverted
        assert summary.loc[name, "assumed_tokens_per_s_error_pct_median"] == pytest.approx(expected, rel=1e-3)
        # within 1 %: ZeRO-3's gathers, whose number the contract leaves open, carry no latency there
        assert summary.loc[name, "tokens_per_s_error_pct_median"] == pytest.approx(0, abs=1.0)
        assumed_errors.append(abs(expected))
    page = (tmp_path / "results" / "calib" / "report" / "summary.md").read_text()
    assert f"tokens/s, assumed rates {statistics.median(assumed_errors):.1f}% (6 configurations); " in page
    calibrated_error = float(page.split("tokens/s, calibrated ")[1].split("%")[0])
    assert calibrated_error < 1.0


def test_one_layout_cannot_tell_latency_from_bandwidth_and_says_so():
    """Every point in one proportion of count to bytes: the bandwidth alone, latency 0, not fitted."""
    counts, sent = [3, 3, 6], [3e6, 3e6, 6e6]
    seconds = [c * 1e-5 + s / 50e9 for c, s in zip(counts, sent)]
    link = calibrate.link_fit(counts, sent, seconds)
    assert not link.latency_fitted and link.latency_s == 0
    assert link.spread_pct == pytest.approx(0, abs=1e-6)  # the points still lie on the line it fitted


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, user_sites, capsys):
    exp, profile = write_study(tmp_path, device_name=H100)  # the site says A100
    assert main(["calibrate", str(exp), "--site", str(profile)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another site's" in err[0] and H100 in err[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    exp2, profile2 = write_study(empty)
    for run in (empty / "results" / "calib").iterdir():
        for rank in run.rglob("rank-*.json"):
            rank.write_text("{")  # unreadable: no completed run left
    assert main(["calibrate", str(exp2), "--site", str(profile2)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no completed run with a profiled window" in err[0]
    assert not (user_sites / "calibrations").exists()


def test_an_unreadable_calibration_is_refused_in_one_line(tmp_path, user_sites, capsys):
    exp, profile = write_study(tmp_path)
    path = user_sites / "calibrations" / "calibsite.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("compute_tflops: [")
    assert main(["plan", str(exp), "--site", str(profile)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "hpml calibrate" in err[0]


def test_the_profilers_measured_cost_is_taken_out_of_the_parts(tmp_path):
    """A window 25 % slower than the timed steps (its recorded overhead) gives the timed pace's rates."""
    exp, profile = write_study(tmp_path)
    loaded = site.load(str(profile))
    ranks = calibrate.completed_ranks(calibrate.experiment.load(exp, gpu=loaded.gpu_memory()), loaded)
    slowed = []
    for rank in ranks:
        steps = [s.model_copy(update={"parts_s": {p: 1.25 * t for p, t in s.parts_s.items()},
                                      "collectives": [u.model_copy(update={"in_flight_s": 1.25 * u.in_flight_s})
                                                      for u in s.collectives]})
                 for s in rank.record.profile.steps]
        record = rank.record.model_copy(update={"profile": rank.record.profile.model_copy(
            update={"steps": steps, "overhead": 0.25})})
        slowed.append(calibrate.RankSteps(rank.run, record, rank.ranks_per_node))
    fitted = calibrate.fit(slowed, "calibsite", ["calib"], "cuda", A100, "today")
    assert fitted.compute_tflops[KEYS[0]]["forward"].value == pytest.approx(TFLOPS["forward"], rel=0.01)
    assert fitted.links["intra-node"]["all-reduce"].gb_per_s == pytest.approx(LINK["all-reduce"][1], rel=0.01)


def test_in_fp32_each_training_path_gets_its_own_compute_rate(tmp_path, user_sites):
    """fp32 is one regime's computation for PyTorch's path and DeepSpeed's, yet their pace
    differs (DeepSpeed's hooks: on the demo's CPU about half); one rate for both would predict
    each wrongly. The DeepSpeed runs here compute at half the PyTorch runs' rates."""
    exp, profile = write_study(tmp_path, precision="fp32", paces={"zero3": 0.5})
    assert main(["calibrate", str(exp), "--site", str(profile)]) == 0
    fitted = Calibration.model_validate(yaml.safe_load((user_sites / "calibrations" / "calibsite.yaml").read_text()))
    assert set(fitted.compute_tflops) == {"fp32", "fp32 DeepSpeed"}
    for part, rate in TFLOPS.items():
        assert fitted.compute_tflops["fp32"][part].value == pytest.approx(rate, rel=0.01), part
        assert fitted.compute_tflops["fp32 DeepSpeed"][part].value == pytest.approx(rate / 2, rel=0.01), part
