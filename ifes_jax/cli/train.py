"""Train IFESNet: python scripts/train.py --config configs/quickstart.py --workdir DIR
[--config.train.steps=N ...]. Training an existing workdir again resumes it.

Several hosts: start one process per host with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I (or the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID environment variables)."""
import os
import signal
import sys

STOP = {"requested": False}


def main():
    # a SIGTERM from here on (start-up included) stops the run cleanly, with exit status 0
    signal.signal(signal.SIGTERM, lambda signum, frame: STOP.update(requested=True))
    _check_config_file(sys.argv[1:])
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file (e.g. configs/quickstart.py).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and images are written.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for several hosts.")
    flags.DEFINE_integer("num_processes", None, "Number of processes, for several hosts.")
    flags.DEFINE_integer("process_id", None, "This process's index, for several hosts.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(_train, flags_parser=_parse_flags)


def _check_config_file(args):
    """A --config file that does not exist, as one line (the flag library prints a traceback)."""
    for i, arg in enumerate(args):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else (
            args[i + 1] if arg == "--config" and i + 1 < len(args) else None)
        if path is not None and not os.path.isfile(path.split(":")[0]):
            sys.exit(f"error: --config {path}: no such file")


def _parse_flags(argv):
    """absl's flag parsing, with a bad --config override as one line."""
    from absl import flags
    try:
        return flags.FLAGS(argv)
    except flags.Error as exc:  # e.g. a config file that is missing or fails to load: its last line
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        sys.exit(f"error: {lines[0] if len(lines) == 1 else lines[0].split(':')[0] + ': ' + lines[-1]}")
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        sys.exit(f"error: a --config override names no config field or has a bad value "
                 f"({type(exc).__name__}: {str(exc).strip(chr(34))}; overrides: {', '.join(overrides)})")


def _train(argv):
    from absl import app, flags, logging
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    from ifes_jax import cpu, parallel, train
    from ifes_jax.cli import fail
    from ifes_jax.errors import InputError
    FLAGS = flags.FLAGS
    cpu.configure_process()  # process-wide CPU settings (glibc's malloc); starts no backend
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    stop = train.StopRequest().install()
    stop.requested = stop.requested or STOP["requested"]
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir, stop)
    except (InputError, train.NonFiniteLossError) as exc:  # after teardown, so exiting at once is safe
        fail(f"error: {exc}", hard=True)
    except KeyboardInterrupt:
        sys.stderr.write(f"interrupted: {FLAGS.workdir}/checkpoints keeps the last complete checkpoint\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
