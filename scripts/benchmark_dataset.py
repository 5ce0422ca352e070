"""Benchmark rows for LLVIP-sized data (the `dataset` case of scripts/benchmark.py): a synthetic
folder in LLVIP's layout (infrared/train/, visible/train/, JPEG, colour visible) is built into a
tfds dataset in a fresh process (build seconds and disk per 1,000 pairs, that process's peak
RSS), then read as training batches with and without grain worker processes (batches/s): once
with zstd-compressed records (the default), once with raw ones (`data.cache_compression=none`).
Records are tiles of `data.cache_tile` (128) pixels, so a crop reads only the tiles under it.

python scripts/benchmark_dataset.py [--pairs 200] [--height 1024 --width 1280] [--tiny]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def write_release(root, pairs: int, height: int, width: int):
    """`pairs` JPEG pairs of smooth random images with fine noise, in LLVIP's layout."""
    rng = np.random.default_rng(0)
    for sub in ("infrared/train", "visible/train"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(pairs):
        coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 4), dtype=np.uint8)
        big = np.kron(coarse, np.ones((16, 16, 1), np.uint8))[:height, :width]
        big = np.clip(big + rng.integers(-8, 9, big.shape), 0, 255).astype(np.uint8)
        Image.fromarray(big[..., 0]).save(os.path.join(root, "infrared/train", f"{i:06d}.jpg"), quality=90)
        Image.fromarray(big[..., 1:]).save(os.path.join(root, "visible/train", f"{i:06d}.jpg"), quality=90)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batches_per_second(source, crop: int, batch: int, workers: int, threads: int,
                       count: int) -> float:
    from ifes_jax.data import pipeline
    ds = pipeline.training_dataset(source, seed=0, batch_size=batch, crop=crop)
    it = pipeline.iterator(ds, workers=workers, read_threads=threads)
    for _ in range(2 + workers):  # worker start-up is not counted
        next(it)
    start = time.perf_counter()
    for _ in range(count):
        next(it)
    seconds = time.perf_counter() - start
    it.close()
    return count / seconds


def measure(folder, cache, crop, batch, workers, count):
    """In this (fresh) process: build, then read, with zstd-compressed and with raw records.
    Returns the rows."""
    from absl import flags
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    from ifes_jax.data import pipeline, tfds_pairs
    pairs = len(os.listdir(os.path.join(folder, "infrared", "train")))
    size = Image.open(os.path.join(folder, "infrared", "train", "000000.jpg")).size
    rows = []
    for compression in tfds_pairs.COMPRESSIONS:
        before = peak_rss_mb()
        start = time.perf_counter()
        builder = tfds_pairs.prepare(folder, cache, compression=compression, log=lambda msg: None)
        build_s = time.perf_counter() - start
        rows.append({"case": f"dataset build, {pairs} pairs {size[0]}x{size[1]} JPEG, "
                             f"records {compression}, tiles {tfds_pairs.TILE}",
                     "kind": "input pipeline", "seconds": build_s,
                     "seconds_per_1000_pairs": build_s * 1000 / pairs,
                     "disk_mb_per_1000_pairs": _folder_mb(builder.data_dir) * 1000 / pairs,
                     "host_peak_rss_mb": peak_rss_mb(), "rss_before_build_mb": before})
        source = pipeline.tfds_source(builder)
        # the default (2 read threads), grain's default of 16 threads, and worker processes
        for n, threads in dict.fromkeys([(0, 2), (0, 16), (workers, 2)]):
            rate = batches_per_second(source, crop, batch, n, threads, count)
            rows.append({"case": f"dataset read {crop}² x {batch}, records {compression}, "
                                 f"tiles {tfds_pairs.TILE}, {n} worker processes x "
                                 f"{threads} threads",
                         "kind": "input pipeline", "seconds": 1 / rate, "batches_per_s": rate,
                         "host_peak_rss_mb": peak_rss_mb()})
    return rows


def _folder_mb(folder) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder)
               for f in files) / 2 ** 20


def rows(tiny: bool, pairs: int = 200, height: int = 1024, width: int = 1280, workers: int = 2):
    """The rows, measured in a child process on a folder written here."""
    if tiny:
        pairs, height, width = 4, 48, 64
    crop, batch, count = (16, 2, 3) if tiny else (256, 8, 100)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "llvip")
        write_release(folder, pairs, height, width)
        out = os.path.join(tmp, "rows.json")
        subprocess.run([sys.executable, os.path.abspath(__file__), "--child", folder,
                        "--cache", os.path.join(tmp, "cache"), "--crop", str(crop),
                        "--batch", str(batch), "--workers", str(workers),
                        "--count", str(count), "--out", out], check=True)
        with open(out) as f:
            return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)  # the folder, measured in this process
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--crop", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        result = measure(args.child, args.cache, args.crop, args.batch, args.workers, args.count)
        with open(args.out, "w") as f:
            json.dump(result, f)
        return
    for row in rows(args.tiny, args.pairs, args.height, args.width, args.workers):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
