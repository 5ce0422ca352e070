"""`python scripts/compare.py --help`: the command of ifes_jax/cli/compare.py (also `ifes-compare`)."""
from ifes_jax.cli.compare import main

if __name__ == "__main__":
    main()
