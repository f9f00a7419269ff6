"""``report.html``: one self-contained page (tables, notes, and the figures embedded as PNG data
URIs), so it opens offline, from a mail attachment or a copied results folder. No scripts."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from analysis.tables import HEADERS
from hpml_core.contract.run_states import COMPLETED

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.35em 0.7em; text-align: right; }
th:nth-child(-n+2), td:nth-child(-n+2), td:last-child, th:last-child { text-align: left; }
figure { margin: 1.5em 0; } img { max-width: 100%; border: 1px solid #eee; }
.bad { color: #b22; }
"""


def _table(headers, rows, bad_column: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            bad = bad_column is not None and index == bad_column and cell != COMPLETED
            attribute = ' class="bad"' if bad else ""
            cells.append(f"<td{attribute}>{html.escape(str(cell))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(title: str, summary_rows: list[list[str]], run_rows: list[list[str]], notes: list[str],
         figures: list[Path], written: list[str]) -> str:
    images = []
    for path in figures:
        if path.suffix != ".png":
            continue
        data = base64.b64encode(path.read_bytes()).decode()
        images.append(f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
                      f"<figcaption>{html.escape(path.stem)} ({html.escape(path.name)}, "
                      f"{html.escape(path.with_suffix('.svg').name)})</figcaption></figure>")
    notes_html = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    files = ", ".join(html.escape(name) for name in written)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<h2>Summary</h2>
{_table(HEADERS, summary_rows, bad_column=len(HEADERS) - 1)}
<ul>{notes_html}</ul>
<h2>Figures</h2>
{''.join(images)}
<h2>Runs</h2>
{_table(("Run", "Configuration", "Status", "Reason"), run_rows, bad_column=2)}
<p>Files: {files}</p>
</body></html>
"""
