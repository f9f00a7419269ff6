"""Binary units. Memory is counted in GiB (2**30 bytes) everywhere hpml prints it, as PyTorch's
allocator and ``nvidia-smi`` do; a GPU's data-sheet "80 GB" is a different, decimal figure.
Disk space (a file's size, the bytes free: ``size_words``) is said in decimal units, as ``df -H``
and the quotas of most clusters say it."""

MIB = 2**20
GIB = 2**30


def size_words(n: int) -> str:
    """A byte count a reader takes in at a glance: exact below a megabyte ("10,646 bytes"), else
    three digits ("9.31 GB")."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:,} bytes"
