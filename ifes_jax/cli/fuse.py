"""Fuse infrared/visible pairs with a trained IFESNet.

One pair:      python scripts/fuse.py --checkpoint RUN --ir A.png --vis B.png --out F.png
Two folders:   python scripts/fuse.py --checkpoint RUN --ir-dir IR/ --vis-dir VIS/ --out-dir OUT/
A dataset:     python scripts/fuse.py --checkpoint RUN --data MSRS/ [--split test] --out-dir OUT/
Two videos:    python scripts/fuse.py --checkpoint RUN --ir-video A.mp4 --vis-video B.mp4 --out F.mp4
(a video is any file FFmpeg reads, or a folder of frames in name order; the output plays at
the visible stream's rate and keeps its colour; needs the [video] extra, PyAV)
(pairs matched by file name; outputs are PNGs named after the pair; --data takes any layout
of ifes_jax/data/layouts.py)
"""
import argparse
import os
import sys
import warnings

from ifes_jax.cli import add_max_pixels, fail


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint",
                   help="a training workdir, checkpoint folder or folder of exported weights "
                        "(default: the weights shipped with the package)")
    p.add_argument("--ir", help="infrared image (one pair)")
    p.add_argument("--vis", help="visible image (one pair)")
    p.add_argument("--out", help="fused PNG (one pair) or video (two videos)")
    p.add_argument("--ir-video", help="infrared video file or folder of frames (video mode)")
    p.add_argument("--vis-video", help="visible video file or folder of frames (video mode)")
    p.add_argument("--trim", action="store_true",
                   help="video mode: fuse the first frames of the longer stream (else refused)")
    p.add_argument("--fps", type=float, help="video mode, two frame folders: output rate (default 25)")
    p.add_argument("--batch", type=int,
                   help="video mode: frames per network call (default: 8 on an accelerator, "
                        "1 on a CPU, where larger batches are slower)")
    p.add_argument("--codec", default="libx264", help="video mode: FFmpeg encoder of the output")
    p.add_argument("--ir-dir", help="folder of infrared images (folder mode)")
    p.add_argument("--vis-dir", help="folder of visible images, same names (folder mode)")
    p.add_argument("--data", help="a pairs folder in any release layout (folder mode)")
    p.add_argument("--split", help="with --data released as train/ + test/: which (default: test)")
    p.add_argument("--ir-subdir", help="with --data: the infrared subfolder (default: found by name)")
    p.add_argument("--vis-subdir", help="with --data: the visible subfolder (default: found by name)")
    p.add_argument("--out-dir", help="folder for the fused PNGs (folder mode)")
    p.add_argument("--save-weights", action="store_true", help="also write the two weight maps")
    p.add_argument("--smooth-weights", action="store_true",
                   help="smooth the weight maps with a 5x5 Gaussian of variance 2 before fusing")
    p.add_argument("--normalize", choices=["none", "minmax"], default="none",
                   help="images: minmax stretches each fused image to the full range, as "
                        "CDDFuse's test script does before saving (default: none, eq. 4 as it is)")
    p.add_argument("--bit-depth", type=int, choices=[8, 16], default=8, help="output bit depth")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--skip-bad", action="store_true",
                   help="folder mode: carry on past a failing pair (summary, exit code 1)")
    p.add_argument("--device", choices=["cpu", "gpu", "tpu"], help="JAX platform (default: best available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="compute dtype")
    p.add_argument("--tile", type=int, default=1024, help="fuse larger images in tiles of this size")
    add_max_pixels(p)
    args = p.parse_args(argv)
    single = [args.ir, args.vis, args.out]
    videos = [args.ir_video, args.vis_video, args.out]
    folders = [args.ir_dir, args.vis_dir, args.out_dir]
    dataset = [args.data, args.out_dir]
    modes = [all(single), all(videos), all(folders) and not args.data, all(dataset) and not args.ir_dir]
    given = [any([args.ir, args.vis]), any([args.ir_video, args.vis_video]),
             any([args.ir_dir, args.vis_dir, args.out_dir, args.data])]
    if sum(modes) != 1 or sum(given) != 1:
        p.error("give either --ir, --vis and --out, or --ir-video, --vis-video and --out, "
                "or --ir-dir, --vis-dir and --out-dir, or --data and --out-dir")
    if (args.trim or args.fps is not None) and not args.ir_video:
        p.error("--trim and --fps go with --ir-video and --vis-video")
    if (args.split or args.ir_subdir or args.vis_subdir) and not args.data:
        p.error("--split, --ir-subdir and --vis-subdir go with --data")
    return args


def load_model(fuse, args):
    options = dict(half_precision=args.dtype == "bfloat16", tile=args.tile, progress=True)
    if args.checkpoint:
        return fuse.load(args.checkpoint, **options)
    return fuse.load_exported(**options)


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def main(argv=None):
    hard_exit = argv is None
    args = parse_args(argv)
    if args.device:
        os.environ["JAX_PLATFORMS"] = args.device
    from absl import logging
    logging.set_verbosity(logging.ERROR)
    from ifes_jax import compilation_cache, fuse
    from ifes_jax.errors import InputError
    warnings.simplefilter("always")
    warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
    try:
        _check_device(args.device)
        compilation_cache.enable()
        if args.ir:
            fuse_one(fuse, args)
        elif args.ir_video:
            fuse_video(fuse, args)
        else:
            fuse_folders(fuse, args)
    except InputError as exc:
        fail(f"error: {exc}", hard_exit)


def _check_device(device):
    import jax
    from ifes_jax.errors import InputError
    try:
        jax.devices()
    except RuntimeError as exc:
        raise InputError(f"--device {device}: no such device here ({str(exc).splitlines()[0]})") from None


def _options(args):
    return dict(bit_depth=args.bit_depth, save_weights=args.save_weights,
                smooth_weights=args.smooth_weights, overwrite=args.overwrite,
                max_pixels=args.max_pixels, normalize=args.normalize)


def fuse_one(fuse, args):
    fuse.check_outputs(fuse.output_paths(args.out, args.save_weights), [args.ir, args.vis],
                       args.overwrite)
    fuser = load_model(fuse, args)
    fuse.fuse_files(fuser, args.ir, args.vis, args.out, **_options(args))
    print(f"wrote {args.out}")


def fuse_video(fuse, args):
    from ifes_jax import video
    from ifes_jax.errors import InputError
    if args.bit_depth != 8:
        raise InputError("--bit-depth 16 is for images: videos are written in 8 bits")
    if args.normalize != "none":  # a per-frame stretch would make the video flicker
        raise InputError("--normalize is for images: video frames are written as fused")
    ir, vis = video.probe(args.ir_video), video.probe(args.vis_video)
    video.check_streams(ir, vis, args.trim)
    video.output_rate(ir, vis, args.fps)  # checked before the model loads
    fuse.check_outputs(video.output_paths(args.out, args.save_weights),
                       [args.ir_video, args.vis_video], args.overwrite)
    fuser = load_model(fuse, args)
    done = video.fuse_videos(fuser, ir, vis, args.out,  # the streams probed above
                             batch=video.default_batch() if args.batch is None else args.batch,
                             trim=args.trim, save_weights=args.save_weights,
                             smooth_weights=args.smooth_weights, fps=args.fps,
                             overwrite=args.overwrite, codec=args.codec, max_pixels=args.max_pixels)
    print(f"wrote {args.out}: {done['frames']} frames at {float(done['rate']):g} fps")


def _input_folders(args):
    """The infrared and visible folders: given, or those of the --data layout (printed)."""
    if not args.data:
        return args.ir_dir, args.vis_dir
    from ifes_jax.data import layouts
    layout = layouts.find_layout(args.data, args.ir_subdir, args.vis_subdir)
    _, folders, said = layout.chosen(args.split)
    print(f"layout of {said}", file=sys.stderr)
    return folders


def fuse_folders(fuse, args):
    from tqdm import tqdm
    from ifes_jax.data import pairs
    from ifes_jax.errors import DataError, InputError
    ir_dir, vis_dir = _input_folders(args)
    for folder in (ir_dir, vis_dir):
        if _inside(args.out_dir, folder):
            raise InputError(f"{args.out_dir}: the output folder is inside the input folder {folder}")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise InputError(f"{args.out_dir}: exists and is not a folder")
    found = pairs.pair_folders(ir_dir, vis_dir)
    fuser = load_model(fuse, args)
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{args.out_dir}: cannot be created ({exc.strerror or exc})") from None

    def size(pair):  # pairs of one size follow each other: each size compiles once
        try:
            return pairs.image_size(pair.ir_path)
        except DataError:
            return (0, 0)  # reported when the pair is read

    failed = []
    for pair in tqdm(sorted(found, key=lambda p: (size(p), p.name)), desc="fuse", unit="pair",
                     disable=len(found) < 2):
        try:
            fuse.fuse_files(fuser, pair.ir_path, pair.vis_path,
                            os.path.join(args.out_dir, pair.name + ".png"), **_options(args))
        except InputError as exc:
            if not args.skip_bad:
                raise InputError(f"pair {pair.name}: {exc}") from None
            failed.append((pair.name, str(exc)))
    print(f"fused {len(found) - len(failed)} of {len(found)} pairs into {args.out_dir}")
    if failed:
        for name, why in failed:
            print(f"failed: {name}: {why}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
