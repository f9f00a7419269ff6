"""``hpml submit``: submit every run of an experiment that has not completed, and keep the ledger.

What is submitted follows each run's state (``jobs.observe``, in the words of
``hpml_core.contract.run_states``), decided just before: an active run (SUBMITTING, PENDING,
RUNNING) is never submitted again, not even with ``--force``; by default every run that is not
COMPLETED is; ``--only-failed`` narrows to the runs that ENDED_BADLY; ``--force`` takes every run
that is not active and starts it afresh: everything in its folder (attempts, checkpoints,
status, spec, logs) is first moved into ``<run>/previous-<n>/``, so nothing is resumed and
nothing is lost. ``--dry-run`` only says what would happen. Each run is claimed in the ledger
under its lock before it is started, so two ``hpml submit`` calls at once never start the same
run (``jobs.submission``).

A run predicted not to fit in the memory of the site's GPU (``hpml_core.contract.fit``) is
refused before anything is written or submitted, dry run or not: every chosen run is checked,
and the refusal names the first with its predicted and available GiB, and the others, so that
one round of fixes covers them all. ``--no-fit-check`` submits them all the same (a prediction
can be wrong; a run that does run out of memory ends OUT_OF_MEMORY).

These steps are the same on every site; how the chosen runs then start is the site's backend's
(``jobs.backend``): job arrays on a Slurm site (``jobs.slurm_backend``), processes on this
machine with ``--site local`` (``jobs.local_backend``).
"""

from __future__ import annotations

import argparse

from hpml_core.contract import fit, run_states
from hpml_core.contract.data_meta import DataMeta
from hpml_core.contract.errors import UsageError
from hpml_core.contract.memory_model import predict
from hpml_core.contract.run_states import ACTIVE, COMPLETED, ENDED_BADLY
from hpml_core.contract.units import GIB
from jobs import backend, cli, ledger, observe
from jobs.experiment import Experiment, ExperimentError, Run
from jobs.site import Site
from jobs.submission import Submission


def select(experiment: Experiment, states: dict[str, observe.RunState], only_failed: bool,
           force: bool) -> list[Run]:
    chosen = []
    for run in experiment.runs:
        state = states[run.name].state
        if state in ACTIVE:
            continue
        if force or (state in ENDED_BADLY if only_failed else state != COMPLETED):
            chosen.append(run)
    return chosen


def check_fit(experiment: Experiment, site: Site, runs: list[Run]) -> None:
    """Refuse (``ExperimentError``, naming the first run, its predicted GiB and the GPU's, and
    how many more) when a run is predicted not to fit on the site's GPU; say so when the site
    names no GPU to judge against."""
    gpu = site.gpu_memory()
    if gpu.total_bytes is None:
        if runs:
            print(f"memory fit not checked: {gpu.missing_reason}")
        return
    too_big = []
    for run in runs:
        resolved = experiment.resolved(run)
        prediction = predict(resolved.config, resolved.dims, resolved.layout)
        if not fit.fits(prediction, gpu):
            too_big.append((run, prediction.total_bytes))
    if too_big:
        (run, predicted), more = too_big[0], [other.name for other, _ in too_big[1:]]
        also = f" (so are {len(more)} more: {', '.join(more)})" if more else ""
        raise ExperimentError(f"run {run.name!r}", "memory",
                              f"predicted {predicted / GIB:.1f} GiB per GPU does not fit the {gpu.total_gib:.1f} "
                              f"GiB of site {site.name}'s {gpu.label}{also}; hpml plan --explain says why, "
                              f"--no-fit-check submits anyway")


def submit(experiment: Experiment, site: Site, only_failed: bool, force: bool, dry_run: bool,
           fit_check: bool = True, report: tuple[str, list[str]] | None = None,
           max_concurrent: int | None = None) -> int:
    """Submit (or, on a local site, run) every selected run; ``report``: the site argument and
    ``--set`` items to build the study's report with once its runs have ended (``--report``);
    ``max_concurrent``: at most that many tasks of each job array at once (else the site's
    ``max_concurrent``)."""
    runner = backend.for_site(site)
    runner.refuse(experiment, max_concurrent)
    folder = site.experiment_folder(experiment.name)
    ledger.check_site(folder, site.name, record=False)
    data = site.dataset_folder(experiment.dataset)
    if not DataMeta.exists(data):
        raise UsageError("dataset", f"{data} holds no prepared data (no meta.json): prepare it first, `hpml data "
                         f"prepare ... --site {site.name} --dataset {experiment.dataset}` (docs/cluster.md#data)")
    states, note = observe.refresh(experiment.world_sizes, folder, query=runner.query)
    if note:  # decided on a partial answer: which runs count as active may be out of date
        print(f"note: {note}")
    runs = select(experiment, states, only_failed, force)
    if fit_check:
        check_fit(experiment, site, runs)
    active = sum(found.active for found in states.values())
    print(f"{experiment.name}: {len(runs)} to run, {len(experiment.runs) - len(runs) - active} skipped"
          f"{' (completed)' if not only_failed else ' (not failed)'}, {active} pending or running"
          f"{' [dry run]' if dry_run else ''}")
    return runner.submit(Submission(experiment, site, folder, runs, states, force, dry_run, report, max_concurrent))


def build_parser() -> argparse.ArgumentParser:
    parser = cli.command_parser("submit", __doc__)
    cli.add_experiment(parser)
    cli.add_site(parser)
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--only-failed", action="store_true",
                        help=f"only runs that ended badly ({', '.join(sorted(run_states.ENDED_BADLY))})")
    choice.add_argument("--force", action="store_true",
                        help="every run not pending or running, completed or not, from step 0 (the old run "
                             "folder is kept in <run>/previous-<n>/)")
    parser.add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    parser.add_argument("--report", action="store_true",
                        help="build the report when the study's runs have ended: on Slurm a small job "
                             "that depends on theirs (afterany), here once they are done")
    parser.add_argument("--no-fit-check", dest="fit_check", action="store_false",
                        help="submit runs predicted not to fit on the site's GPU all the same")
    parser.add_argument("--max-concurrent", type=cli.positive_int, metavar="M",
                        help="at most M tasks of each job array run at once (Slurm's --array=0-N%%M; "
                             "default: the site's max_concurrent, else no limit)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        profile, exp = cli.load_study(args, checked=True)
        return submit(exp, profile, args.only_failed, args.force, args.dry_run, args.fit_check,
                      (args.site, args.overrides) if args.report else None, args.max_concurrent)

    return cli.run("submit", body)

