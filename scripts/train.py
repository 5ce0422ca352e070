"""`python scripts/train.py --help`: the command of ifes_jax/cli/train.py (also `ifes-train`)."""
from ifes_jax.cli.train import main

if __name__ == "__main__":
    main()
