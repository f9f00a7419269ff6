"""``make gpu-check``: every GPU path checked and the study measured on one GPU, in one command
that fits a short lease of a GPU machine, writing everything into one folder:

1. ``environment``: the device, driver and versions;
2. ``data``: WikiText-2 from ``--shared`` tokenized for the benchmarks;
3. ``bench``: ``make bench``, the original study's loop against the engine's variants, the fastest
   and the original at the study's batch repeated (the headline's spread), energy per token too;
   last, ``--fp8`` at the largest batch, a row apart (FP8 products against the fastest 16-bit run);
4. ``planner``: the step-time model calibrated on the bench's engine runs, against each
   (``jobs.bench_planner --runs``);
5. ``profile``: where the headline run's step time goes, kernel by kind, read from the trace the
   engine kept of its profiled window (``hpml_core.bench.step_profile``: no device time);
6. ``tests``: the tests marked ``gpu`` (``tests/test_gpu.py``), each one's outcome, several at
   a time; ``tests-alone``: then those that fill the GPU's memory (``fills_the_gpu``), alone;
7. ``memory``: ``make bench-memory``, the four layouts' per-rank training peak (four ranks
   sharing the GPU) beside the memory model's prediction and the original study's figures;
8. ``peak``: what the single layout's step holds at its peak, by kind of tensor, beside the memory
   model's lines (``hpml_core.bench.peak_memory``).

Each section runs in its own process with its own time limit, and the summary
(``gpu-check.json`` and ``gpu-check.md``) is rewritten after each, so a section that fails or
runs out of time costs only itself, and what ran before it is kept. A section that the
``--budget-s`` leaves no time for is recorded as not run, never guessed.

Without a GPU it runs in a reduced form (the tiny model on short sequences; the gpu tests are
collected and skipped), which ``tests/test_bench.py`` runs in ``make test``.

    python -m hpml_core.bench.gpu_check --out results/gpu-check            # on a GPU
    python -m hpml_core.bench.gpu_check --reduced --out /tmp/gpu-check     # anywhere
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from hpml_core.bench import source
from hpml_core.bench.__main__ import headline_lines, nvidia_driver, precision_label
from hpml_core.bench.peak_memory import lines as peak_lines
from hpml_core.contract.atomic import atomic_write, atomic_write_json
from hpml_core.contract.run_states import COMPLETED
from hpml_core.contract.units import GIB

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Scale:
    """The sizes one form of the check runs at."""

    model: str
    seq_len: int
    steps: int
    warmup_steps: int
    vocab_size: int  # the tokenizer trained on WikiText-2 (it stops short of GPT-2's 50257 there)
    model_vocab_size: int  # the model's: GPT-2's, so the LM head and the loss are the study's
    original_batches: tuple[int, ...]  # the first is the study's, the others its loop at a larger batch
    original_precision: str
    engine_variants: tuple[str, ...]
    repeats: int  # of the original loop at the study's batch and of the fastest engine variant
    memory_batch: int
    memory_args: str


FULL = Scale(
    model="gpt2-large", seq_len=1024, steps=20, warmup_steps=8, vocab_size=50257, model_vocab_size=50257,
    original_batches=(8, 32), original_precision="fp16",
    engine_variants=("--precision bf16 --compile --batch-size 8",
                     "--precision bf16 --compile --batch-size 16",
                     "--precision bf16 --compile --batch-size 32",
                     "--precision bf16 --compile --fp8 --batch-size 32"),  # last: a row apart
    repeats=3,
    memory_batch=8, memory_args="--precision bf16 --grad-ckpt",
)
REDUCED = Scale(
    model="tiny", seq_len=64, steps=6, warmup_steps=2, vocab_size=512, model_vocab_size=512,
    original_batches=(4, 2), original_precision="fp32",
    engine_variants=("--precision fp32 --batch-size 4", "--precision bf16 --fp8 --batch-size 4"),
    repeats=2,
    memory_batch=4, memory_args="--precision fp32 --zero-persistence-threshold 0",
)
# In the order they run: the benchmark's figures first, as the ones a short lease must not lose.
SECTIONS = ("environment", "data", "bench", "planner", "profile", "tests", "tests-alone", "memory", "peak")
# Each section's own limit in seconds (full form); the reduced form's are the same.
TIME_LIMITS = {"data": 60, "bench": 360, "planner": 60, "profile": 60, "tests": 240, "tests-alone": 90, "memory": 300,
               "peak": 120}
# The least time left for which a section is started: what it took on the H200 (RESULTS.md,
# "Device time": tests 78 s, memory 151 s), so that a section which cannot finish is left to a
# second call (--only) instead of being cut off with nothing written. The bench writes
# bench.json after each run, so even a bench cut short keeps what it measured.
MIN_SECONDS = {"data": 20, "bench": 60, "planner": 20, "profile": 10, "tests": 90, "tests-alone": 25, "memory": 150,
               "peak": 40}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hpml_core.bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/gpu-check"))
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("HPML_SHARED", REPO.parent / "shared")),
                        help="the folder holding data/wikitext-2/{valid,test}.txt (default ../shared)")
    parser.add_argument("--reduced", action="store_true", default=not torch.cuda.is_available(),
                        help="the tiny model on short sequences (the default without a GPU)")
    parser.add_argument("--only", type=lambda text: text.split(","), default=list(SECTIONS),
                        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--budget-s", type=float, default=540, help="the whole check's time limit (default 540)")
    parser.add_argument("--engine-args", action="append",
                        help="an engine variant for the bench section, instead of the form's (repeatable)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown section {', '.join(unknown)} (allowed: {', '.join(SECTIONS)})")
    return args


class Check:
    """The check's folder and its summary, rewritten after every section. A second call into the
    same folder (``--only`` what the first could not run) keeps the first's other sections in the
    summary, each marked with the call it came from."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.scale = args, REDUCED if args.reduced else FULL
        self.out: Path = args.out
        self.started = time.monotonic()
        self.summary: dict = {"date": datetime.now(timezone.utc).isoformat(), "source": source.describe(),
                              "form": "reduced" if args.reduced else "full", "budget_s": args.budget_s,
                              "scale": self.scale.__dict__, "sections": self.earlier_sections()}

    def earlier_sections(self) -> list[dict]:
        try:
            earlier = json.loads((self.out / "gpu-check.json").read_text())
            return [{**section, "earlier_call": section.get("earlier_call", earlier["date"])}
                    for section in earlier["sections"] if section["name"] not in self.args.only]
        except (OSError, ValueError, KeyError, TypeError):  # none, or not a summary: started afresh
            return []

    @property
    def data(self) -> Path:
        return self.out / "data"

    def left_s(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.started)

    def record(self, section: dict) -> None:
        self.summary["sections"].append(section)
        self.summary["elapsed_s"] = time.monotonic() - self.started
        atomic_write_json(self.out / "gpu-check.json", self.summary)
        text = markdown(self.summary)
        atomic_write(self.out / "gpu-check.md", lambda f: f.write(text.encode()))

    def run(self, name: str, command: list[str], results=None, env: dict | None = None) -> None:
        """Run one section's command with its limit; ``results`` reads what it wrote."""
        limit = min(TIME_LIMITS[name], self.left_s())
        section = {"name": name, "command": shlex.join(command)}
        needs = MIN_SECONDS[name] if not self.args.reduced else 20
        if limit < needs:
            self.record({**section, "status": "not run", "why": f"the check's {self.args.budget_s:.0f} s budget "
                                                                f"left {max(limit, 0):.0f} s, under the {needs} s it "
                                                                f"needs (a second call with --only {name} runs it)"})
            return
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"[gpu-check] {name} (limit {limit:.0f} s): {shlex.join(command)}", flush=True)
        started = time.monotonic()
        with log.open("wb") as sink:
            process = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                       start_new_session=True)
            try:
                code = process.wait(timeout=limit)
                status = "passed" if code == 0 else f"failed (exit status {code})"
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)  # the section's whole process group: its ranks too
                process.wait()
                status = f"timed out after {limit:.0f} s"
        section.update(status=status, seconds=round(time.monotonic() - started, 1), log=str(log.relative_to(self.out)))
        if results is not None:
            try:
                section["results"] = results()
            except (OSError, ValueError, KeyError) as exc:  # a section cut short wrote nothing to read
                section["results_missing"] = f"{type(exc).__name__}: {exc}"
        if status != "passed":
            section["log_tail"] = log.read_text(errors="replace")[-3000:]
        print(f"[gpu-check] {name}: {status} in {section['seconds']} s", flush=True)
        self.record(section)


def environment() -> dict:
    cuda = torch.cuda.is_available()
    props = torch.cuda.get_device_properties(0) if cuda else None

    def version(package: str) -> str | None:
        from importlib.metadata import PackageNotFoundError, version as installed

        try:
            return installed(package)
        except PackageNotFoundError:
            return None

    return {
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "gpus": torch.cuda.device_count(),
        "gpu_memory_gib": props.total_memory / GIB if props else None,
        "multiprocessors": props.multi_processor_count if props else None,
        "driver": nvidia_driver(),
        "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        **{name: version(name) for name in ("deepspeed", "transformers", "pydantic", "triton")},
    }


def test_outcomes(junit: Path) -> list[dict]:
    """Each test's outcome from pytest's JUnit XML, with the first line of why where it did not pass."""
    outcomes = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, why = "passed", None
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                why = (element.get("message") or element.text or "").strip().splitlines()[0][:300]
                break
        outcomes.append({"test": case.get("name"), "outcome": outcome, "why": why,
                         "seconds": float(case.get("time", 0))})
    return outcomes


def headline_run(bench: Path) -> Path | str:
    """The folder of the headline variant's first run (the one with a profiled window), or why there is none."""
    try:
        summary = json.loads((bench / "bench.json").read_text())
        best = summary["headline"]["best_engine"]["engine_args"]
        name = next(run["run"] for run in summary["engines"] if run["engine_args"] == best and run["repeat"] == 0)
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as exc:
        return f"no headline run in {bench / 'bench.json'} to read a trace from ({type(exc).__name__}: {exc})"
    return bench / name


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    check, scale = Check(args), (REDUCED if args.reduced else FULL)
    python, data = sys.executable, check.data
    check.out.mkdir(parents=True, exist_ok=True)
    if "environment" in args.only:
        check.record({"name": "environment", "status": "passed", "results": environment()})
    if "data" in args.only:
        texts = [args.shared / "data" / "wikitext-2" / name for name in ("valid.txt", "test.txt")]
        check.run("data", [python, "-m", "hpml_core.data", "prepare", "--files",
                           *[str(t) for t in (texts[:1] if args.reduced else texts)], "--tokenizer", "train",
                           "--vocab-size", str(scale.vocab_size), "--out", str(data)],
                  results=lambda: json.loads((data / "meta.json").read_text()))
    common = ["--model", scale.model, "--seq-len", str(scale.seq_len), "--data", str(data)]
    if "bench" in args.only:
        variants = [arg for variant in args.engine_args or scale.engine_variants for arg in ("--engine-args", variant)]
        check.run("bench", [python, "-m", "hpml_core.bench", *common, "--steps", str(scale.steps), "--warmup-steps",
                            str(scale.warmup_steps), "--vocab-size", str(scale.model_vocab_size),
                            *[arg for batch in scale.original_batches for arg in ("--original-batch", str(batch))],
                            "--original-precision", scale.original_precision, "--repeats", str(scale.repeats),
                            *variants, "--out", str(check.out / "bench")],
                  results=lambda: json.loads((check.out / "bench" / "bench.json").read_text()))
    if "planner" in args.only:
        # each variant's first run, the profiled one (its repeats are engine-<i>-r<k>)
        folders = sorted(str(folder) for folder in (check.out / "bench").glob("engine-*")
                         if re.fullmatch(r"engine-\d+", folder.name))
        check.run("planner", [python, "-m", "jobs.bench_planner", "--runs", *folders,
                              "--json", str(check.out / "planner.json")],
                  results=lambda: json.loads((check.out / "planner.json").read_text()))
    if "profile" in args.only:  # the headline run's own profiled window, from the trace it kept
        run = headline_run(check.out / "bench")
        if isinstance(run, str):
            check.record({"name": "profile", "status": "not run", "why": run})
        else:
            check.run("profile", [python, "-m", "hpml_core.bench.step_profile", str(run), "--out",
                                  str(check.out / "profile")],
                      results=lambda: json.loads((check.out / "profile" / "profile.json").read_text()))
    # pytest-xdist, where installed (the GPU machines' image has it), runs the tiny runs side by
    # side; a test that fills the GPU's memory runs after them, alone (its lock, in test_gpu.py,
    # would otherwise keep one worker waiting for a moment when no other test runs).
    for name, marks, parallel in (("tests", "gpu and not fills_the_gpu", importlib.util.find_spec("xdist")),
                                  ("tests-alone", "gpu and fills_the_gpu", False)):
        if name in args.only:
            junit = check.out / f"{name}.xml"
            check.run(name, [python, "-m", "pytest", "-q", "-m", marks, "-p", "no:cacheprovider",
                             *(["-n", "4"] if parallel else []), str(REPO / "tests" / "test_gpu.py"),
                             f"--junitxml={junit}"],
                      results=lambda junit=junit: test_outcomes(junit), env={"HPML_SHARED": str(args.shared.resolve())})
    if "memory" in args.only:
        # One step after the warm-up (whose first update allocates the optimizer's state) holds the
        # training peak; where the step goes comes from the profiled window after it.
        check.run("memory", [python, "-m", "hpml_core.bench.memory", *common, "--steps", "2", "--warmup-steps", "1",
                             "--batch-size", str(scale.memory_batch),
                             "--engine-args", f"--vocab-size {scale.model_vocab_size} {scale.memory_args}",
                             "--out", str(check.out / "memory")],
                  results=lambda: json.loads((check.out / "memory" / "memory.json").read_text()))
    if "peak" in args.only:  # the memory section's single run, its peak taken apart
        check.run("peak", [python, "-m", "hpml_core.bench.peak_memory", "--out", str(check.out / "peak"), "--",
                           *common, "--vocab-size", str(scale.model_vocab_size), "--batch-size",
                           str(scale.memory_batch), *shlex.split(scale.memory_args)],
                  results=lambda: json.loads((check.out / "peak" / "peak-rank0.json").read_text()))
    failed = [s["name"] for s in check.summary["sections"] if s["status"] != "passed" and "earlier_call" not in s]
    print(f"[gpu-check] {'all sections passed' if not failed else 'not passed: ' + ', '.join(failed)}; "
          f"{check.out / 'gpu-check.md'}", flush=True)
    return 1 if failed else 0


# --- the Markdown summary -------------------------------------------------------------------

def _gib(value: int | None) -> str:
    return f"{value / GIB:.3g}" if value is not None else "n/a"


def _seconds(row: dict) -> str:
    return f"{row['process_s']:.0f}" if "process_s" in row else "n/a"  # not in files before it was kept


def _bench_lines(bench: dict) -> list[str]:
    lines = [f"On {bench['device']} (driver {bench['driver']}); tokens/s from the median step time after warm-up; "
             "MFU by the PaLM formula against the dense peak of hpml_core/contract/gpus.py (FP8's for the FP8 row); "
             "energy from NVML's counter over the timed steps; process s: the run's whole process (start-up, "
             "compilation, warm-up, timed steps, profiled window).", "",
             *[f"- {line}" for line in headline_lines(bench["headline"])], "",
             "| variant | run | batch | precision | tokens/s | TFLOP/s | MFU | mJ/token | peak memory (GiB) "
             "| × original | process s |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for result in (*bench["originals"], *bench["engines"]):
        run = result["repeat"] + 1
        seconds = _seconds(result)
        if result.get("status", COMPLETED) != COMPLETED:
            lines.append(f"| {result['variant']} | {run} | {result['batch_size']} | | {result['status']}: "
                         f"{result['error'][:120]} | | | | | | {seconds} |")
            continue
        mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a"
        joules = f"{result['joules_per_token'] * 1e3:.3g}" if result.get("joules_per_token") is not None else "n/a"
        ratio = result.get("tokens_per_s_ratio_over_original")
        lines.append(f"| {result['variant']} | {run} | {result['settings']['batch_size']} "
                     f"| {precision_label(result)} | {result['tokens_per_s']:,.0f} "
                     f"| {result['achieved_tflops_per_s']:.3g} | {mfu} | {joules} "
                     f"| {_gib(result['peak_memory_bytes'])} ({result['memory_metric']}) "
                     f"| {'' if ratio is None else f'{ratio:.2f}'} | {seconds} |")
    return lines


def _profile_lines(profile: dict) -> list[str]:
    idle = profile["idle_share_of_wall"]
    lines = [f"The headline run ({profile['run_id']}: batch {profile['batch_size']}, {profile['precision']}"
             f"{', compiled' if profile['compile'] else ''}), its {profile['profiled_steps']} profiled steps: "
             f"{profile['measured']}; per step: wall {profile['wall_s_per_step'] * 1e3:.1f} ms, busy "
             f"{profile['busy_s_per_step'] * 1e3:.1f} ms" + (f", device idle at least {idle:.0%}" if idle is not None
                                                          else ""), "", "| kind of work | ms/step | share |",
             "| --- | ---: | ---: |"]
    lines += [f"| {kind} | {s * 1e3:.2f} | {s / profile['busy_s_per_step']:.1%} |"
              for kind, s in profile["by_kind_s_per_step"].items()]
    return lines


def _planner_lines(planner: dict) -> list[str]:
    lines = [f"{planner['title']} (target: within {planner['target_pct']:.0f} % of each measured step).", "",
             "| run | measured (ms) | assumed rates (ms) | error | calibrated (ms) | error |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value * 1e3:.1f}"

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.1f} %"

    return lines + [f"| {row['run']} | {ms(row['measured_s'])} | {ms(row['assumed_s'])} | "
                    f"{pct(row['assumed_error_pct'])} | {ms(row['calibrated_s'])} | {pct(row['calibrated_error_pct'])} |"
                    for row in planner["runs"]]


def _memory_lines(memory: dict) -> list[str]:
    lines = [f"{memory['model']}, batch {memory['batch_size']}, sequence {memory['seq_len']}; the worst rank of "
             "each layout; process s: the layout's whole launch, start-up included.", "",
             "| layout | ranks | training peak (GiB) | predicted (GiB) | model state (GiB) "
             "| predicted (GiB) | original study (GB) | process s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in memory["layouts"]:
        reported = row["original_study_gb"]
        if row.get("status", COMPLETED) != COMPLETED:  # a row of a file from before rows had one: completed
            predicted = max((p for p in row["predicted_peak_bytes_per_rank"] if p), default=None)
            lines.append(f"| {row['layout']} | {row['ranks']} | {row['status']}: {row['error'][:100]} "
                         f"| {_gib(predicted)} | | | {reported if reported is not None else '-'} | {_seconds(row)} |")
            continue
        worst = max(range(row["ranks"]), key=lambda rank: row["peak_bytes_per_rank"][rank])
        lines.append(f"| {row['layout']} | {row['ranks']} | {_gib(row['peak_bytes_per_rank'][worst])} "
                     f"({row['memory_metric']}) | {_gib(row['predicted_peak_bytes_per_rank'][worst])} "
                     f"| {_gib(row['model_state_bytes_per_rank'][worst])} "
                     f"| {_gib(row['predicted_model_state_bytes_per_rank'][worst])} "
                     f"| {reported if reported is not None else '-'} | {_seconds(row)} |")
    return lines + ["", *_parts_lines(memory)]


def _parts_lines(memory: dict) -> list[str]:
    """Where each layout's step goes (rank 0's median profiled step; ranks sharing one GPU talk over gloo)."""
    shared = [row["layout"] for row in memory["layouts"] if row.get("ranks_share_one_gpu")]
    lines = ["Where the step goes, rank 0's median profiled step (ms; docs/time-parts.md)"
             + (f". {', '.join(shared)}: the ranks shared one GPU and talked over gloo, through host memory, so "
                "their communication parts are not what a node's NVLink would give" if shared else "") + ":", "",
             "| layout | step | parts | collectives (count × bytes) |", "| --- | ---: | --- | --- |"]
    for row in memory["layouts"]:
        parts = (row.get("parts_ms_per_rank") or [None])[0]
        if parts is None:
            why = row.get("profile_missing_reason") or row.get("status", "not profiled")
            lines.append(f"| {row['layout']} | n/a | {why} | |")
            continue
        shown = ", ".join(f"{part} {ms:.1f}" for part, ms in parts.items() if ms >= 0.05)
        moved = ", ".join(f"{c['kind']} {c['count']} × {c['bytes']:,} B" for c in row["collectives"]) or "none"
        lines.append(f"| {row['layout']} | {sum(parts.values()):.1f} | {shown} | {moved} |")
    return lines


def markdown(summary: dict) -> str:
    lines = [f"# gpu-check ({summary['form']} form), {summary['date']}", "",
             f"Code: {source.line(summary['source'])}.", "",
             "| section | status | seconds |", "| --- | --- | ---: |"]
    lines += [f"| {s['name']} | {s['status']}{': ' + s['why'] if 'why' in s else ''}"
              f"{' (in the call of ' + s['earlier_call'] + ')' if 'earlier_call' in s else ''} | {s.get('seconds', '')} |"
              for s in summary["sections"]]
    for section in summary["sections"]:
        results = section.get("results")
        lines += ["", f"## {section['name']}", ""]
        if "command" in section:
            lines += [f"`{section['command']}`", ""]
        if section["name"] == "environment":
            lines += [f"- {key}: {value}" for key, value in results.items()]
        elif section["name"] in ("tests", "tests-alone") and results:
            counts: dict[str, int] = {}
            for test in results:
                counts[test["outcome"]] = counts.get(test["outcome"], 0) + 1
            lines += [", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())), "",
                      "| test | outcome | seconds | why |", "| --- | --- | ---: | --- |"]
            lines += [f"| {t['test']} | {t['outcome']} | {t['seconds']:.1f} | {t['why'] or ''} |" for t in results]
        elif section["name"] == "bench" and results:
            lines += _bench_lines(results)
        elif section["name"] == "profile" and results:
            lines += _profile_lines(results)
        elif section["name"] == "planner" and results:
            lines += _planner_lines(results)
        elif section["name"] == "peak" and results:
            lines += ["```", *peak_lines(results), "```"]
        elif section["name"] == "memory" and results:
            lines += _memory_lines(results)
        if "results_missing" in section:
            lines += [f"No results: {section['results_missing']}"]
        if "log_tail" in section:
            lines += ["", "```", section["log_tail"][-1500:], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
