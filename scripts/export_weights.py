"""Export a trained model's parameters and config into a folder (by default the package's
shipped weights, ifes_jax/weights/), choosing the checkpoint with the lowest validation loss.

python scripts/export_weights.py --workdir runs/tno_cpu [--step N] [--out ifes_jax/weights]
"""
from ifes_jax.cli.export_weights import main

if __name__ == "__main__":
    main()
