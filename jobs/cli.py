"""The command line the jobs layer's commands share: the experiment argument, ``--site`` and
``--set``, reading them into a validated site and experiment, and the one way every command
reports a bad input (one line, exit status 2), a Slurm that refused or did not answer (one
line, exit status 1) or a write the disk refused (one line with the path, the bytes needed and
free, exit status 5). Each command's own parser and ``main`` live in the module that does its
work (``jobs.plan``, ``jobs.render``, ``jobs.submit``, ...); ``hpml_core.cli`` lists them.

Nothing here imports torch: these run on a login node, and take the contract
(``hpml_core.contract``) from the engine's package, nothing else."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from hpml_core.contract.atomic import as_refusal
from hpml_core.contract.errors import EXIT_USAGE, EXIT_WRITE_REFUSED, UsageError, WriteRefused
from jobs import experiment, site
from jobs.slurm_query import SlurmError

EXIT_SLURM = 1


def command_parser(command: str, doc: str) -> argparse.ArgumentParser:
    """``hpml COMMAND``'s parser, described by the first paragraph of its module's docstring."""
    return argparse.ArgumentParser(prog=f"hpml {command}", description=doc.split("\n\n")[0])


def add_experiment(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="an experiment file, or the name of one in jobs/experiments/")
    experiment.add_repeats(parser)


def add_site(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """``--site`` (default local: this machine, unless ``required``) and ``--set KEY=VALUE``."""
    if required:
        parser.add_argument("--site", required=True, help="a site profile file, or a name in jobs/sites/")
    else:
        parser.add_argument("--site", default="local", help="a site profile (default local: this machine)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="change one field of the site profile for this command (repeatable; dotted keys "
                             "such as container.image; the value is YAML)")


def positive_int(text: str) -> int:
    """argparse's reading of a count: a whole number from 1 (otherwise its one-line error, exit 2)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 (got {text!r})")
    return int(text)


def load_site(args: argparse.Namespace) -> site.Site:
    """The site profile ``--site`` names, with ``--set``'s changes, validated once, here."""
    return site.load(args.site, args.overrides)


def load_study(args: argparse.Namespace, checked: bool) -> tuple[site.Site, experiment.Experiment]:
    """The site profile and the experiment, validated once, here; with ``checked`` against the
    site's prepared data too (what the commands that start runs, or show what would, need)."""
    profile = load_site(args)
    exp = experiment.load(experiment.experiment_path(args.experiment), profile.data_folder() if checked else None,
                          profile.gpu_memory(), args.repeats)
    return profile, exp


def run(command: str, body: Callable[[], int]) -> int:
    """``body``'s exit status; a bad input, a Slurm error or a write the disk refused as one line on stderr."""
    try:
        return body()
    except UsageError as exc:
        print(f"hpml {command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SlurmError as exc:
        print(f"hpml {command}: Slurm: {exc}", file=sys.stderr)
        return EXIT_SLURM
    except (WriteRefused, OSError) as exc:  # a full disk or a folder not ours: the path and the bytes
        refused = as_refusal(exc)
        if refused is None:
            raise
        print(f"hpml {command}: error: {refused}", file=sys.stderr)
        return EXIT_WRITE_REFUSED
