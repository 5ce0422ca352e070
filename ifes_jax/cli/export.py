"""Export a trained IFESNet for deployment: a StableHLO program that only jax and numpy run,
and an ONNX model for onnxruntime (needs the `[export]` extra: jax2onnx, onnx).

python scripts/export.py [--checkpoint RUN] --out DIR [--format stablehlo,onnx]
                         [--dtype float32|bfloat16] [--no-weights]

writes DIR/ifesnet.stablehlo.zip and DIR/ifesnet.onnx (default: the shipped weights). Both
take (batch, height, width, 1) float32 images in [0, 1] named ir and vis, of any size, and
return the fused image (and the two weight maps unless --no-weights).
"""
import argparse
import os

from ifes_jax.cli import fail

FILES = {"stablehlo": "ifesnet.stablehlo.zip", "onnx": "ifesnet.onnx"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a training workdir, checkpoint folder or folder of "
                                        "exported weights (default: the shipped weights)")
    p.add_argument("--out", required=True, help="folder for the artefacts")
    p.add_argument("--format", default="stablehlo,onnx", help="comma-separated: stablehlo, onnx")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="compute dtype (inputs and outputs stay float32)")
    p.add_argument("--no-weights", action="store_true", help="output the fused image only")
    p.add_argument("--platforms", default="cpu,cuda", help="StableHLO: platforms to lower for")
    p.add_argument("--overwrite", action="store_true", help="replace existing artefacts")
    args = p.parse_args(argv)
    args.formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = sorted(set(args.formats) - set(FILES))
    if unknown or not args.formats:
        p.error(f"--format: unknown {', '.join(unknown) or '(none given)'} (choose from {', '.join(FILES)})")
    return args


def main(argv=None):
    hard_exit = argv is None
    args = parse_args(argv)
    from absl import logging
    logging.set_verbosity(logging.ERROR)
    from ifes_jax import export, fuse
    from ifes_jax.errors import InputError
    try:
        paths = {f: os.path.join(args.out, FILES[f]) for f in args.formats}
        fuse.check_outputs(list(paths.values()), [], args.overwrite)
        if "onnx" in paths:
            export.check_onnx_dtype(args.dtype)  # before anything is written
        fuser = fuse.load(args.checkpoint) if args.checkpoint else fuse.load_exported()
        options = dict(dtype=args.dtype, with_weights=not args.no_weights)
        for fmt, path in paths.items():
            if fmt == "stablehlo":
                platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
                meta = export.export_stablehlo(fuser, path, platforms=platforms, **options)
            else:
                meta = export.export_onnx(fuser, path, **options)
            print(f"wrote {path} ({meta['dtype']}, outputs {', '.join(meta['outputs'])}, "
                  f"params sha256 {meta['params_sha256'][:12]})")
    except InputError as exc:
        fail(f"error: {exc}", hard_exit)


if __name__ == "__main__":
    main()
