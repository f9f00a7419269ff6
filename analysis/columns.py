"""How the report's typed rows become the columns of its CSV files. The rows nest small value
types (a figure's spread over the repeats, a comparison, its baseline) and groups of fields;
the CSV files are flat, with the units in the names, so that a spreadsheet or pandas reads them
without this package. Flattening is defined once, here, so every row type has exactly the
columns its fields say, in their order, on every row."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd


@dataclass(frozen=True)
class Spread:
    """A figure over a configuration's completed repeats: the median and the range measured
    (columns ``<name>_median``, ``<name>_min``, ``<name>_max``); all None where no repeat has it."""
    SUFFIXES: ClassVar = {"median": "_median", "low": "_min", "high": "_max"}
    median: float | None = None
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Spread:
        present = [value for value in values if value is not None]
        return cls(statistics.median(present), min(present), max(present)) if present else cls()

    @property
    def known(self) -> bool:
        return self.median is not None


@dataclass(frozen=True)
class Comparison:
    """A configuration's figure against its baseline's: the ratio's map from the medians, its
    interval from the two ranges, and whether it is within noise (columns ``<name>``,
    ``<name>_min``, ``<name>_max``, ``<name>_noise``); all None where there is no baseline."""
    SUFFIXES: ClassVar = {"value": "", "low": "_min", "high": "_max", "noise": "_noise"}
    value: float | None = None
    low: float | None = None
    high: float | None = None
    noise: str | None = None


@dataclass(frozen=True)
class Baseline:
    """The configuration a comparison is made against, and the device it ran on (columns
    ``<name>``, ``<name>_device``, ``<name>_label``); all None where there is none."""
    SUFFIXES: ClassVar = {"configuration": "", "device": "_device", "label": "_label"}
    configuration: str | None = None
    device: str | None = None
    label: str | None = None


# A field's metadata that keeps it out of the row's CSV: it has a file of its own.
APART = {"csv": False}


def flatten(row: Any) -> dict[str, Any]:
    """One row's columns (fields marked ``APART`` left out)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(row):
        if field.metadata.get("csv") is False:
            continue
        value = getattr(row, field.name)
        if hasattr(value, "SUFFIXES"):  # a value: its parts, named after the field
            out.update({field.name + suffix: getattr(value, part) for part, suffix in value.SUFFIXES.items()})
        elif dataclasses.is_dataclass(value):
            out.update(flatten(value))  # a group of fields: its columns, unprefixed
        else:
            out[field.name] = value
    return out


def frame(rows: Sequence[Any]) -> pd.DataFrame:
    """The rows as a table, one column per flattened field."""
    return pd.DataFrame([flatten(row) for row in rows])
