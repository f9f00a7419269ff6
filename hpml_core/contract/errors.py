"""The error types every entry point turns into one line on stderr and an exit status of its own:
``UsageError`` for bad input (status 2, before anything is written), ``WriteRefused`` for a file
the file system would not take (status 5: out of space or quota, or not allowed)."""


from hpml_core.contract.units import size_words


class UsageError(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class WriteRefused(Exception):
    """A write that failed for space or permission, in words a user can act on: the path, why,
    the bytes it needed and what was free there (``hpml_core.contract.atomic`` measures both).
    A distinct exit status, so that a job script, ``hpml status`` and a user tell a full disk from
    a training failure."""

    def __init__(self, path, reason: str, needed: int | None, free: int | None):
        self.path, self.reason, self.needed, self.free = path, reason, needed, free
        need = f"it needs {size_words(needed)}" if needed is not None else "its size unknown"
        have = f"{size_words(free)} free there" if free is not None else "free space unknown"
        super().__init__(f"cannot write {path}: {reason} ({need}, {have})")

    def __reduce__(self):  # sent whole to the other ranks (``hpml_core.checkpoint``)
        return WriteRefused, (self.path, self.reason, self.needed, self.free)


EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_OOM = 3
EXIT_STOPPED = 4  # stopped on a signal after saving a checkpoint: requeue and --resume
EXIT_WRITE_REFUSED = 5  # a file could not be written: disk (or quota) full, or no permission
