"""``hpml report [EXPERIMENT ...] [--site SITE]`` (``make report``): every rank file of every
attempt of an experiment's runs, validated, aggregated and written to
``results/<experiment>/report/``: summary.csv, runs.csv, loss.csv, step_times.csv, summary.md,
summary.tex, figures (PNG and SVG) and report.html. It also prints the summary table and the
paths it wrote.

The runs' states are decided as ``hpml status`` decides them (``jobs.observe``: Slurm asked,
with the same timeout, and the decisions recorded in the ledger), so a job killed hard shows as
what it is, not as running; when Slurm does not answer (or is not there: a laptop holding a copy
of the results folder), the notes say that the states are as last recorded. It can run while
jobs still run (their rows say "RUNNING; running, step k/n"). The new report replaces the old
one only once it is complete.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from analysis import aggregate, figures, html, tables
from analysis.collect import collect
from hpml_core.contract.errors import EXIT_USAGE, UsageError
from hpml_core.contract.step_time import Performance
from jobs import experiment, site

OUTPUTS = ("summary.csv", "runs.csv", "loss.csv", "step_times.csv", "summary.md", "summary.tex", "report.html")


def write_report(exp: experiment.Experiment, folder: Path, performance: Performance | None = None) -> tuple[list[Path], Table]:
    """Write ``folder/report/`` for the experiment whose results are in ``folder``;
    ``performance``: the site's stated speed, for the predicted tokens/s."""
    repeated = any(run.repeat > 0 for run in exp.runs)
    results, problems, state_note = collect(folder, exp.world_sizes, repeated)
    runs = aggregate.runs_table(results, performance)
    configs = aggregate.configurations_table(runs)
    notes = tables.notes(configs, problems, state_note, performance.describe() if performance else None)
    title = f"{exp.name}: {exp.description or exp.dataset}"
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=folder))
    try:
        configs.to_csv(staging / "summary.csv", index=False)
        runs.to_csv(staging / "runs.csv", index=False)
        aggregate.loss_table(results).to_csv(staging / "loss.csv", index=False)
        aggregate.step_times_table(results).to_csv(staging / "step_times.csv", index=False)
        (staging / "summary.md").write_text(tables.markdown(configs, notes, title))
        (staging / "summary.tex").write_text(tables.latex(configs, title))
        drawn = figures.draw_all(configs, results, staging)
        run_rows = [[r.name, r.configuration, r.status, r.reason or ""] for r in results]
        written = [*OUTPUTS, *(path.name for path in drawn)]
        (staging / "report.html").write_text(html.page(title, tables.display_rows(configs), run_rows,
                                                       notes, drawn, written))
        target = folder / "report"
        if target.exists():
            old = folder / f".report-old-{staging.name}"
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Text, not markup: reasons may hold brackets ("[/pytorch/.../pair.cc:553]").
    terminal = Table(title=Text(title), caption=Text("\n".join(notes)), caption_justify="left")
    for header in tables.HEADERS:
        terminal.add_column(header, justify="left" if header in ("Configuration", "Description", "Status") else "right")
    for row in tables.display_rows(configs):
        terminal.add_row(*map(Text, row))
    return [target / name for name in written], terminal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpml report", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                        help="experiment files or names in jobs/experiments/ (default: every one with results)")
    parser.add_argument("--site", default="local", help="the site profile whose results_root holds the results")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="change one field of the site profile for this command (as hpml plan --set)")
    args = parser.parse_args(argv)
    console = Console(width=160)
    try:
        profile = site.load(args.site, args.overrides)
        if args.experiments:
            chosen = [experiment.load(experiment.experiment_path(name), gpu=profile.gpu_memory())
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
        console.print(table)
        console.print(f"wrote {paths[0].parent}/: " + ", ".join(path.name for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
