"""``hpml cancel``: cancel an experiment's pending and running Slurm jobs (scancel), and record
it in the ledger. A cancelled run keeps its checkpoint: ``hpml submit`` starts it again, and it
resumes from there."""

from __future__ import annotations

from hpml_core.spec.errors import UsageError
from jobs import slurm
from jobs.experiment import Experiment
from jobs.run_state import refresh
from jobs.site import Site


def cancel(experiment: Experiment, site: Site, only: list[str] | None) -> int:
    if site.scheduler != "slurm":
        raise UsageError("--site", f"{site.name} runs without Slurm: its runs belong to the `hpml submit` that "
                         "runs them (stop it with Ctrl-C); cancel is for Slurm sites")
    names = [run.name for run in experiment.runs]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise UsageError("--run", f"{unknown[0]!r} is not a run of {experiment.name} (runs: {', '.join(names)})")
    folder = site.experiment_folder(experiment.name)
    entries = refresh(experiment, folder)
    chosen = {name: entries[name]["job_id"] for name in (only or names)
              if entries.get(name, {}).get("state") in slurm.ACTIVE and entries[name].get("job_id")}
    slurm.cancel(sorted(chosen.values()))
    refresh(experiment, folder)
    for name, job_id in chosen.items():
        print(f"{name}: cancelled job {job_id}")
    print(f"{experiment.name}: {len(chosen)} job(s) cancelled" + ("" if chosen else " (none was pending or running)"))
    return 0
