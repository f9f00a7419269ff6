"""hpml's jobs layer: experiment files expanded into validated runs (see docs/studies.md)."""
