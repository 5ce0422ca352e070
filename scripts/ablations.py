"""`python scripts/ablations.py --help`: the command of ifes_jax/cli/ablations.py (also `ifes-ablations`)."""
from ifes_jax.cli.ablations import main

if __name__ == "__main__":
    main()
