"""Write files so that a reader sees either the old content or the whole new content, never a
partial file: write a temporary file in the same folder, flush it to disk, then rename.

A write the file system refuses for space (a full disk, a quota) or permission becomes one
``WriteRefused`` naming the path, the bytes the write needed and the bytes free there: every file
hpml writes goes through here, so a full disk reads the same for a checkpoint, a rank file, the
ledger or the report. The bytes needed are counted by writing the content again into a sink that
only counts, once the real write has failed (writers such as ``torch.save`` do not know their size
beforehand). ``torch.save`` reports a full disk as a ``RuntimeError`` of its own; the ``OSError``
underneath it, or a content larger than the free space, says it was the disk."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from hpml_core.contract.errors import WriteRefused

REFUSALS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        # mkstemp makes the file private (0600); results are shared with a team, so give it the
        # permissions any other new file gets here.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        refused = refusal(exc, path, write)  # free space measured as the write met it, its part still there
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if refused is not None:
            raise refused from exc
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def refusal(exc: BaseException, path: Path, write: Callable[[IO[bytes]], None] | None = None) -> WriteRefused | None:
    """``exc`` as a ``WriteRefused`` if the file system refused the write of ``path`` for space or
    permission (``write``, when given, is run again into a counting sink for the bytes needed);
    None for any other failure, which stays what it was."""
    if isinstance(exc, WriteRefused):
        return exc
    if not isinstance(exc, Exception):
        return None  # KeyboardInterrupt, SystemExit: not the disk's doing
    needed = _bytes_written(write) if write is not None else None
    free = free_bytes(path.parent)
    code = _refusing_errno(exc)
    if code is None and needed is not None and free is not None and needed > free:
        code = errno.ENOSPC  # a writer that hid the OSError, with more to write than there is room
    if code is None:
        return None
    return WriteRefused(path, os.strerror(code).lower(), needed, free)


def as_refusal(exc: BaseException) -> WriteRefused | None:
    """What a command met while writing (a ``WriteRefused``, or an ``OSError`` from creating a file
    or folder itself) as a ``WriteRefused`` when space or permission refused it; None otherwise."""
    if isinstance(exc, WriteRefused):
        return exc
    if isinstance(exc, OSError) and exc.filename and exc.errno in REFUSALS:
        return refusal(exc, Path(exc.filename))
    return None


def _refusing_errno(exc: BaseException) -> int | None:
    """The errno of a space or permission refusal in ``exc`` or in what caused it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in REFUSALS:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


class _CountingSink(io.RawIOBase):
    def __init__(self):
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        self.count += size
        return size


def _bytes_written(write: Callable[[IO[bytes]], None]) -> int | None:
    sink = _CountingSink()
    try:
        write(sink)  # type: ignore[arg-type]
    except Exception:
        return None
    return sink.count


def free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged user may still write on the file system of ``folder`` (its nearest
    existing ancestor); None when even that cannot be asked."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None
