"""Which code a measurement ran: the commit, whether the tree was clean, and a fingerprint of the
source files themselves, recorded in the JSON files of ``make gpu-check``, ``make bench`` and
``make bench-memory`` and in the step profile's.

The fingerprint is there because a GPU machine may get a copy of the tree without its ``.git``:
there the commit cannot be read, so the raw file says why and keeps the fingerprint, and
``python -m hpml_core.bench.source`` in a checkout of the commit tells whether it is the same
code (equal fingerprints: the same bytes in every source file). Where ``.git`` is there, the
commit and whether anything differs from it are recorded as well: a figure measured on a
modified tree names the commit it was not.

    python -m hpml_core.bench.source [DIR]     # DIR's record as JSON (default: this checkout)
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What the fingerprint covers: the code and the files that configure a run, not results or data.
SOURCE_DIRS = ("hpml_core", "jobs", "analysis", "templates", "tests")
SOURCE_SUFFIXES = (".py", ".yaml", ".j2", ".toml")
TOP_FILES = ("Makefile", "pyproject.toml")
SKIPPED_DIRS = {"__pycache__", ".pytest_cache"}


def source_files(root: Path) -> list[Path]:
    """The files the fingerprint covers, sorted by their path relative to ``root``."""
    found = [root / name for name in TOP_FILES if (root / name).is_file()]
    for folder in SOURCE_DIRS:
        found += [path for path in (root / folder).rglob("*") if path.is_file()
                  and path.suffix in SOURCE_SUFFIXES and not SKIPPED_DIRS & set(path.relative_to(root).parts)]
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def fingerprint(root: Path) -> tuple[str, int]:
    """SHA-256 over every source file's relative path and bytes; (hex digest, files)."""
    digest, files = hashlib.sha256(), source_files(root)
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest(), len(files)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()


def describe(root: Path = REPO) -> dict:
    """The record: commit, tree_clean (no tracked file changed, no untracked file outside
    .gitignore), fingerprint and files; commit and tree_clean None where git cannot say, with
    ``commit_missing_reason``."""
    digest, files = fingerprint(root)
    record = {"commit": None, "tree_clean": None, "fingerprint": f"sha256:{digest}", "files": files,
              "commit_missing_reason": None}
    if not (root / ".git").exists():
        record["commit_missing_reason"] = f"no .git in {root} (a copy of the tree): compare the fingerprint with " \
                                          "`python -m hpml_core.bench.source` in a checkout"
        return record
    try:
        record["commit"] = _git(root, "rev-parse", "HEAD")
        record["tree_clean"] = _git(root, "status", "--porcelain") == ""
    except (OSError, subprocess.SubprocessError) as exc:
        record["commit_missing_reason"] = f"git could not say: {type(exc).__name__}: {exc}"
    return record


def line(record: dict) -> str:
    """One line for a summary: "commit 1a2b3c4 (clean tree), source sha256:…" and so on."""
    if record["commit"] is None:
        where = f"commit unknown ({record['commit_missing_reason']})"
    else:
        where = f"commit {record['commit'][:12]} ({'clean tree' if record['tree_clean'] else 'tree modified'})"
    return f"{where}; source {record['fingerprint'][:19]}… over {record['files']} files"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else REPO
    if not root.is_dir():
        print(f"hpml_core.bench.source: DIR: no folder {root}", file=sys.stderr)
        return 2
    print(json.dumps(describe(root), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
