"""``hpml report [EXPERIMENT ...] [--site SITE]`` (``make report``): every rank file of every
attempt of an experiment's runs, validated, aggregated and written to
``results/<experiment>/report/``: summary.csv, runs.csv, loss.csv, step_times.csv,
time_parts.csv, collectives.csv, summary.md, summary.tex, figures (PNG and SVG) and report.html. It also prints the summary table and the
paths it wrote.

The runs' states are decided as ``hpml status`` decides them (``jobs.observe``: Slurm asked,
with the same timeout), but never recorded: the report writes nothing outside its own folder, so
it runs on a results folder it may only read (a teammate's, a copy) as long as ``report/`` can
be written. A job killed hard shows as what it is, not as running; when Slurm does not answer
(or is not there: a laptop holding a copy of the results folder), the notes say that the states
are as last recorded. It can run while jobs still run (their rows say "RUNNING; running, step
k/n"). The new report is written beside the old one, inside ``report/``, and each file replaces
its old one (atomically) only once all are written. Exit status: 0; 2 for bad input (an
unknown experiment, an unreadable ledger); 5, with one line naming the path, the bytes needed and
the bytes free, when the disk or the permissions refuse a write (``report/`` not writable, a full
disk); 1 when a file cannot be read.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from analysis import curves, figures, html, tables, time_parts
from analysis.baselines import summarize
from analysis.collect import collect
from analysis.columns import frame
from analysis.configurations import configuration_rows
from analysis.notes import notes as notes_of
from analysis.runs import run_rows
from hpml_core.contract.atomic import as_refusal, atomic_write
from hpml_core.contract.errors import EXIT_FAILED, EXIT_USAGE, EXIT_WRITE_REFUSED, UsageError, WriteRefused
from hpml_core.contract.step_time import Performance
from jobs import experiment, site

OUTPUTS = ("summary.csv", "runs.csv", "loss.csv", "step_times.csv", "time_parts.csv", "collectives.csv", "summary.md",
           "summary.tex", "report.html")


def _replace_contents(target: Path, staging: Path, names: list[str]) -> None:
    """Move the staged files into ``target``, each over its old one, and remove whatever else
    the old report held."""
    for name in names:
        os.replace(staging / name, target / name)
    for old in target.iterdir():
        if old.name not in names and old != staging:
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    staging.rmdir()


def _write_text(path: Path, text: str) -> None:
    """Through the atomic write, for its words when the disk is full (the bytes needed and free)."""
    atomic_write(path, lambda f: f.write(text.encode()))


def write_report(exp: experiment.Experiment, folder: Path,
                 performance: Performance | None = None) -> tuple[list[Path], Table]:
    """Write ``folder/report/`` for the experiment whose results are in ``folder``, and nothing
    else; ``performance``: the site's stated speed, for the predicted tokens/s."""
    repeated = any(run.repeat > 0 for run in exp.runs)
    results, problems, state_note = collect(folder, exp.world_sizes, repeated)
    runs = run_rows(results, performance)
    rows = summarize(configuration_rows(runs))
    notes = notes_of(rows, problems, state_note, performance.describe() if performance else None)
    title = f"{exp.name}: {exp.description or exp.dataset}"
    target = folder / "report"
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target))
    try:
        labels, parts = [row.label for row in rows], [row.figures.parts for row in rows]
        for name, table in (("summary.csv", frame(rows)), ("runs.csv", frame(runs)),
                            ("loss.csv", curves.loss_table(results)), ("step_times.csv", curves.step_times_table(results)),
                            ("time_parts.csv", time_parts.parts_frame(labels, parts)),
                            ("collectives.csv", time_parts.collectives_frame(labels, parts))):
            _write_text(staging / name, table.to_csv(index=False))
        _write_text(staging / "summary.md", tables.markdown(rows, notes, title))
        _write_text(staging / "summary.tex", tables.latex(rows, title))
        drawn = figures.draw_all(rows, results, staging)
        run_cells = [[r.name, r.configuration, r.status, r.reason or ""] for r in results]
        written = [*OUTPUTS, *(path.name for path in drawn)]
        _write_text(staging / "report.html", html.page(title, rows, run_cells, notes, drawn, written))
        _replace_contents(target, staging, written)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Text, not markup: reasons may hold brackets ("[/pytorch/.../pair.cc:553]").
    terminal = Table(title=Text(title), caption=Text("\n".join(notes.all)), caption_justify="left")
    for header in tables.HEADERS:
        terminal.add_column(header, justify="left" if header in ("Configuration", "Description", "Status") else "right")
    for row in tables.display_rows(rows):
        terminal.add_row(*map(Text, row))
    return [target / name for name in written], terminal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpml report", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                        help="experiment files or names in jobs/experiments/ (default: every one with results)")
    parser.add_argument("--site", default="local", help="the site profile whose results_root holds the results")
    experiment.add_repeats(parser)
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="change one field of the site profile for this command (as hpml plan --set)")
    args = parser.parse_args(argv)
    console = Console(width=160)
    try:
        profile = site.load(args.site, args.overrides)
        if args.experiments:
            chosen = [experiment.load(experiment.experiment_path(name), gpu=profile.gpu_memory(), repeats=args.repeats)
                      for name in args.experiments]
        else:
            known = [experiment.load(path, gpu=profile.gpu_memory())
                     for path in sorted(experiment.EXPERIMENTS.glob("*.yaml"))]
            chosen = [exp for exp in known if profile.experiment_folder(exp.name).is_dir()]
            if not chosen:
                raise UsageError("EXPERIMENT", f"no experiment has results under {profile.experiment_folder('')} "
                                 "yet (name one, or run `hpml submit` first)")
    except UsageError as exc:
        print(f"hpml report: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for exp in chosen:
        try:
            paths, table = write_report(exp, profile.experiment_folder(exp.name), profile.performance())
        except UsageError as exc:  # an unreadable ledger
            print(f"hpml report: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except (WriteRefused, OSError) as exc:  # a full disk, report/ not writable, a folder not readable
            refused = as_refusal(exc)
            if refused is not None:
                print(f"hpml report: error: {refused}", file=sys.stderr)
                return EXIT_WRITE_REFUSED
            print(f"hpml report: error: {exc.filename or profile.experiment_folder(exp.name)}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILED
        console.print(table)
        console.print(f"wrote {paths[0].parent}/: " + ", ".join(path.name for path in paths))
        print(f"open {(paths[0].parent / 'report.html').resolve()}")  # plain print: a path rich does not wrap
    return 0


if __name__ == "__main__":
    sys.exit(main())
