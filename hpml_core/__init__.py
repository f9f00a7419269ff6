"""hpml's training engine: the code that runs inside a job (see README.md)."""
