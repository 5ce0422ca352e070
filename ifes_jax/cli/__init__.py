"""The command-line entry points (`scripts/*.py` and the `ifes-*` commands run these)."""
