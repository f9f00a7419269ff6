"""The ``hpml`` command: one entry point, each subcommand owned by the module that does the work."""

from __future__ import annotations

import sys

USAGE = """usage: hpml COMMAND [ARGS...]

commands:
  train   train GPT-2 and write one result file per rank (python -m hpml_core.train)
  data    prepare a token file from a corpus (python -m hpml_core.data)
  plan    expand and validate an experiment file, and print its runs (python -m jobs.cli plan)
  render  write an experiment's job scripts for a site profile (python -m jobs.cli render)
  submit  submit (or, with --site local, run) an experiment's runs that have not completed (python -m jobs.cli submit)
  status  the state and progress of an experiment's runs (python -m jobs.cli status)
  cancel  cancel an experiment's pending and running Slurm jobs (python -m jobs.cli cancel)
  report  tables, figures and a page from an experiment's rank files (python -m analysis.report)

`hpml COMMAND --help` describes each."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from hpml_core.train import main as run
    elif command == "data":
        from hpml_core.data import main as run
    elif command == "report":
        from analysis.report import main as run
    elif command in ("plan", "render", "submit", "status", "cancel"):
        from jobs.cli import main as jobs_main

        return jobs_main(argv)
    else:
        print(f"hpml: error: unknown command {command!r} (allowed: train, data, plan, render, submit, status, cancel, report)", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
