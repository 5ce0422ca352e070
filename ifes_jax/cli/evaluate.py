"""Score fusion methods on a folder of pairs and write a paper-style table:

python scripts/evaluate.py --data DIR --methods average,max,laplacian,target,ckpt:PATH,dir:PATH
    --profile paper|default|vifb|cddfuse --out DIR [--pairs 001..020] [--quantize] [--skip-bad]
    [--maps]
"""
import argparse
import os
import sys

from ifes_jax.cli import add_max_pixels, fail


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True,
                   help="a pairs folder: ir/ + vis/ with matching names, or a release layout "
                        "(MSRS, LLVIP, M3FD, RoadScene, CDDFuse; see ifes_jax/data/layouts.py)")
    p.add_argument("--split", help="of a folder released as train/ + test/: which (default: test)")
    p.add_argument("--ir-subdir", help="the infrared subfolder (default: found by name)")
    p.add_argument("--vis-subdir", help="the visible subfolder (default: found by name)")
    p.add_argument("--methods", default="average,max,laplacian,target",
                   help="comma list: average, max, laplacian, target, ckpt:PATH, dir:PATH")
    p.add_argument("--profile", choices=["paper", "default", "vifb", "cddfuse"], default="paper",
                   help="metric set and conventions (default: paper)")
    p.add_argument("--out", required=True, help="folder for table.md, per_pair.csv, results.json, figure.png")
    p.add_argument("--pairs", help="pairs to use: names and ranges 'a..b', comma separated, or @listfile")
    p.add_argument("--quantize", action="store_true",
                   help="score built-in methods on the 8-bit image they would save, not the float fusion")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip pairs that fail (listed; exit code 1) instead of stopping")
    p.add_argument("--figure-pairs", type=int, default=3, help="pairs shown in figure.png")
    p.add_argument("--maps", action="store_true",
                   help="also write each method's per-pixel metric maps (SSIM, Qabf, MEF-SSIM, "
                        "VIFF per scale) as PNGs in OUT/maps/PAIR/")
    add_max_pixels(p)
    return p.parse_args(argv)


def main(argv=None):
    hard_exit = argv is None
    args = parse_args(argv)
    from absl import logging
    logging.set_verbosity(logging.ERROR)
    from ifes_jax import compilation_cache, evaluate
    from ifes_jax.errors import InputError
    compilation_cache.enable()
    try:
        results = evaluate.evaluate(args.data, evaluate.parse_methods(args.methods), args.out,
                                    profile=args.profile, quantize=args.quantize,
                                    skip_bad=args.skip_bad, pair_spec=args.pairs,
                                    figure_pairs=args.figure_pairs, max_pixels=args.max_pixels,
                                    maps=args.maps, split=args.split,
                                    ir_subdir=args.ir_subdir, vis_subdir=args.vis_subdir,
                                    log=lambda msg: print(msg, file=sys.stderr))
    except InputError as exc:
        fail(f"error: {exc}", hard_exit)
    with open(os.path.join(args.out, "table.md")) as f:
        print(f.read())
    meta = results["meta"]
    print(f"{meta['pairs']} pairs in {meta['seconds']:.1f} s; written to {args.out}")
    if meta["skipped"]:
        print(f"{len(meta['skipped'])} pair(s) skipped: " + ", ".join(n for n, _ in meta["skipped"]),
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
