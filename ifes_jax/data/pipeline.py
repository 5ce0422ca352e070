"""The training input pipeline (grain): shuffle per epoch, repeat, same-position random crops of
both sources with flips and 90° rotations, float [0, 1] gray images (a colour visible image is
reduced to its BT.601 Y), batches, and a prefetch onto the device.

Sources are random-access sequences of records in one layout: {"name", "ir", "vis" (uint
(H, W) or (H, W, 3)), "ir_mode", "vis_mode", "ir_bit_depth", "vis_bit_depth"}, which also give
a pair's `size(i)` and a `window(i, top, left, height, width)` of it: a crop reads only its
window. A tfds split of a pairs folder (`tfds_pairs.TiledPairs`, read tile by tile) and the
built-in synthetic pairs (`RecordSource`) are two such sources. Batch k of the dataset is a
pure function of (seed, k), and the iterator's state is its next index, so a resumed run
continues with exactly the next batch.
"""
from __future__ import annotations

import logging
import os

import grain
import numpy as np

from ifes_jax.data import synthetic
from ifes_jax.data.images import luma, to_float01
from ifes_jax.errors import ConfigError

SMALL_IMAGE_POLICIES = ("pad", "skip")


class RecordSource:
    """A random-access source of records in the common layout, held whole (a list of them)."""

    def __init__(self, records):
        self._records = records

    def __len__(self):
        return len(self._records)

    def __getitem__(self, index):
        return self._records[index]

    def size(self, index) -> tuple[int, int]:
        return self._records[index]["ir"].shape[:2]

    def window(self, index, top: int, left: int, height: int, width: int) -> dict:
        record = self._records[index]
        window = (slice(top, top + height), slice(left, left + width))
        return record | {"ir": record["ir"][window], "vis": record["vis"][window]}


def synthetic_source(seed: int, count: int, size: int) -> RecordSource:
    """`count` synthetic pairs (`synthetic.synthetic_pair(seed + i)`) stored as 16-bit records."""
    records = []
    for i in range(count):
        ir, vis = synthetic.synthetic_pair(seed + i, size, size)
        to16 = lambda x: np.rint(x * 65535).astype(np.uint16)
        records.append({"name": f"synthetic_{seed + i}", "ir": to16(ir), "vis": to16(vis),
                        "ir_mode": "gray", "vis_mode": "gray",
                        "ir_bit_depth": 16, "vis_bit_depth": 16})
    return RecordSource(records)


def tfds_source(builder, split: str = "train"):
    """The pairs of a split of a `tfds_pairs.PairedFolder` dataset (a `TiledPairs`)."""
    from ifes_jax.data import tfds_pairs  # tfds is only imported when a folder is used
    return tfds_pairs.data_source(builder, split)


def gray_float(pixels, bit_depth: int) -> np.ndarray:
    """uint (H, W) or (H, W, 3) pixels as a float32 (H, W) gray image in [0, 1] (RGB → Y)."""
    return luma(to_float01(pixels, bit_depth))


def crop_pair(source, index: int, rng: np.random.Generator, crop: int, *, flips: bool = True,
              rotations: bool = True):
    """A `crop` x `crop` crop of pair `index` of `source` at the same random position in both
    images (read alone: `source.window`), the same random flips and 90° rotation, as float32
    gray images. Images smaller than the crop are padded by reflection."""
    height, width = source.size(index)
    top = int(rng.integers(max(height - crop, 0) + 1))
    left = int(rng.integers(max(width - crop, 0) + 1))
    record = source.window(index, top, left, crop, crop)
    ir = gray_float(record["ir"], record["ir_bit_depth"])
    vis = gray_float(record["vis"], record["vis_bit_depth"])
    if ir.shape != (crop, crop):
        pad = ((0, crop - ir.shape[0]), (0, crop - ir.shape[1]))
        ir, vis = np.pad(ir, pad, mode="reflect"), np.pad(vis, pad, mode="reflect")
    if flips and rng.integers(2):
        ir, vis = ir[:, ::-1], vis[:, ::-1]
    if flips and rng.integers(2):
        ir, vis = ir[::-1], vis[::-1]
    if rotations:
        k = int(rng.integers(4))
        ir, vis = np.rot90(ir, k), np.rot90(vis, k)
    return {"ir": np.ascontiguousarray(ir)[..., None], "vis": np.ascontiguousarray(vis)[..., None]}


def centre_crop(record, size: int):
    """The centre `size` x `size` crop of both sources as float32 gray images (reflection-padded
    when smaller): a fixed view for validation."""
    height, width = record["ir"].shape[:2]
    top, left = max(height - size, 0) // 2, max(width - size, 0) // 2
    window = (slice(top, top + size), slice(left, left + size))
    ir = gray_float(record["ir"][window], record["ir_bit_depth"])
    vis = gray_float(record["vis"][window], record["vis_bit_depth"])
    pad = ((0, size - ir.shape[0]), (0, size - ir.shape[1]))
    return np.pad(ir, pad, mode="reflect"), np.pad(vis, pad, mode="reflect")


def large_enough(source, crop: int) -> list[int]:
    """Indices of the pairs at least `crop` x `crop`."""
    return [i for i in range(len(source)) if min(source.size(i)) >= crop]


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """'PATH:WEIGHT,PATH:WEIGHT,...' (a weight may be left out: 1) as [(path, weight)]."""
    mixture = []
    for item in (part.strip() for part in spec.split(",")):
        path, sep, weight = item.rpartition(":")
        if not sep or os.sep in weight:  # no weight given (a ':' inside the path does not count)
            path, weight = item, "1"
        try:
            value = float(weight)
        except ValueError:
            value = None
        if not path or value is None or not value > 0 or not np.isfinite(value):
            raise ConfigError(f"data.dirs: {item!r} is not PATH:WEIGHT with a weight > 0 "
                              "(e.g. 'data/msrs:0.7,data/tno:0.3')")
        mixture.append((path, value))
    return mixture


def _epochs(source, *, part: int, seed: int, crop: int, small_images: str) -> grain.MapDataset:
    """(part, index) of each pair of `source`, shuffled anew each epoch from `seed`, repeated
    forever."""
    keep = list(range(len(source)))
    if small_images == "skip":
        keep = large_enough(source, crop)
        if len(keep) < len(source):
            logging.warning("skipping %d of %d pairs smaller than the %dx%d crop",
                            len(source) - len(keep), len(source), crop, crop)
        if not keep:
            raise ConfigError(f"no pair is at least {crop}x{crop}: lower data.crop_size or set "
                              "data.small_images='pad'")
    ds = grain.MapDataset.source(keep).map(lambda index: (part, index))
    return ds.seed(seed).shuffle().repeat()


def training_dataset(source, *, seed: int, batch_size: int, crop: int, flips: bool = True,
                     rotations: bool = True, small_images: str = "pad", weights=None,
                     shard_index: int = 0, shard_count: int = 1) -> grain.MapDataset:
    """The infinite MapDataset of training batches {"ir", "vis"}: float32 (B, crop, crop, 1).

    Every epoch is shuffled anew from `seed`. `source` may be a list of sources, mixed by
    `weights` (each shuffled from its own seed): the mixture is still indexed, so batch k stays
    a pure function of (seed, k). With `shard_count` > 1, `batch_size` is this process's share
    and the process takes every `shard_count`-th batch from `shard_index`, so the processes
    together read the batches one process would read with shard_count x the size.
    """
    if small_images not in SMALL_IMAGE_POLICIES:
        raise ConfigError(f"small_images must be one of {SMALL_IMAGE_POLICIES}, got {small_images!r}")
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    parts = [_epochs(s, part=i, seed=seed + i, crop=crop, small_images=small_images)
             for i, s in enumerate(sources)]
    ds = grain.MapDataset.mix(parts, weights).seed(seed) if len(parts) > 1 else parts[0]
    ds = ds.random_map(lambda item, rng: crop_pair(sources[item[0]], item[1], rng, crop,
                                                    flips=flips, rotations=rotations))
    ds = ds.batch(batch_size, drop_remainder=True)
    # local batch k of process p is batch k·P + p: together they are global batch k
    return ds.slice(slice(shard_index, None, shard_count)) if shard_count > 1 else ds


def iterator(dataset: grain.MapDataset, *, state=None, device=None, prefetch: int = 2,
             workers: int = 0, read_threads: int = 2):
    """An iterator over `dataset` that restores `state` (from `get_state()`): `read_threads`
    threads preparing crops (in each of `workers` worker processes, given some), a background
    thread batching ahead and, given `device` (a device or sharding), a transfer to it ahead
    of use. Threads share a process's GIL: past a few, more make it slower (grain's default is
    16; docs/benchmarks.md has the figures); worker processes scale."""
    it_ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                      prefetch_buffer_size=4 * read_threads))
    if workers:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    if device is not None:
        it_ds = grain.experimental.device_put(it_ds, device, cpu_buffer_size=prefetch,
                                              device_buffer_size=prefetch)
    else:
        it_ds = grain.experimental.ThreadPrefetchIterDataset(it_ds, prefetch_buffer_size=prefetch)
    it = iter(it_ds)
    if state is not None:
        it.set_state(state)
    return it
