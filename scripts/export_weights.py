"""`python scripts/export_weights.py --help`: the command of ifes_jax/cli/export_weights.py (also `ifes-export-weights`)."""
from ifes_jax.cli.export_weights import main

if __name__ == "__main__":
    main()
