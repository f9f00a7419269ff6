"""The report: per-rank JSON to scaling-efficiency tables, figures and a self-contained HTML page."""
