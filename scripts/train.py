"""Train IFESNet: python scripts/train.py --config configs/quickstart.py --workdir DIR
[--config.train.steps=N ...]. Training an existing workdir again resumes it.

Several hosts: start one process per host with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I (or the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID environment variables)."""
from ifes_jax.cli.train import main

if __name__ == "__main__":
    main()
