"""The one error type for bad input: it names what was wrong, and the entry points turn it
into a single line on stderr and exit status 2, before anything is written."""


class UsageError(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_OOM = 3
EXIT_STOPPED = 4  # stopped on a signal after saving a checkpoint: requeue and --resume
