"""The long tables of every run's steps: ``loss.csv`` (the loss curve from step 0 over all its
attempts) and ``step_times.csv`` (every timed step of every attempt, by rank), for plotting or
checking a figure of the report from the raw times."""

from __future__ import annotations

import pandas as pd

from analysis.collect import RunResult


def loss_table(results: list[RunResult]) -> pd.DataFrame:
    """Each run's loss curve from step 0, and the attempt each value comes from."""
    rows = [(r.name, step, loss, attempt) for r in results for step, loss, attempt in r.loss_curve()]
    return pd.DataFrame(rows, columns=["run", "step", "loss", "attempt"])


def step_times_table(results: list[RunResult]) -> pd.DataFrame:
    rows = [(r.name, attempt, rank, step, seconds) for r in results for attempt, rank, step, seconds in r.step_times()]
    return pd.DataFrame(rows, columns=["run", "attempt", "rank", "step", "step_time_s"])
