"""``report.html``: one self-contained page (figures embedded as PNG data URIs, no scripts), so
it opens offline, from a mail attachment or a copied results folder. It reads like a paper's
results section: the figures and one results table first, the predictions against the
measurements in a table of their own after, then the runs; each table's notes are numbered
right under it, so a reader finds why a cell is n/a where the cell is."""

from __future__ import annotations

import base64
from pathlib import Path

from jinja2 import Environment
from markupsafe import Markup

from analysis import tables
from analysis.baselines import SummaryRow
from analysis.notes import Notes
from hpml_core.contract.run_states import COMPLETED

# What each figure shows, for its caption; the predictions' figure goes with their table.
CAPTIONS = {
    "throughput": "Throughput per configuration, and the weak and strong scaling efficiency of those compared "
                  "with a 1-process baseline other than themselves.",
    "memory": "Peak memory per GPU (training and setup) and the model state per GPU.",
    "mfu_vs_batch": "MFU against the batch per GPU, per layout.",
    "loss": "Training loss from step 0, over every attempt.",
    "predicted_vs_measured": "The memory model's and the step-time model's predictions against the measurements.",
    "where_time_goes": "Where the step goes: each configuration's profiled step part by part (left), and the "
                       "step-time model's parts (right), in the same colours.",
}
PREDICTION_FIGURES = ("predicted_vs_measured",)
TIME_FIGURES = ("where_time_goes",)

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; line-height: 1.4; }
table { border-collapse: collapse; margin: 1em 0 0.5em; font-size: 0.9em; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.4em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.35em 0.7em; text-align: right; vertical-align: top; }
th:first-child, td:first-child, table.runs td, table.runs th { text-align: left; }
table.results td:first-child { min-width: 14em; } th.group { text-align: center; border-bottom: 1px solid #999; }
td:not(:first-child) { white-space: nowrap; } table.runs td:last-child { white-space: normal; }
.description { color: #666; font-size: 0.85em; }
.figures { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
figure { margin: 0; } figure.wide { grid-column: 1 / -1; }
img { max-width: 100%; border: 1px solid #eee; } figcaption { font-size: 0.85em; color: #444; }
ol.notes { font-size: 0.85em; color: #333; margin-top: 0; }
.bad { color: #b22; }
</style></head>
<body>
<h1>{{ title }}</h1>
{% for section in sections %}
<section id="{{ section.id }}">
<h2>{{ section.heading }}</h2>
{% if section.figures %}
<div class="figures">
{% for figure in section.figures %}
<figure class="{{ figure.size }}"><img alt="{{ figure.stem }}" src="data:image/png;base64,{{ figure.data }}">
<figcaption>Figure {{ figure.number }}: {{ figure.caption }} ({{ figure.files }})</figcaption></figure>
{% endfor %}
</div>
{% endif %}
<table id="{{ section.id }}-table" class="{{ section.id }}">
<caption>Table {{ loop.index }}: {{ section.caption }}</caption>
<thead>
{% if section.groups %}<tr>
{%- for group, span in section.groups %}<th colspan="{{ span }}"{% if group %} class="group"{% endif %}>{{ group }}</th>
{%- endfor %}</tr>{% endif %}
<tr>{% for header in section.headers %}<th>{{ header }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in section.rows %}<tr>{% for cell in row %}<td{% if cell.bad %} class="bad"{% endif %}>
{{- cell.lines | join(markup("<br>")) }}
{%- if cell.description %}<br><span class="description">{{ cell.description }}</span>{% endif %}</td>{% endfor %}</tr>
{% endfor %}
</tbody></table>
{% if section.notes %}<ol class="notes" id="{{ section.id }}-notes">
{% for note in section.notes %}<li>{{ note }}</li>
{% endfor %}</ol>{% endif %}
</section>
{% endfor %}
<p>Files: {{ written | join(", ") }}</p>
</body></html>
"""
TEMPLATE = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string(
    PAGE, globals={"markup": Markup})


def _cell(text: str, bad: bool = False, description: str | None = None) -> dict:
    return {"lines": [text], "bad": bad, "description": description}


def _figure_cell(text: str) -> dict:
    """A figure, its range and a second figure beside it ("21.00 [20.00–22.00]; setup 10.50")
    each on a line of its own, so that no number wraps."""
    return {"lines": text.replace(" [", "; [").split("; "), "bad": False, "description": None}


def _figures(paths: list[Path], first_number: int) -> list[dict]:
    figures = []
    for number, path in enumerate(paths, start=first_number):
        figures.append({"stem": path.stem, "number": number, "caption": CAPTIONS.get(path.stem, path.stem),
                        "files": f"{path.name}, {path.with_suffix('.svg').name}",
                        "size": "wide" if path.stem in ("throughput", "memory", "predicted_vs_measured",
                                                        "where_time_goes") else "",
                        "data": base64.b64encode(path.read_bytes()).decode()})
    return figures


def page(title: str, rows: list[SummaryRow], run_rows: list[list[str]], notes: Notes, drawn: list[Path],
         written: list[str]) -> str:
    """``run_rows``: (run, configuration, status, reason) of every run; ``drawn``: the figures'
    files (their PNGs are embedded); ``written``: every file of the report, named at the end."""
    pngs = [path for path in drawn if path.suffix == ".png"]
    measured = [path for path in pngs if path.stem not in PREDICTION_FIGURES + TIME_FIGURES]
    time = [path for path in pngs if path.stem in TIME_FIGURES]
    predicted = [path for path in pngs if path.stem in PREDICTION_FIGURES]
    time_headers, time_rows = tables.time_parts_table(rows)
    results = [[_cell(label, description=description),
                _cell(cells[0], bad=row.figures.runs_completed < row.figures.runs_total), *map(_figure_cell, cells[1:])]
               for row, (label, description, cells) in zip(rows, tables.result_rows(rows))]
    sections = [
        {"id": "results", "heading": "Results", "figures": _figures(measured, 1), "headers": tables.RESULT_HEADERS,
         "caption": "Each configuration's figures: the median over its completed repeats, [min–max] beside it.",
         "rows": results, "notes": notes.results},
        {"id": "time", "heading": "Where the time goes", "figures": _figures(time, len(measured) + 1),
         "headers": time_headers,
         "caption": "Each configuration's profiled step, part by part, in ms and percent of the step; the parts "
                    "add up to the step, hidden communication is beside them.",
         "rows": [[_cell(label), *map(_cell, cells)] for label, *cells in time_rows], "notes": notes.time},
        {"id": "collectives", "heading": "Communication per step", "figures": [],
         "headers": tables.COLLECTIVE_HEADERS,
         "caption": "The bytes each configuration's collectives moved in one optimizer step, kind by kind, against "
                    "the contract's formula.",
         "rows": [[_cell(label), _cell(kind), _cell(measured_cell), _cell(contract), _cell(equal, bad=equal != "yes")]
                  for label, kind, measured_cell, contract, equal in tables.collective_rows(rows)],
         "notes": notes.collectives},
        {"id": "predictions", "heading": "Predicted against measured",
         "figures": _figures(predicted, len(measured) + len(time) + 1),
         "groups": [(group, len(columns)) for group, columns in tables.PREDICTION_HEADERS],
         "headers": [column for _, columns in tables.PREDICTION_HEADERS for column in columns],
         "caption": "The memory model's and the step-time model's predictions beside the measurements; error in "
                    "percent of the measurement.",
         "rows": [[_cell(label), *map(_figure_cell, cells)] for label, *cells in tables.prediction_rows(rows)],
         "notes": notes.predictions},
        {"id": "part-predictions", "heading": "Predicted parts against measured", "figures": [],
         "headers": tables.PART_PREDICTION_HEADERS,
         "caption": "The step-time model's parts beside the profiled step's; error in percent of the measurement.",
         "rows": [[_cell(label), _cell(part), _cell(m), _cell(p), _cell(e)]
                  for label, part, m, p, e in tables.part_prediction_rows(rows)],
         "notes": notes.part_predictions},
        {"id": "runs", "heading": "Runs", "figures": [], "headers": ("Run", "Configuration", "Status", "Reason"),
         "caption": "Every run of the experiment, with its state and why.",
         "rows": [[_cell(run), _cell(configuration), _cell(status, bad=status != COMPLETED), _cell(reason)]
                  for run, configuration, status, reason in run_rows], "notes": notes.runs},
    ]
    return TEMPLATE.render(title=title, sections=sections, written=written)
