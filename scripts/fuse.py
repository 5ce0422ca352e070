"""`python scripts/fuse.py --help`: the command of ifes_jax/cli/fuse.py (also `ifes-fuse`)."""
from ifes_jax.cli.fuse import main

if __name__ == "__main__":
    main()
