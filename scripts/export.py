"""`python scripts/export.py --help`: the command of ifes_jax/cli/export.py (also `ifes-export`)."""
from ifes_jax.cli.export import main

if __name__ == "__main__":
    main()
