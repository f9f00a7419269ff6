"""A Slurm site's backend: the runs go to Slurm as job arrays, one per resource shape.

The runs are grouped by resource shape, and each group is one job array (``jobs.render``: task
k trains the group's k-th run; at most ``--max-concurrent`` or the site's ``max_concurrent``
tasks at once), rendered from the template, checked by ``sbatch --test-only`` (all of them,
before any is submitted), and submitted through submitit (``jobs.slurm``): one ``sbatch`` per
shape, whatever the number of runs. A run's job is its task, ``<array job id>_<task>``, which
status, cancel, requeue and ``--only-failed`` act on alone. Submitting returns at once; ``hpml
status`` follows the jobs.

A run whose last ``sbatch`` failed or timed out (SUBMIT_FAILED, which a hung or dead ``hpml
submit`` also leaves) may have been queued all the same: before submitting it again, Slurm is
asked for this user's job of that run's name, submitted since that claim, and such a job is
adopted (recorded in the ledger) instead of submitting a second one.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from hpml_core.contract import attempts
from hpml_core.contract.atomic import atomic_write
from hpml_core.contract.run_states import PENDING, RUNNING, SUBMIT_FAILED, SUBMITTING, from_slurm
from jobs import ledger, render, slurm, slurm_query
from jobs.experiment import Experiment, Run
from jobs.site import Site
from jobs.submission import Submission, adopt, claim, job_history

REPORT_SCRIPT = "report.sbatch"  # the --report job's script, in the experiment's results folder


class SlurmBackend:
    """Job arrays through sbatch, and scancel."""

    def __init__(self, site: Site):
        self.site = site

    def refuse(self, experiment: Experiment, max_concurrent: int | None) -> None:
        slurm.require_slurm(self.site.name)

    def submit(self, submission: Submission) -> int:
        status = _submit_arrays(submission, submission.max_concurrent or self.site.max_concurrent)
        if submission.report and status == 0:
            _submit_report(submission, *submission.report)
        return status

    def cancel(self, job_ids: list[str]) -> None:
        slurm.cancel(job_ids)

    def query(self, job_ids: list[str]) -> dict[str, slurm_query.JobInfo]:
        return slurm_query.query(job_ids)


def queued_after_all(experiment: Experiment, run: Run, entry: dict) -> slurm_query.JobInfo | None:
    """The job Slurm queued for a submission whose sbatch failed or timed out: this user's newest
    job of the run's job name (its array's), submitted since that claim, that the ledger does not
    know yet; in an array, the task the run was given."""
    claimed = entry.get("claimed_at")
    since = datetime.fromisoformat(claimed) if claimed else None
    known = set(job_history(entry))
    task = entry.get("array_task")
    found = slurm_query.find_jobs(entry.get("job_name") or render.job_name(experiment.name, run.name), since=since)
    return next((job for job in found if job.job_id not in known
                 and (task is None or job.job_id.endswith(f"_{task}"))), None)


def _new_array_script(folder: Path, label: str) -> tuple[Path, int]:
    """A new, empty ``<experiment>/arrays/<shape>-<n>.sbatch`` and its n, the first number no
    earlier submission took (created with O_EXCL: two hpml submit at once never share one, nor
    the job name that n gives the array)."""
    arrays = folder / render.ARRAYS
    arrays.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        path = arrays / f"{label}-{number}.sbatch"
        try:
            path.open("x").close()
            return path, number
        except FileExistsError:
            number += 1


def _submit_arrays(submission: Submission, max_concurrent: int | None) -> int:
    experiment, site, folder, runs, states = (submission.experiment, submission.site, submission.folder,
                                              submission.runs, submission.states)
    adopted = {run.name: job for run in runs if states[run.name].state == SUBMIT_FAILED
               and (job := queued_after_all(experiment, run, states[run.name].entry)) is not None}
    groups = render.group_by_shape([run for run in runs if run.name not in adopted])
    for group in groups:  # Slurm checks every array (partition, account, GPUs, time) before any is submitted
        slurm.test_only(render.render_array(experiment, group, site, max_concurrent),
                        f"run {group[0].name!r}" + (f" (and {len(group) - 1} more of its shape)" if len(group) > 1
                                                    else ""), timeout_s=site.submit_timeout_s)
    at_once = f", at most {max_concurrent} at once" if max_concurrent else ""
    if submission.dry_run:
        for name, job in adopted.items():
            print(f"  would adopt {name}: job {job.job_id} ({job.state}), queued although its sbatch failed")
        for group in groups:
            shape = group[0]
            print(f"  would submit one array of {len(group)} run(s), {shape.nodes} node(s) x {shape.gpus} GPUs, "
                  f"{shape.time_limit}{at_once}: {', '.join(run.name for run in group)}"
                  + (" (each from step 0, its folder kept in previous-<n>/)" if submission.force else ""))
        return 0
    if runs:  # every script passed Slurm's check: from here on the folder is this site's
        ledger.check_site(folder, site.name, record=True)
    for run in runs:
        if run.name in adopted:
            _adopt(folder, run, adopted[run.name], states[run.name].entry)
    count, total = 0, sum(map(len, groups))
    for group in groups:
        ready = claim(submission, group, backend="slurm", state=SUBMITTING, why="", job_id=None)
        claimed = {one.run.name: one for one in ready}
        for run in group:
            if run.name not in claimed:
                count += 1
                print(f"[{count}/{total}] {run.name}: submitted meanwhile by another hpml submit, skipped")
        group = [one.run for one in ready]
        if not group:
            continue
        label = render.shape_label(group[0])
        script, number = _new_array_script(folder, label)
        text = render.render_array(experiment, group, site, max_concurrent, number)
        atomic_write(script, lambda f: f.write(text.encode()))
        name = render.array_job_name(experiment.name, label, number)
        # Before sbatch: a lost answer is then found by name and task.
        ledger.update_many(folder, {run.name: {"job_name": name, "array_task": task, "script": str(script)}
                                    for task, run in enumerate(group)})
        try:
            array_id = slurm.submit(text, folder / render.ARRAYS / "submitit", group[0].world_size,
                                    timeout_s=site.submit_timeout_s)
        except slurm_query.SlurmError as exc:  # a timeout included: the array may be queued all the same
            ledger.update_many(folder, {run.name: {"state": SUBMIT_FAILED, "why": str(exc)} for run in group})
            print(f"{', '.join(run.name for run in group)}: {exc}; nothing more submitted", file=sys.stderr)
            return 1
        ledger.update_many(folder, {
            run.name: {"state": PENDING, "why": "", "job_id": f"{array_id}_{task}",
                       "job_ids": [*job_history(states[run.name].entry), f"{array_id}_{task}"],
                       "log": str(folder / run.name / f"slurm-{array_id}_{task}.out")}
            for task, run in enumerate(group)})
        print(f"array {name}: job {array_id}, {len(group)} run(s) of {group[0].nodes} x {group[0].gpus}, "
              f"{group[0].time_limit}{at_once} ({script})")
        for task, run in enumerate(group):
            count += 1
            kept = claimed[run.name].kept
            print(f"[{count}/{total}] {run.name}: job {array_id}_{task}"
                  + (f"; the previous run kept in {kept}" if kept else ""))
    if runs:
        print(f"follow: hpml status {experiment.name} --site {site.name} [--watch 30]; "
              f"results: {folder}/<run>/{attempts.ATTEMPTS}/<n>/rank-<k>.json")
    return 0


def _adopt(folder: Path, run: Run, job: slurm_query.JobInfo, seen: dict) -> None:
    if not adopt(folder, run, seen, state=from_slurm(job.state),
                 why=f"adopted job {job.job_id}, queued although its sbatch failed ({seen.get('why') or 'no answer'})",
                 job_id=job.job_id, job_ids=[*job_history(seen), job.job_id],
                 log=str(folder / run.name / f"slurm-{job.job_id}.out")):
        print(f"{run.name}: taken meanwhile by another hpml submit, skipped")
        return
    print(f"{run.name}: adopted job {job.job_id} ({job.state}): Slurm had queued it although its sbatch failed")


def _submit_report(submission: Submission, site_arg: str, overrides: list[str]) -> None:
    """A small CPU job that runs `hpml report` once every pending or running job of the study
    has ended, whatever its state (``--dependency=afterany``)."""
    folder, site = submission.folder, submission.site
    entries = ledger.read(folder) if not submission.dry_run else {}
    after = sorted({str(entry["job_id"]).split("_")[0] for entry in entries.values()  # whole arrays
                    if entry.get("backend") == "slurm" and entry.get("job_id")
                    and entry.get("state") in (PENDING, RUNNING)}, key=lambda job: (len(job), job))
    if submission.dry_run:
        print("  would submit the report job, to run after the study's pending and running jobs")
        return
    script = render.render_report(submission.experiment, site, site_arg, overrides, after)
    atomic_write(folder / REPORT_SCRIPT, lambda f: f.write(script.encode()))
    job_id = slurm.submit(script, folder / "submitit", 1, timeout_s=site.submit_timeout_s)
    print(f"report: job {job_id}, after job(s) {','.join(after) or '(none)'} end: {folder}/report/ "
          f"({folder / REPORT_SCRIPT})")
