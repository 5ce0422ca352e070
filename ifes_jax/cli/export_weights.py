"""Export a trained model's parameters and config into a folder (by default the package's
shipped weights, ifes_jax/weights/), choosing the checkpoint with the lowest validation loss.

python scripts/export_weights.py --workdir runs/tno_cpu [--step N] [--out ifes_jax/weights]
"""
import argparse
import json
import os


def best_step(workdir):
    """The saved step with the lowest val_loss in metrics.jsonl (else the latest)."""
    saved = {int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()}
    rows = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    scored = [(r["val_loss"], r["step"]) for r in rows if "val_loss" in r and r["step"] in saved]
    return min(scored)[1] if scored else max(saved)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int, help="default: the best by validation loss")
    p.add_argument("--out", default=None, help="default: ifes_jax/weights")
    args = p.parse_args(argv)
    from ifes_jax import fuse
    step = args.step if args.step is not None else best_step(args.workdir)
    out = args.out or fuse.SHIPPED_WEIGHTS
    fuse.export(fuse.load(args.workdir, step), out)
    write_checksum(out)
    print(f"exported step {step} of {args.workdir} to {out}")


def write_checksum(folder, seed=4242, height=96, width=128):
    """The fusion of a fixed synthetic pair by the exported model: the test suite checks that
    the shipped weights reproduce it."""
    import hashlib
    import numpy as np
    from ifes_jax import fuse
    from ifes_jax.data.synthetic import synthetic_pair
    fused = fuse.load_exported(folder)(*synthetic_pair(seed, height, width))["fused"]
    pixels = np.rint(np.clip(fused, 0, 1) * 255).astype(np.uint8)
    with open(os.path.join(folder, "checksum.json")) as f:
        record = json.load(f)  # the weights' own digest, written by fuse.export
    record |= {"seed": seed, "height": height, "width": width, "mean": float(fused.mean()),
               "std": float(fused.std()), "pixel_sum": int(pixels.sum(dtype=np.int64)),
               "sha256_8bit": hashlib.sha256(pixels.tobytes()).hexdigest()}
    with open(os.path.join(folder, "checksum.json"), "w") as f:
        json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
