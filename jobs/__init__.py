"""hpml's jobs layer: experiment files expanded into validated runs (see README.md, "Studies")."""
