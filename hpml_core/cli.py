"""The ``hpml`` command, and the one module that sees every layer: the engine (``hpml train``,
``hpml data``), the jobs layer (``jobs``: plan, render, submit, status, cancel, sites, doctor) and
the report (``analysis``). Each command is owned by the module that does its work, which parses
its own arguments (``main(argv)``); ``COMMANDS`` below, the one list of them, says which module
that is, its line in ``hpml --help`` and the extra it needs. No other module imports both the
engine and the jobs layer or the report (``tests/test_login_side.py`` checks it).

Importing this module imports nothing heavy: each command imports its own module when called, so
the login-side commands never load torch, and an install without an extra says which one a
command needs instead of printing a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from hpml_core.contract.errors import EXIT_USAGE, UsageError
from hpml_core.contract.names import SAFE_NAME


@dataclass(frozen=True)
class Extra:
    """A part of the install beyond ``pip install hpml`` that some commands need."""

    name: str  # pip install 'hpml[<name>]'
    what: str  # in the error's words: "needs <what>"
    modules: frozenset[str]  # the top-level modules whose absence means it is missing
    where: str  # the heading of its commands in ``hpml --help``


ENGINE = Extra("engine", "the engine", frozenset({"torch", "transformers", "deepspeed", "tokenizers", "datasets"}),
               "in a job (pip install 'hpml[engine]')")
DATA = Extra("data", "tokenizers and datasets", frozenset({"tokenizers", "datasets"}),
             "preparing data, once, on a login node (pip install 'hpml[data]')")
LOGIN_SIDE = "on a login node or a laptop (pip install hpml)"


@dataclass(frozen=True)
class Command:
    module: str  # the module that owns the command: its main(argv) runs it
    help: str  # its line in ``hpml --help`` (a newline: the line goes on, indented)
    extra: Extra | None = None  # None: a plain ``pip install hpml`` runs it
    prepare: Callable[[list[str]], list[str]] | None = None  # applied to its arguments before its module loads


def _stop_gently(rest: list[str]) -> list[str]:
    """Before the engine's seconds of imports: a stop signal then is not fatal."""
    from hpml_core import stopping

    stopping.install()
    return rest


def _site_data_folder(rest: list[str]) -> list[str]:
    """``hpml data prepare ... --site SITE --dataset NAME [--set KEY=VALUE]``: the arguments with
    ``--out`` the site's ``data_root/NAME``, where its jobs and ``hpml submit`` look for it."""
    from jobs import site

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


COMMANDS = {
    "plan": Command("jobs.plan", "expand and validate an experiment file, and print its runs"),
    "render": Command("jobs.render", "write an experiment's job scripts for a site profile"),
    "submit": Command("jobs.submit", "submit an experiment's runs that have not completed (with --site local, run "
                                     "them\nhere: that needs the engine too)"),
    "status": Command("jobs.status", "the state and progress of an experiment's runs"),
    "cancel": Command("jobs.cancel", "cancel an experiment's pending and running Slurm jobs"),
    "report": Command("analysis.report", "tables, figures and a page from an experiment's rank files"),
    "tune": Command("jobs.tune", "rank the layouts that could train a model on N GPUs by predicted speed, and write "
                                 "an\nexperiment of the best"),
    "calibrate": Command("jobs.calibrate", "fit the step-time model's rates to a site's finished runs, for "
                                           "hpml plan"),
    "sites": Command("jobs.site_list", "the site profiles a --site name finds (yours in ~/.config/hpml/sites, "
                                       "then the shipped ones)"),
    "doctor": Command("jobs.doctor", "check that a site works, line by line (--smoke: one tiny run through its "
                                     "job template)"),
    "data": Command("hpml_core.data", "prepare a token file from a corpus (python -m hpml_core.data); with --site "
                                      "SITE\n--dataset NAME, into the site's data_root/NAME, where its jobs look",
                    DATA, _site_data_folder),
    "train": Command("hpml_core.train", "train GPT-2 and write one result file per rank: --mode single (one "
                                        "process), ddp\n(PyTorch DDP), zero1, zero2, zero3 (DeepSpeed ZeRO) or "
                                        "fsdp2 (PyTorch FSDP2), --tp-size T\n(python -m hpml_core.train)", ENGINE, _stop_gently),
}


def usage() -> str:
    """``hpml --help``: the commands, under where they run and what they need installed."""
    sections: dict[str, list[str]] = {}
    for name, command in COMMANDS.items():
        where = command.extra.where if command.extra else LOGIN_SIDE
        sections.setdefault(where, []).append(f"  {name:<9} " + command.help.replace("\n", "\n" + " " * 12))
    body = "\n\n".join(f"{where}:\n" + "\n".join(lines) for where, lines in sections.items())
    return f"usage: hpml COMMAND [ARGS...]\n\n{body}\n\n`hpml COMMAND --help` describes each."


def _run(name: str, command: Command, rest: list[str]) -> int:
    """Load the command's module and run it; one line and status 2 for a bad argument that
    ``prepare`` finds, or a missing extra."""
    try:
        try:
            rest = command.prepare(rest) if command.prepare else rest
        except UsageError as exc:
            print(f"hpml {name}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        return importlib.import_module(command.module).main(rest)
    except ModuleNotFoundError as exc:
        extra = command.extra
        if extra is None or (exc.name or "").split(".")[0] not in extra.modules:
            raise
        print(f"hpml {name}: error: needs {extra.what}: pip install 'hpml[{extra.name}]'", file=sys.stderr)
        return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"hpml: error: unknown command {name!r} (allowed: {', '.join(COMMANDS)})", file=sys.stderr)
        return EXIT_USAGE
    return _run(name, COMMANDS[name], rest)


if __name__ == "__main__":
    sys.exit(main())
