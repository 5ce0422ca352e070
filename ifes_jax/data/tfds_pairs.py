"""A tensorflow-datasets builder for folders of infrared/visible pairs, without TensorFlow.

Written for the TF-free corners of tfds: a `GeneratorBasedBuilder` with
`file_format="array_record"` whose splits are streamed into shards as the pairs are decoded
(bounded memory, no TensorFlow), a `DatasetInfo` built directly, images stored losslessly as
tensors (uint8 where every file is 8-bit, else uint16; gray or RGB) in array_record files whose
records are zstd-compressed or raw (`compression`: raw is larger on disk, faster to read), built with
`download_and_prepare()` and read by random access (`as_data_source`).

Records are tiles: each pair is cut into `tile` x `tile` squares (smaller at its right and
bottom edges), row by row, one record per tile holding both images' pixels there. The pairs
themselves (name, size, colour modes, bit depths, first tile) are the dataset's metadata, so a
random training crop reads only the tiles under it rather than its whole pair (`TiledPairs`).
"""
from __future__ import annotations

import collections
import concurrent.futures
import os

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from ifes_jax.data import images, layouts, pairs as pairs_lib
from ifes_jax.errors import ConfigError

VERSION = "2.0.0"  # 1.1: uint8 storage for 8-bit folders, optional compression; 2.0: tiles
COMPRESSIONS = ("zstd", "none")
# array_record's options: a group of one record (random access), compressed or not
WRITER_OPTIONS = {"zstd": "group_size:1,zstd:3", "none": "group_size:1,uncompressed"}
TILE = 256  # the default side of a record's tile (docs/benchmarks.md: 128 and 256 measured)
SHARD_BYTES = 1 << 30  # an array_record file is closed once it holds this many bytes


class PairedFolderConfig(tfds.core.BuilderConfig):
    """Which folder, how to split it and what to do with pairs whose sizes differ. The config's
    name is a fingerprint of all of that and of the files, so any change builds anew."""

    def __init__(self, *, source: str, splits: dict, mismatch: str, fingerprint: str,
                 workers: int = 4, pixel_dtype: str = "uint16", compression: str = "zstd",
                 tile: int = TILE):
        super().__init__(name=f"src_{fingerprint}", version=VERSION,
                         description=f"pairs of {source} (size mismatches: {mismatch})")
        self.source = source
        self.splits = splits
        self.mismatch = mismatch
        self.workers = workers
        self.pixel_dtype = pixel_dtype
        self.compression = compression
        self.tile = tile


class PairedFolder(tfds.core.GeneratorBasedBuilder):
    """Infrared/visible pairs of one folder in any recognised layout, split as it says."""

    VERSION = tfds.core.Version(VERSION)

    @tfds.core.utils.classproperty
    @classmethod
    def _checksums_path(cls):
        # Nothing is downloaded. tfds would look for a checksums file beside the builder's code
        # through `code_path`, which imports `importlib_resources`.
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        image = tfds.features.Tensor(shape=(None, None, None), dtype=np.dtype(config.pixel_dtype),
                                     encoding="bytes")  # the pixels' bytes and their shape
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Tiles ({config.tile}x{config.tile}) of paired infrared/visible images; "
                        f"pixels as stored in the files ({config.pixel_dtype}), channels 1 (gray) "
                        "or 3 (RGB). metadata: {split: [pair]}, each pair's name, height, width, "
                        "modes, bit depths and first tile.",
            features=tfds.features.FeaturesDict({"ir": image, "vis": image}),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(members)
                for split, members in self.builder_config.splits.items()}

    def _generate_splits(self, dl_manager, download_config):
        """Each split streamed into array_record shards as its pairs are decoded, in name
        order: tfds's own writer holds a split in memory and needs TensorFlow past 1 GB."""
        return [self._write_split(split, self._generate_examples(members))
                for split, members in self.builder_config.splits.items()]

    def _write_split(self, split, examples) -> tfds.core.SplitInfo:
        """Every pair of `examples` cut into tiles, the tiles streamed into shards; the pairs
        recorded in the metadata."""
        from array_record.python.array_record_module import ArrayRecordWriter
        template = self._get_filename_template(split_name=split)
        paths, lengths, sizes, writer, pairs = [], [], [], None, []  # one entry per shard begun
        try:
            for data in self._serialized_tiles(examples, pairs):
                if writer is None or sizes[-1] >= SHARD_BYTES:
                    if writer is not None:
                        writer.close()
                    paths.append(template.data_dir / f".{split}-{len(paths):05d}.part")
                    lengths.append(0)
                    sizes.append(0)
                    writer = ArrayRecordWriter(os.fspath(paths[-1]),
                                               WRITER_OPTIONS[self.builder_config.compression])
                writer.write(data)
                lengths[-1] += 1
                sizes[-1] += len(data)
        finally:
            if writer is not None:
                writer.close()
        for i, path in enumerate(paths):  # inside tfds's temporary folder until done
            os.replace(path, template.sharded_filepath(shard_index=i, num_shards=len(paths)))
        self.info.metadata[split] = {"tile": self.builder_config.tile, "pairs": pairs}
        return tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=sum(sizes),
                                   filename_template=template)

    def _serialized_tiles(self, examples, pairs: list):
        """The records of every tile of `examples`, in order; each pair's entry (with the
        index of its first tile) is appended to `pairs`."""
        from tensorflow_datasets.core import example_serializer
        features = self.info.features
        serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
        count = 0
        for _, example in examples:
            pairs.append(_pair_entry(example, first=count))
            for tile in _tiles(example, self.builder_config.tile):
                count += 1
                yield serializer.serialize_example(features.encode_example(tile))

    def _generate_examples(self, members):
        crop = self.builder_config.mismatch == "crop"
        read = lambda pair: (pair, pairs_lib.read_pair(pair, crop))
        with concurrent.futures.ThreadPoolExecutor(self.builder_config.workers) as pool:
            for pair, ((ir, ir_bits, ir_mode), (vis, vis_bits, vis_mode)) in _ordered_map(
                    pool, read, tqdm.tqdm(members, desc="decode", unit="pair",
                                          disable=len(members) < 100)):
                dtype = self.builder_config.pixel_dtype
                yield pair.name, {
                    "name": pair.name, "ir": _channels(ir, dtype), "vis": _channels(vis, dtype),
                    "ir_mode": ir_mode, "vis_mode": vis_mode,
                    "ir_bit_depth": ir_bits, "vis_bit_depth": vis_bits,
                }


def _pair_entry(example, first: int) -> dict:
    """What the metadata keeps of a pair: all but its pixels, and the index of its first tile."""
    height, width = example["ir"].shape[:2]
    return {"name": example["name"], "ir_mode": example["ir_mode"], "vis_mode": example["vis_mode"],
            "ir_bit_depth": int(example["ir_bit_depth"]),
            "vis_bit_depth": int(example["vis_bit_depth"]),
            "height": int(height), "width": int(width), "first": first}


def _tiles(example, tile: int):
    """The pair's tiles, row by row: {"ir", "vis"} pixels of each `tile` x `tile` square."""
    height, width = example["ir"].shape[:2]
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            window = (slice(top, top + tile), slice(left, left + tile))
            yield {"ir": example["ir"][window], "vis": example["vis"][window]}


def _channels(x, dtype):
    return (x[..., None] if x.ndim == 2 else x).astype(dtype)


def _pixel_dtype(found) -> str:
    """uint8 when every file of the pairs is 8-bit (read from the headers), else uint16."""
    paths = (path for p in found for path in (p.ir_path, p.vis_path))
    return "uint16" if any(images.header_bit_depth(path) == 16 for path in paths) else "uint8"


def _ordered_map(pool, fn, items, ahead: int = 16):
    """fn over items on `pool`, in order, with at most `ahead` results waiting: decoding runs
    in parallel while memory stays bounded."""
    pending = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _splits(layout, *, train_list, train_fraction, mismatch, split_seed, log):
    """({split: kept pairs}, every pair found): the layout's own train/test folders, or a split
    of its one folder by list or fraction."""
    if layout.splits:
        if train_list or train_fraction is not None:
            raise ConfigError(f"{layout.root}: already split into {'/'.join(layout.splits)}; "
                              "unset data.train_list and data.train_fraction")
        found = {s: pairs_lib.pair_folders(*layout.folders[s]) for s in layout.splits}
    else:
        found = {None: pairs_lib.pair_folders(*layout.folders[None])}
    kept, skipped = {}, []
    for split, members in found.items():
        kept[split], dropped = pairs_lib.check_sizes(members, mismatch)
        skipped += dropped
    if skipped:
        log(f"{layout.root}: skipping {len(skipped)} pair(s) whose sizes differ: "
            + ", ".join(p.name for p in skipped))
    everything = [p for members in found.values() for p in members]
    if layout.splits:
        return {s: members for s, members in kept.items() if members}, everything
    return pairs_lib.split_pairs(kept[None], train_list=train_list, train_fraction=train_fraction,
                                 seed=split_seed, skipped=skipped), everything


def prepare(source, data_dir, *, train_list: str | None = None,
            train_fraction: float | None = None, mismatch: str = "error", split_seed: int = 0,
            ir_subdir: str | None = None, vis_subdir: str | None = None, workers: int = 4,
            compression: str = "zstd", tile: int = TILE, log=print) -> PairedFolder:
    """Validate the folder `source` (any layout `layouts` recognises; the one found is logged)
    and build its dataset into `data_dir`, decoding with `workers` threads, its records
    `tile` x `tile` tiles, `compression` "zstd" or "none" (cached: a second call with the same
    files and options reads what is there). Returns the builder.

    tfds builds into a temporary folder and renames it when complete, so a bad file (a
    one-line `DataError`) or an interruption leaves nothing behind, and a rerun builds anew.
    """
    if compression not in COMPRESSIONS:
        raise ConfigError(f"data.cache_compression must be one of {COMPRESSIONS}, got {compression!r}")
    if not (isinstance(tile, int) and tile > 0):
        raise ConfigError(f"data.cache_tile must be a positive integer, got {tile!r}")
    source = os.path.abspath(os.fspath(source))
    layout = layouts.find_layout(source, ir_subdir, vis_subdir)
    log(f"layout of {layout.describe()}")
    splits, found = _splits(layout, train_list=train_list, train_fraction=train_fraction,
                            mismatch=mismatch, split_seed=split_seed, log=log)
    key = pairs_lib.fingerprint(found, mismatch, layout.describe(),
                                train_list and os.path.abspath(train_list),
                                train_list and open(train_list).read(), train_fraction, split_seed,
                                compression, tile)
    config = PairedFolderConfig(source=source, splits=splits, mismatch=mismatch, fingerprint=key,
                                workers=workers, pixel_dtype=_pixel_dtype(found),
                                compression=compression, tile=tile)
    builder = PairedFolder(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
    if not builder.is_prepared():
        tfds.disable_progress_bar()
        log(f"building the tfds dataset of {source} into {builder.data_dir}")
        builder.download_and_prepare()
    return builder


class TiledPairs:
    """The pairs of a split, read from their tiles: `pairs[i]` is pair i whole, `window(i, top,
    left, height, width)` only the part of it a crop needs (reading only the tiles under it),
    `size(i)` its (height, width) without reading any pixels. Records in the common layout:
    {"name", "ir", "vis" ((H, W) or (H, W, 3) as stored), "ir_mode", "vis_mode",
    "ir_bit_depth", "vis_bit_depth"}."""

    def __init__(self, tiles, pairs: list[dict], tile: int):
        self._tiles = tiles  # the split's random-access tfds data source
        self._pairs = pairs
        self.tile = tile

    def __len__(self):
        return len(self._pairs)

    def __getitem__(self, index):
        height, width = self.size(index)
        return self.window(index, 0, 0, height, width)

    def size(self, index) -> tuple[int, int]:
        pair = self._pairs[index]
        return pair["height"], pair["width"]

    def window(self, index, top: int, left: int, height: int, width: int) -> dict:
        """Rows top..top+height and columns left..left+width of pair `index`, clipped to it."""
        pair, tile = self._pairs[index], self.tile
        bottom, right = min(top + height, pair["height"]), min(left + width, pair["width"])
        per_row = -(-pair["width"] // tile)
        under = [(r, c) for r in range(top // tile, (bottom - 1) // tile + 1)
                 for c in range(left // tile, (right - 1) // tile + 1)]  # tile rows and columns
        tiles = [self._tiles[pair["first"] + r * per_row + c] for r, c in under]
        out = {}
        for key in ("ir", "vis"):
            channels = tiles[0][key].shape[-1]
            pixels = np.empty((bottom - top, right - left, channels), tiles[0][key].dtype)
            for (r, c), found in zip(under, tiles):
                y0, x0 = max(r * tile, top), max(c * tile, left)  # the overlap, in image pixels
                y1, x1 = min((r + 1) * tile, bottom), min((c + 1) * tile, right)
                pixels[y0 - top:y1 - top, x0 - left:x1 - left] = \
                    found[key][y0 - r * tile:y1 - r * tile, x0 - c * tile:x1 - c * tile]
            out[key] = pixels[..., 0] if channels == 1 else pixels
        return {"name": pair["name"], "ir": out["ir"], "vis": out["vis"],
                "ir_mode": pair["ir_mode"], "vis_mode": pair["vis_mode"],
                "ir_bit_depth": pair["ir_bit_depth"], "vis_bit_depth": pair["vis_bit_depth"]}


def data_source(builder: PairedFolder, split: str = "train") -> TiledPairs:
    """The pairs of a split, by random access."""
    if split not in builder.info.splits:
        raise pairs_lib.DataError(f"{builder.builder_config.source}: no split {split!r} "
                                  f"(has {', '.join(builder.info.splits)})")
    stored = (builder.info.metadata or {}).get(split)
    if not stored or len(stored["pairs"]) == 0:
        raise pairs_lib.DataError(f"{builder.data_dir}: no index of the {split!r} pairs in "
                                  "metadata.json; delete the folder to rebuild it")
    return TiledPairs(builder.as_data_source(split=split), stored["pairs"], stored["tile"])
