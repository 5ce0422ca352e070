"""The command-line entry points (`scripts/*.py` and the `ifes-*` commands run these)."""
import argparse


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
