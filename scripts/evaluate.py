"""`python scripts/evaluate.py --help`: the command of ifes_jax/cli/evaluate.py (also `ifes-evaluate`)."""
from ifes_jax.cli.evaluate import main

if __name__ == "__main__":
    main()
