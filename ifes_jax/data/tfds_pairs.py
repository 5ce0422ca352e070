"""A tensorflow-datasets builder for folders of infrared/visible pairs, without TensorFlow.

Written for the TF-free corners of tfds: a `GeneratorBasedBuilder` with
`file_format="array_record"`, a `DatasetInfo` built directly, images stored as zlib-compressed
uint16 tensors (lossless for 8- and 16-bit files, gray or RGB), built with
`download_and_prepare()` and read by random access (`as_data_source`). Records come back in
storage order, not name order, so each keeps its pair's name.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from ifes_jax.data import pairs as pairs_lib

VERSION = "1.0.0"


class PairedFolderConfig(tfds.core.BuilderConfig):
    """Which folder, how to split it and what to do with pairs whose sizes differ. The config's
    name is a fingerprint of all of that and of the files, so any change builds anew."""

    def __init__(self, *, source: str, splits: dict, mismatch: str, fingerprint: str):
        super().__init__(name=f"src_{fingerprint}", version=VERSION,
                         description=f"pairs of {source} (size mismatches: {mismatch})")
        self.source = source
        self.splits = splits
        self.mismatch = mismatch


class PairedFolder(tfds.core.GeneratorBasedBuilder):
    """Infrared/visible pairs of one folder (`ir/`, `vis/`, matching names)."""

    VERSION = tfds.core.Version(VERSION)

    @tfds.core.utils.classproperty
    @classmethod
    def _checksums_path(cls):
        # Nothing is downloaded. tfds would look for a checksums file beside the builder's code
        # through `code_path`, which imports `importlib_resources`.
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        image = tfds.features.Tensor(shape=(None, None, None), dtype=np.uint16, encoding="zlib")
        return tfds.core.DatasetInfo(
            builder=self,
            description="Paired infrared/visible images; pixels as stored in the files "
                        "(uint8 values kept in a uint16 tensor), channels 1 (gray) or 3 (RGB).",
            features=tfds.features.FeaturesDict({
                "name": tfds.features.Text(),
                "ir": image,
                "vis": image,
                "ir_mode": tfds.features.Text(),
                "vis_mode": tfds.features.Text(),
                "ir_bit_depth": tfds.features.Scalar(dtype=np.int32),
                "vis_bit_depth": tfds.features.Scalar(dtype=np.int32),
            }),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(members)
                for split, members in self.builder_config.splits.items()}

    def _generate_examples(self, members):
        crop = self.builder_config.mismatch == "crop"
        for pair in members:
            (ir, ir_bits, ir_mode), (vis, vis_bits, vis_mode) = pairs_lib.read_pair(pair, crop)
            channels = lambda x: (x[..., None] if x.ndim == 2 else x).astype(np.uint16)
            yield pair.name, {
                "name": pair.name, "ir": channels(ir), "vis": channels(vis),
                "ir_mode": ir_mode, "vis_mode": vis_mode,
                "ir_bit_depth": ir_bits, "vis_bit_depth": vis_bits,
            }


def prepare(source, data_dir, *, train_list: str | None = None,
            train_fraction: float | None = None, mismatch: str = "error", split_seed: int = 0,
            log=print) -> PairedFolder:
    """Validate the folder `source` and build its dataset into `data_dir` (cached: a second
    call with the same files and options reads what is there). Returns the builder.

    Every image is decoded once before anything is written, so a bad file is reported (a
    one-line `DataError`) before training starts.
    """
    source = os.path.abspath(os.fspath(source))
    found = pairs_lib.find_pairs(source)
    kept, skipped = pairs_lib.check_sizes(found, mismatch)
    if skipped:
        log(f"{source}: skipping {len(skipped)} pair(s) whose sizes differ: "
            + ", ".join(p.name for p in skipped))
    splits = pairs_lib.split_pairs(kept, train_list=train_list, train_fraction=train_fraction,
                                   seed=split_seed, skipped=skipped)
    key = pairs_lib.fingerprint(found, mismatch, train_list and os.path.abspath(train_list),
                                train_list and open(train_list).read(), train_fraction, split_seed)
    config = PairedFolderConfig(source=source, splits=splits, mismatch=mismatch, fingerprint=key)
    builder = PairedFolder(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
    if not builder.is_prepared():
        for pair in kept:  # report a bad file before tfds starts writing
            pairs_lib.read_pair(pair, crop_to_common=mismatch == "crop")
        tfds.disable_progress_bar()
        log(f"building the tfds dataset of {source} into {builder.data_dir}")
        builder.download_and_prepare()
    return builder


def decode_record(record) -> dict:
    """A record from the data source with text fields as str and images as (H, W) or (H, W, 3)."""
    text = lambda v: v.decode() if isinstance(v, bytes) else str(v)
    image = lambda x: x[..., 0] if x.shape[-1] == 1 else x
    return {
        "name": text(record["name"]),
        "ir": image(np.asarray(record["ir"])), "vis": image(np.asarray(record["vis"])),
        "ir_mode": text(record["ir_mode"]), "vis_mode": text(record["vis_mode"]),
        "ir_bit_depth": int(record["ir_bit_depth"]), "vis_bit_depth": int(record["vis_bit_depth"]),
    }


def data_source(builder: PairedFolder, split: str = "train"):
    """The random-access source of a split (records as tfds decodes them)."""
    if split not in builder.info.splits:
        raise pairs_lib.DataError(f"{builder.builder_config.source}: no split {split!r} "
                                  f"(has {', '.join(builder.info.splits)})")
    return builder.as_data_source(split=split)
