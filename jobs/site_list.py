"""``hpml sites``: the site profiles a ``--site`` name finds: the user's own (in
``$HPML_SITES``, else ``~/.config/hpml/sites``), then the shipped ones (``jobs/sites/``), each
with where it comes from, so that a user sees which profile a name takes before submitting."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from jobs import cli, site


def list_sites() -> int:
    table = Table(title=f"site profiles (yours in {site.user_sites()}, set by $HPML_SITES)")
    for column in ("name", "from", "file"):
        table.add_column(column)
    for name, path, where in site.available():
        table.add_row(name, where, str(path))
    Console(width=160).print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    cli.command_parser("sites", __doc__).parse_args(argv)
    return cli.run("sites", list_sites)
