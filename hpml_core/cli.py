"""The ``hpml`` command: one entry point, each subcommand owned by the module that does the work.

Importing this module imports nothing heavy: each command imports its own module when called, so
the login-side commands never load torch, and an install without an extra says which one a
command needs instead of printing a traceback.
"""

from __future__ import annotations

import sys

from hpml_core.contract.errors import EXIT_USAGE, UsageError

USAGE = """usage: hpml COMMAND [ARGS...]

on a login node or a laptop (pip install hpml):
  plan    expand and validate an experiment file, and print its runs
  render  write an experiment's job scripts for a site profile
  submit  submit an experiment's runs that have not completed (with --site local, run them
          here: that needs the engine too)
  status  the state and progress of an experiment's runs
  cancel  cancel an experiment's pending and running Slurm jobs
  report  tables, figures and a page from an experiment's rank files
  sites   the site profiles a --site name finds (yours in ~/.config/hpml/sites, then the shipped ones)
  doctor  check that a site works, line by line (--smoke: one tiny run through its job template)

preparing data, once, on a login node (pip install 'hpml[data]'):
  data    prepare a token file from a corpus (python -m hpml_core.data); with --site SITE
          --dataset NAME, into the site's data_root/NAME, where its jobs look

in a job (pip install 'hpml[engine]'):
  train   train GPT-2 and write one result file per rank: --mode single (one process), ddp
          (PyTorch DDP) or zero3 (DeepSpeed ZeRO-3), --tp-size T (python -m hpml_core.train)

plan, render, submit, status and cancel are also `python -m jobs.cli COMMAND`, report is
`python -m analysis.report`. `hpml COMMAND --help` describes each."""

# The commands that need an extra: the extra, and the top-level modules whose absence means it is
# missing (an ImportError of anything else is a real error and keeps its traceback).
EXTRAS = {
    "train": ("engine", "the engine", {"torch", "transformers", "deepspeed", "tokenizers", "datasets"}),
    "data": ("data", "tokenizers and datasets", {"tokenizers", "datasets"}),
}


def _site_data_folder(rest: list[str]) -> list[str]:
    """``hpml data prepare ... --site SITE --dataset NAME [--set KEY=VALUE]``: the arguments with
    ``--out`` the site's ``data_root/NAME``, where its jobs and ``hpml submit`` look for it."""
    import argparse

    from jobs import site
    from hpml_core.contract.names import SAFE_NAME

    parser = argparse.ArgumentParser(prog="hpml data prepare", add_help=False)
    parser.add_argument("--site")
    parser.add_argument("--dataset")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    known, others = parser.parse_known_args(rest)
    if known.site is None:
        return rest
    if known.dataset is None or "--out" in others:
        raise UsageError("--dataset", "with --site, name the dataset (the experiment's dataset:) and leave out --out")
    if not SAFE_NAME.match(known.dataset):
        raise UsageError("--dataset", f"{known.dataset!r}: a folder name (letters, digits, '.', '_' and '-')")
    return [*others, "--out", str(site.load(known.site, known.overrides).dataset_folder(known.dataset))]


def _run_with_extra(command: str, rest: list[str]) -> int:
    """Run ``hpml train`` or ``hpml data``; one line and status 2 if its extra is not installed."""
    extra, what, modules = EXTRAS[command]
    try:
        if command == "train":
            from hpml_core import stopping

            stopping.install()  # before the engine's seconds of imports: a stop signal then is not fatal
            from hpml_core.train import main as run
        else:
            from hpml_core.data import main as run

            try:
                rest = _site_data_folder(rest)
            except UsageError as exc:
                print(f"hpml data: error: {exc}", file=sys.stderr)
                return EXIT_USAGE
        return run(rest)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in modules:
            raise
        print(f"hpml {command}: error: needs {what}: pip install 'hpml[{extra}]'", file=sys.stderr)
        return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else EXIT_USAGE
    command, rest = argv[0], argv[1:]
    if command in EXTRAS:
        return _run_with_extra(command, rest)
    if command == "report":
        from analysis.report import main as report

        return report(rest)
    if command in ("plan", "render", "submit", "status", "cancel", "sites", "doctor"):
        from jobs.cli import main as jobs_main

        return jobs_main(argv)
    print(f"hpml: error: unknown command {command!r} (allowed: train, data, plan, render, submit, status, cancel, report, sites, doctor)",
          file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
