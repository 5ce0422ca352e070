"""The command-line entry points (`scripts/*.py` and the `ifes-*` commands run these)."""
import argparse
import os
import sys


def fail(message: str, hard: bool) -> None:
    """Exit with `message` as the one line on stderr. `hard` (a real command-line run): at once,
    as a failed orbax restore leaves tensorstore threads that would print asyncio tracebacks
    into the output during interpreter shutdown; otherwise (main called from Python) by
    SystemExit."""
    if not hard:
        sys.exit(message)
    sys.stdout.flush()
    sys.stderr.flush()
    line = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # those threads' last words now go nowhere
    os.write(line, (message + "\n").encode())
    os._exit(1)


def add_max_pixels(parser: argparse.ArgumentParser) -> None:
    """The --max-pixels flag of the commands that read images (checked from each header)."""
    from ifes_jax.data.images import MAX_PIXELS

    def positive(text):
        value = int(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {value}")
        return value

    parser.add_argument("--max-pixels", type=positive, default=MAX_PIXELS,
                        help=f"refuse images of more pixels than this, read from the header "
                             f"(default {MAX_PIXELS / 1e6:.0f} M)")
