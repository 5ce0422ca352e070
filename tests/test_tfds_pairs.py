"""The tfds builder over pairs folders: real TNO / RoadScene data, splits, size policies, bad input."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ifes_jax.data import pairs, tfds_pairs
from ifes_jax.errors import ConfigError, DataError

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
needs_data = pytest.mark.skipif(not os.path.isdir(DATA),
                                reason="real pairs live in ../shared/data, absent outside the dev setup")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _records(builder, split="train"):
    src = tfds_pairs.data_source(builder, split)
    return [src[i] for i in range(len(src))]


def _pil_pixels(path):
    img = Image.open(path)
    return np.asarray(img.convert("RGB") if img.mode in ("RGB", "RGBA", "P") else img.convert("L"))


@needs_data
@pytest.mark.parametrize("name,count,vis_mode", [("tno-infv20", 21, "gray"), ("roadscene", 171, "rgb")])
def test_real_sets_build_with_every_pair_and_exact_pixels(cache, name, count, vis_mode):
    folder = os.path.join(DATA, name)
    records = _records(tfds_pairs.prepare(folder, cache))
    files = sorted(os.listdir(os.path.join(folder, "ir")))
    assert len(records) == count
    assert sorted(r["name"] for r in records) == sorted(os.path.splitext(f)[0] for f in files)
    by_name = {r["name"]: r for r in records}
    for f in files[:: max(1, count // 6)]:  # a spread of pairs, every pixel
        r = by_name[os.path.splitext(f)[0]]
        assert r["ir_mode"] == "gray" and r["vis_mode"] == vis_mode
        assert r["ir_bit_depth"] == r["vis_bit_depth"] == 8
        vis_file = [v for v in os.listdir(os.path.join(folder, "vis")) if v.startswith(r["name"] + ".")][0]
        np.testing.assert_array_equal(r["ir"], _pil_pixels(os.path.join(folder, "ir", f)))
        np.testing.assert_array_equal(r["vis"], _pil_pixels(os.path.join(folder, "vis", vis_file)))


@needs_data
def test_tno_full_size_mismatch_policies_and_train_list(cache):
    folder = os.path.join(DATA, "tno-full")
    with pytest.raises(DataError) as err:
        tfds_pairs.prepare(folder, cache)
    message = str(err.value)
    assert "\n" not in message
    assert "triclobs_Marne_15" in message and "triclobs_Movie_24" in message
    skipped = tfds_pairs.prepare(folder, cache, mismatch="skip", log=lambda msg: None)
    assert len(tfds_pairs.data_source(skipped, "train")) == 127
    train_list = os.path.join(folder, "train-pairs.txt")
    listed = tfds_pairs.prepare(folder, cache, mismatch="crop", train_list=train_list)
    names = {r["name"] for r in _records(listed, "train")}
    assert names == set(pairs.read_name_list(train_list)) and len(names) == 89
    assert len(tfds_pairs.data_source(listed, "test")) == 129 - 89


def _write(path, array, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


def _folder(root, names=("a", "b"), size=(20, 24)):
    rng = np.random.default_rng(0)
    for name in names:
        _write(os.path.join(root, "ir", f"{name}.png"), rng.integers(0, 255, size, dtype=np.uint8))
        _write(os.path.join(root, "vis", f"{name}.png"), rng.integers(0, 255, size, dtype=np.uint8))
    return str(root)


def _error(root, cache, **kwargs):
    with pytest.raises(DataError) as err:
        tfds_pairs.prepare(root, cache, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_bad_folders_give_one_line_naming_the_problem(tmp_path, cache):
    assert "no such folder" in _error(str(tmp_path / "nowhere"), cache)
    root = _folder(tmp_path / "no_vis")
    os.rename(os.path.join(root, "vis"), os.path.join(root, "viz"))
    assert "no visible folder" in _error(root, cache)
    os.makedirs(os.path.join(root, "VI"))
    os.makedirs(os.path.join(root, "visible"))
    assert "two visible folders (VI, visible)" in _error(root, cache)
    empty = tmp_path / "empty"
    os.makedirs(empty / "ir")
    os.makedirs(empty / "vis")
    assert "ir: no images" in _error(str(empty), cache)
    root = _folder(tmp_path / "unpaired")
    os.remove(os.path.join(root, "vis", "b.png"))
    message = _error(root, cache)
    assert "in ir/ without a twin in vis/" in message and "b" in message


def test_bad_files_are_named_before_anything_is_built(tmp_path):
    cache = str(tmp_path / "cache")
    root = _folder(tmp_path / "corrupt")
    with open(os.path.join(root, "vis", "b.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n this is not an image")
    assert os.path.join("vis", "b.png") in _error(root, cache) and "not a readable image" in _error(root, cache)

    root = _folder(tmp_path / "sizes")
    _write(os.path.join(root, "vis", "a.png"), np.zeros((21, 24), np.uint8))
    message = _error(root, cache)
    assert "a.png is 24x20" in message and "a.png is 24x21" in message

    root = _folder(tmp_path / "mode")
    _write(os.path.join(root, "ir", "a.tif"), np.zeros((20, 24), np.float32), "F")
    os.remove(os.path.join(root, "ir", "a.png"))
    assert "unsupported image mode 'F'" in _error(root, cache)
    written = [f for _, _, files in os.walk(cache) for f in files]
    assert not any("array_record" in f or f == "dataset_info.json" for f in written), written


def test_sixteen_bit_rgba_and_crop_policy(tmp_path, cache):
    root = str(tmp_path / "mixed")
    ir16 = (np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 97)
    rgba = np.random.default_rng(1).integers(0, 255, (22, 25, 4), dtype=np.uint8)
    _write(os.path.join(root, "ir", "p.png"), ir16)
    _write(os.path.join(root, "vis", "p.png"), rgba, "RGBA")
    (record,) = _records(tfds_pairs.prepare(root, cache, mismatch="crop"))
    assert record["ir_bit_depth"] == 16 and record["vis_bit_depth"] == 8 and record["vis_mode"] == "rgb"
    np.testing.assert_array_equal(record["ir"], ir16)
    np.testing.assert_array_equal(record["vis"], rgba[:20, :24, :3])


def test_storage_is_uint8_for_8_bit_folders_and_raw_records_read_the_same(tmp_path, cache):
    root = _folder(tmp_path / "eight")
    zstd = tfds_pairs.prepare(root, cache)
    raw = tfds_pairs.prepare(root, cache, compression="none")
    assert zstd.data_dir != raw.data_dir  # two datasets, one per option
    from array_record.python.array_record_module import ArrayRecordReader
    for builder, compression in ((zstd, "zstd:3"), (raw, "uncompressed")):
        assert builder.info.features["ir"].np_dtype == np.uint8
        (path,) = pathlib.Path(builder.data_dir).glob("*.array_record*")
        assert compression in ArrayRecordReader(str(path)).writer_options_string().split(",")
    by_name = lambda builder: sorted(_records(builder), key=lambda r: r["name"])  # storage order
    for a, b, name in zip(by_name(zstd), by_name(raw), ("a", "b")):
        want = _pil_pixels(os.path.join(root, "ir", f"{name}.png"))
        assert a["name"] == b["name"] == name and a["ir"].dtype == np.uint8
        np.testing.assert_array_equal(a["ir"], want)
        np.testing.assert_array_equal(b["ir"], want)
        np.testing.assert_array_equal(a["vis"], b["vis"])
    sixteen = tmp_path / "sixteen"
    _folder(sixteen, names=("a",))
    _write(os.path.join(sixteen, "ir", "a.png"), np.full((20, 24), 40000, np.uint16))
    builder = tfds_pairs.prepare(str(sixteen), cache)
    assert builder.info.features["vis"].np_dtype == np.uint16  # one 16-bit file: all uint16
    assert _records(builder)[0]["ir"].max() == 40000
    with pytest.raises(ConfigError, match="cache_compression"):
        tfds_pairs.prepare(root, cache, compression="gzip")


def test_split_by_fraction_is_seeded_and_disjoint(tmp_path, cache):
    root = _folder(tmp_path / "many", names=[f"n{i}" for i in range(10)])
    builder = tfds_pairs.prepare(root, cache, train_fraction=0.7, split_seed=3)
    train = {r["name"] for r in _records(builder, "train")}
    test = {r["name"] for r in _records(builder, "test")}
    assert len(train) == 7 and len(test) == 3 and not train & test
    again = tfds_pairs.prepare(root, cache, train_fraction=0.7, split_seed=3)
    assert {r["name"] for r in _records(again, "train")} == train


def test_changing_a_file_rebuilds_the_dataset(tmp_path, cache):
    root = _folder(tmp_path / "changing")
    first = tfds_pairs.prepare(root, cache)
    assert tfds_pairs.prepare(root, cache).data_dir == first.data_dir  # cached
    _write(os.path.join(root, "ir", "a.png"), np.full((20, 24), 7, np.uint8))
    os.utime(os.path.join(root, "ir", "a.png"), ns=(1, 1))
    second = tfds_pairs.prepare(root, cache)
    assert second.data_dir != first.data_dir
    assert next(r for r in _records(second) if r["name"] == "a")["ir"].max() == 7


def test_building_and_reading_never_imports_tensorflow(tmp_path):
    root = _folder(tmp_path / "tf")
    code = f"""
import sys
from ifes_jax.data import pipeline, tfds_pairs
builder = tfds_pairs.prepare({root!r}, {str(tmp_path / 'cache')!r})
ds = pipeline.training_dataset(pipeline.tfds_source(builder), seed=0, batch_size=2, crop=16)
assert ds[3]["ir"].shape == (2, 16, 16, 1)
assert "tensorflow" not in sys.modules, "tensorflow was imported"
"""
    root_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], cwd=root_dir, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_builds_stream_into_shards_past_tfds_memory_buffer(tmp_path, monkeypatch):
    """tfds's own writer keeps a split in memory up to 1 GB and spills it through TensorFlow:
    with that buffer shrunk to 1 kB and shards closed at 4 kB, the build still needs neither,
    writes several shards and reads back every pair exactly, in name order."""
    from tensorflow_datasets.core import shuffle
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1024)
    monkeypatch.setattr(tfds_pairs, "SHARD_BYTES", 4096)
    names = [f"p{i}" for i in range(5)]
    root = _folder(tmp_path / "big", names=names, size=(40, 48))  # ~3.9 kB per raw record
    builder = tfds_pairs.prepare(root, str(tmp_path / "cache"), compression="none", log=lambda m: None)
    split = builder.info.splits["train"]
    assert split.num_examples == 5 and split.num_shards == 3 and split.shard_lengths == [2, 2, 1]
    records = _records(builder)
    assert [r["name"] for r in records] == names
    for record in records:
        np.testing.assert_array_equal(record["ir"], _pil_pixels(os.path.join(root, "ir", f"{record['name']}.png")))
    assert not list(pathlib.Path(builder.data_dir).glob(".*part"))  # no half-named shard left


class _CountingTiles:
    """A tile source that records which tiles were read."""

    def __init__(self, tiles):
        self.tiles, self.read = tiles, []

    def __getitem__(self, key):
        self.read.append(key)
        return self.tiles[key]


def test_records_are_tiles_and_a_window_reads_only_the_tiles_under_it(tmp_path, cache):
    """Pairs of 40x48 (gray IR, RGB visible) in 16x16 tiles: 3 x 3 records each (the last row
    and column 8 and 0 pixels short); every window equals the same slice of the files' pixels
    and reads exactly the tiles it overlaps."""
    root = tmp_path / "tiled"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        _write(root / "ir" / f"{name}.png", rng.integers(0, 256, (40, 48), dtype=np.uint8))
        _write(root / "vis" / f"{name}.png", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    builder = tfds_pairs.prepare(str(root), cache, tile=16, log=lambda msg: None)
    assert builder.info.splits["train"].num_examples == 2 * 3 * 3
    pairs = tfds_pairs.data_source(builder)
    pairs._tiles = counting = _CountingTiles(pairs._tiles)
    assert len(pairs) == 2 and pairs.size(1) == (40, 48)
    for index, name in enumerate(("a", "b")):
        ir = _pil_pixels(root / "ir" / f"{name}.png")
        vis = _pil_pixels(root / "vis" / f"{name}.png")
        whole = pairs[index]
        assert whole["name"] == name and whole["vis_mode"] == "rgb" and whole["ir_bit_depth"] == 8
        np.testing.assert_array_equal(whole["ir"], ir)
        np.testing.assert_array_equal(whole["vis"], vis)
        for top, left, height, width in [(0, 0, 16, 16), (5, 7, 20, 30), (31, 40, 16, 16),
                                         (20, 10, 50, 50), (39, 47, 1, 1)]:
            counting.read = []
            window = pairs.window(index, top, left, height, width)
            np.testing.assert_array_equal(window["ir"], ir[top:top + height, left:left + width])
            np.testing.assert_array_equal(window["vis"], vis[top:top + height, left:left + width])
            bottom, right = min(top + height, 40) - 1, min(left + width, 48) - 1
            under = {index * 9 + r * 3 + c for r in range(top // 16, bottom // 16 + 1)
                     for c in range(left // 16, right // 16 + 1)}
            assert sorted(counting.read) == sorted(under)
    again = tfds_pairs.data_source(tfds_pairs.prepare(str(root), cache, tile=16))  # from disk
    np.testing.assert_array_equal(again.window(1, 9, 3, 30, 40)["vis"], pairs.window(1, 9, 3, 30, 40)["vis"])
    (pathlib.Path(builder.data_dir) / "metadata.json").unlink()
    with pytest.raises(DataError, match="metadata.json; delete the folder"):
        tfds_pairs.data_source(tfds_pairs.prepare(str(root), cache, tile=16))


def test_worker_processes_read_the_tiles_into_the_same_batches(tmp_path, cache):
    """A tiled dataset read by a grain worker process (the source pickled into it) gives the
    batches the dataset defines, and two read threads give them in order too."""
    from absl import flags
    from ifes_jax.data import pipeline
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    root = _folder(tmp_path / "w", names=("a", "b", "c"), size=(40, 48))
    source = pipeline.tfds_source(tfds_pairs.prepare(root, cache, tile=16, log=lambda msg: None))
    ds = pipeline.training_dataset(source, seed=0, batch_size=2, crop=24)
    for workers in (0, 1):
        it = pipeline.iterator(ds, workers=workers, read_threads=2)
        try:
            for k in range(4):
                np.testing.assert_array_equal(next(it)["vis"], ds[k]["vis"])
        finally:
            it.close()
