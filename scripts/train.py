"""Train IFESNet: python scripts/train.py --config configs/quickstart.py --workdir DIR
[--config.train.steps=N ...]. Training an existing workdir again resumes it."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ifes_jax import train  # noqa: E402
from ifes_jax.data.images import DataError  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file (e.g. configs/quickstart.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and images are written.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    try:
        train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except DataError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    app.run(main)
