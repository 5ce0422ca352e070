"""Fuse infrared/visible pairs with a trained IFESNet.

One pair:      python scripts/fuse.py --checkpoint RUN --ir A.png --vis B.png --out F.png
Two folders:   python scripts/fuse.py --checkpoint RUN --ir-dir IR/ --vis-dir VIS/ --out-dir OUT/
(pairs matched by file name; outputs are PNGs named after the pair)
"""
import argparse
import os
import sys
import warnings


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint",
                   help="a training workdir, checkpoint folder or folder of exported weights "
                        "(default: the weights shipped with the package)")
    p.add_argument("--ir", help="infrared image (one pair)")
    p.add_argument("--vis", help="visible image (one pair)")
    p.add_argument("--out", help="fused PNG (one pair)")
    p.add_argument("--ir-dir", help="folder of infrared images (folder mode)")
    p.add_argument("--vis-dir", help="folder of visible images, same names (folder mode)")
    p.add_argument("--out-dir", help="folder for the fused PNGs (folder mode)")
    p.add_argument("--save-weights", action="store_true", help="also write the two weight maps")
    p.add_argument("--smooth-weights", action="store_true",
                   help="smooth the weight maps with a 5x5 Gaussian of variance 2 before fusing")
    p.add_argument("--bit-depth", type=int, choices=[8, 16], default=8, help="output bit depth")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--skip-bad", action="store_true",
                   help="folder mode: carry on past a failing pair (summary, exit code 1)")
    p.add_argument("--device", choices=["cpu", "gpu", "tpu"], help="JAX platform (default: best available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="compute dtype")
    p.add_argument("--tile", type=int, default=1024, help="fuse larger images in tiles of this size")
    args = p.parse_args(argv)
    single = [args.ir, args.vis, args.out]
    folder = [args.ir_dir, args.vis_dir, args.out_dir]
    if any(single) == any(folder) or not (all(single) or all(folder)):
        p.error("give either --ir, --vis and --out, or --ir-dir, --vis-dir and --out-dir")
    return args


def load_model(fuse, args):
    options = dict(half_precision=args.dtype == "bfloat16", tile=args.tile)
    if args.checkpoint:
        return fuse.load(args.checkpoint, **options)
    return fuse.load_exported(**options)


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def main(argv=None):
    args = parse_args(argv)
    if args.device:
        os.environ["JAX_PLATFORMS"] = args.device
    from absl import logging
    logging.set_verbosity(logging.ERROR)
    from ifes_jax import compilation_cache, fuse
    from ifes_jax.data import pairs
    from ifes_jax.errors import InputError
    compilation_cache.enable()
    warnings.simplefilter("always")
    warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
    options = dict(bit_depth=args.bit_depth, save_weights=args.save_weights,
                   smooth_weights=args.smooth_weights, overwrite=args.overwrite)
    try:
        if args.ir:
            for source in (args.ir, args.vis):
                if os.path.exists(args.out) and os.path.samefile(args.out, source):
                    raise InputError(f"{args.out}: the output would overwrite an input")
            fuser = load_model(fuse, args)
            fuse.fuse_files(fuser, args.ir, args.vis, args.out, **options)
            print(f"wrote {args.out}")
            return
        for folder in (args.ir_dir, args.vis_dir):
            if _inside(args.out_dir, folder):
                raise InputError(f"{args.out_dir}: the output folder is inside the input folder {folder}")
        found = pairs.pair_folders(args.ir_dir, args.vis_dir)
        fuser = load_model(fuse, args)
    except InputError as exc:
        sys.exit(f"error: {exc}")

    from tqdm import tqdm
    os.makedirs(args.out_dir, exist_ok=True)
    # pairs of one size follow each other: each size compiles once and stays cached
    found.sort(key=lambda p: (pairs.image_size(p.ir_path), p.name))
    failed = []
    for pair in tqdm(found, desc="fuse", unit="pair", disable=len(found) < 2):
        out = os.path.join(args.out_dir, pair.name + ".png")
        try:
            fuse.fuse_files(fuser, pair.ir_path, pair.vis_path, out, **options)
        except InputError as exc:
            if not args.skip_bad:
                sys.exit(f"error: pair {pair.name}: {exc}")
            failed.append((pair.name, str(exc)))
    print(f"fused {len(found) - len(failed)} of {len(found)} pairs into {args.out_dir}")
    if failed:
        for name, why in failed:
            print(f"failed: {name}: {why}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
