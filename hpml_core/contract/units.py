"""Binary units. Memory is counted in GiB (2**30 bytes) everywhere hpml prints it, as PyTorch's
allocator and ``nvidia-smi`` do; a GPU's data-sheet "80 GB" is a different, decimal figure."""

MIB = 2**20
GIB = 2**30
