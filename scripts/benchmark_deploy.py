"""Benchmark rows for deployment (the `deploy` case of scripts/benchmark.py), with the shipped
weights: one 640x480 pair through the package (`Fuser`, this platform's convolutions), its
StableHLO export (`jax.export`, XLA's convolutions) and its ONNX export in onnxruntime (CPU);
then two synthetic H.264 videos fused end to end (decode, network, encode) in frames/s.

python scripts/benchmark_deploy.py [--frames 48] [--tiny]
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _median_seconds(fn, repeats):
    fn()  # compile / warm up
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def _row(case, seconds, height, width, **extra):
    return {"case": case, "kind": "deployment", "seconds": seconds, "images_per_s": 1 / seconds,
            "megapixels_per_s": height * width / 1e6 / seconds, **extra}


def export_rows(fuser, height, width, repeats, folder):
    import jax
    import onnxruntime
    from ifes_jax import export
    from ifes_jax.data.synthetic import synthetic_pair
    ir, vis = (x[None, ..., None] for x in synthetic_pair(0, height, width))
    size = f"{width}x{height}"
    rows = [_row(f"package (Fuser) {size}", _median_seconds(lambda: fuser(ir, vis), repeats), height, width)]
    zip_path, onnx_path = os.path.join(folder, "m.zip"), os.path.join(folder, "m.onnx")
    export.export_stablehlo(fuser, zip_path, platforms=(jax.default_backend(),))
    program, _ = export.load_stablehlo(zip_path)
    call = lambda: jax.block_until_ready(program.call(ir, vis))
    rows.append(_row(f"StableHLO export {size}", _median_seconds(call, repeats), height, width))
    export.export_onnx(fuser, onnx_path)
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    run = lambda: session.run(None, {"ir": ir, "vis": vis})
    rows.append(_row(f"ONNX in onnxruntime {onnxruntime.__version__} (CPU) {size}",
                     _median_seconds(run, repeats), height, width))
    return rows


def write_videos(folder, frames, height, width, rate=30):
    """An infrared (gray) and a visible (colour) H.264 video of moving synthetic scenes."""
    import av
    from ifes_jax.data.synthetic import synthetic_pair
    ir0, vis0 = synthetic_pair(0, height, width + frames)
    paths = [os.path.join(folder, n) for n in ("ir.mp4", "vis.mp4")]
    for path, base, color in ((paths[0], ir0, False), (paths[1], vis0, True)):
        with av.open(path, "w") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(frames):  # the scene pans one pixel a frame
                pixels = np.rint(base[:, i:i + width] * 255).astype(np.uint8)
                if color:
                    pixels = np.stack([pixels, pixels // 2 + 60, 255 - pixels], -1)
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24" if color else "gray")
                container.mux(stream.encode(frame.reformat(format="yuv420p")))
            container.mux(stream.encode())
    return paths


def video_row(fuser, frames, height, width, folder):
    from ifes_jax import video
    ir, vis = write_videos(folder, frames, height, width)
    batch = video.default_batch()
    blank = np.zeros((batch, height, width), np.float32)
    fuser(blank, blank)  # compiled before the clock starts
    t = time.perf_counter()
    video.fuse_videos(fuser, ir, vis, os.path.join(folder, "fused.mp4"), batch=batch, progress=False)
    seconds = (time.perf_counter() - t) / frames
    return _row(f"video {width}x{height}, {frames} H.264 frames, batch {batch}, end to end "
                "(decode, network, encode)", seconds, height, width, frames_per_s=1 / seconds)


def rows(tiny: bool, frames: int = 48, height: int = 480, width: int = 640, repeats: int = 5):
    from ifes_jax import fuse
    if tiny:
        frames, height, width, repeats = 3, 48, 64, 1
    fuser = fuse.load_exported()
    with tempfile.TemporaryDirectory() as folder:
        return export_rows(fuser, height, width, repeats, folder) + [
            video_row(fuser, frames, height, width, folder)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args()
    for row in rows(args.tiny, frames=args.frames):
        extra = f", {row['frames_per_s']:.2f} frames/s" if "frames_per_s" in row else ""
        print(f"{row['case']}: {row['seconds'] * 1e3:.1f} ms per pair{extra}")


if __name__ == "__main__":
    main()
