"""Train IFESNet: python scripts/train.py --config configs/quickstart.py --workdir DIR
[--config.train.steps=N ...]. Training an existing workdir again resumes it.

Several hosts: start one process per host with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I (or the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID environment variables)."""
import signal
import sys

STOP = {"requested": False}


def main():
    # a SIGTERM from here on (start-up included) stops the run cleanly, with exit status 0
    signal.signal(signal.SIGTERM, lambda signum, frame: STOP.update(requested=True))
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file (e.g. configs/quickstart.py).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and images are written.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for several hosts.")
    flags.DEFINE_integer("num_processes", None, "Number of processes, for several hosts.")
    flags.DEFINE_integer("process_id", None, "This process's index, for several hosts.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(_train)


def _train(argv):
    from absl import app, flags, logging
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    from ifes_jax import cpu, parallel, train
    from ifes_jax.errors import InputError
    FLAGS = flags.FLAGS
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    cpu.configure_process()  # process-wide CPU settings (glibc's malloc); nothing elsewhere
    stop = train.StopRequest().install()
    stop.requested = STOP["requested"]
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir, stop)
    except (InputError, train.NonFiniteLossError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
