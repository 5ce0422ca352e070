"""Datasets as released: every layout found by name, train/test levels as splits, clear errors,
and several folders mixed into one training stream that resumes exactly."""
import csv
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from ifes_jax import evaluate, fuse, train
from ifes_jax.cli import fuse as fuse_cli
from ifes_jax.data import layouts, pairs, pipeline, tfds_pairs
from ifes_jax.errors import ConfigError, DataError
from tests.helpers.tiny_config import tiny_config

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "shared", "data")

# layout -> [(infrared folder, visible folder, split)], as each dataset is released
RELEASES = {
    "tno": [("ir", "vis", None)],
    "cddfuse": [("ir", "vi", None)],
    "m3fd": [("Ir", "Vis", None)],
    "roadscene": [("cropinfrared", "crop_LR_visible", None)],
    "visible_y": [("Infrared", "VI_Y", None)],
    "msrs": [("train/ir", "train/vi", "train"), ("test/ir", "test/vi", "test")],
    "msrs_caps": [("Train/IR", "Train/VI", "train"), ("Test/IR", "Test/VI", "test")],
    "llvip": [("infrared/train", "visible/train", "train"),
              ("infrared/test", "visible/test", "test")],
}


def _image(path, value, size=(44, 48)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)


def _release(root, layout, names=("a", "b")):
    """A synthetic folder in `layout`: each split's pairs are named split_name (or name)."""
    for k, (ir, vis, split) in enumerate(RELEASES[layout]):
        for i, name in enumerate(names):
            stem = f"{split}_{name}" if split else name
            _image(os.path.join(root, ir, stem + ".png"), 10 * k + i)
            _image(os.path.join(root, vis, stem + ".png"), 100 + 10 * k + i)
    return str(root)


@pytest.mark.parametrize("layout", sorted(RELEASES))
def test_every_release_layout_is_found_with_its_splits(tmp_path, layout):
    root = _release(tmp_path / layout, layout)
    found = layouts.find_layout(root)
    expected = {split: (os.path.join(root, ir), os.path.join(root, vis))
                for ir, vis, split in RELEASES[layout]}
    assert found.folders == expected
    for split in expected:
        names = [p.name for p in pairs.find_pairs(root, split=split)]
        assert names == ([f"{split}_a", f"{split}_b"] if split else ["a", "b"])


def test_split_layouts_build_their_splits_with_exact_pixels(tmp_path):
    cache, logged = str(tmp_path / "cache"), []
    for layout in ("msrs", "llvip"):
        builder = tfds_pairs.prepare(_release(tmp_path / layout, layout), cache, log=logged.append)
        assert sorted(builder.info.splits) == ["test", "train"]
        test = list(tfds_pairs.data_source(builder, "test"))
        by_name = {r["name"]: r for r in test}
        assert sorted(by_name) == ["test_a", "test_b"]
        assert by_name["test_b"]["ir"].max() == 11 and by_name["test_b"]["vis"].min() == 111
    assert sum("layout of" in line and "train: " in line for line in logged) == 2


def test_explicit_subfolders_override_the_search(tmp_path):
    root = str(tmp_path / "own")
    for name in ("x", "y"):
        _image(os.path.join(root, "thermal", name + ".png"), 1)
        _image(os.path.join(root, "rgb", name + ".png"), 2)
    with pytest.raises(DataError, match="found rgb/, thermal/"):
        layouts.find_layout(root)
    assert [p.name for p in pairs.find_pairs(root, "thermal", "rgb")] == ["x", "y"]
    os.makedirs(os.path.join(root, "ir"))
    shutil.copytree(os.path.join(root, "rgb"), os.path.join(root, "vis"))
    assert layouts.find_layout(root, ir_subdir="thermal").folders[None] == (
        os.path.join(root, "thermal"), os.path.join(root, "vis"))


def _message(root, split=None):
    with pytest.raises(DataError) as err:
        layouts.find_layout(root).folders_of(split)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_ambiguous_missing_and_mismatched_layouts_are_one_line_errors(tmp_path):
    two = _release(tmp_path / "two", "tno")
    os.makedirs(os.path.join(two, "Infrared"))
    assert "two infrared folders (Infrared, ir)" in _message(two)
    assert "accepted: infrared ir/infrared/cropinfrared" in _message(two)

    nothing = str(tmp_path / "nothing")
    os.makedirs(os.path.join(nothing, "images"))
    assert _message(nothing).startswith(f"{nothing}: no infrared/visible folders (found images/)")

    alone = str(tmp_path / "alone")
    _image(os.path.join(alone, "ir", "a.png"), 0)
    assert "ir/ but no visible folder" in _message(alone)

    uneven = _release(tmp_path / "uneven", "llvip")
    shutil.rmtree(os.path.join(uneven, "visible", "test"))
    assert "infrared/ has splits ['test', 'train'] but visible/ has ['train']" in _message(uneven)

    both = _release(tmp_path / "both", "tno")
    _release(both, "msrs")
    assert "both ir/, vis/ and test/, train/" in _message(both)

    empty_split = _release(tmp_path / "empty_split", "msrs")
    shutil.rmtree(os.path.join(empty_split, "test"))
    os.makedirs(os.path.join(empty_split, "test", "labels"))
    assert _message(empty_split).startswith(os.path.join(empty_split, "test") + ": no infrared")

    flat = _release(tmp_path / "flat", "tno")
    assert "no train/test folders, so no split 'test'" in _message(flat, split="test")


def test_a_split_release_refuses_a_train_list(tmp_path):
    root = _release(tmp_path / "msrs", "msrs")
    listed = tmp_path / "list.txt"
    listed.write_text("train_a\n")
    with pytest.raises(ConfigError, match="already split into train/test"):
        tfds_pairs.prepare(root, str(tmp_path / "cache"), train_list=str(listed))


def test_cddfuse_test_folders_are_read_as_released():
    root = os.path.join(DATA, "cddfuse-test", "tno")
    found = pairs.find_pairs(root)
    assert layouts.find_layout(root).folders[None][1].endswith(os.path.join("tno", "vi"))
    assert len(found) == len(os.listdir(os.path.join(root, "ir"))) > 0


def test_evaluate_and_fuse_take_a_split_release(tmp_path):
    root = _release(tmp_path / "msrs", "msrs", names=("a", "b", "c"))
    logged = []
    results = evaluate.evaluate(root, evaluate.parse_methods("average"), str(tmp_path / "eval"),
                                profile="default", figure_pairs=0, log=logged.append)
    assert results["meta"]["pairs"] == 3 and "using test" in logged[0]
    with open(tmp_path / "eval" / "per_pair.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["pair"] for row in rows) == ["test_a", "test_b", "test_c"]
    out = tmp_path / "fused"
    args = fuse_cli.parse_args(["--data", root, "--split", "train", "--out-dir", str(out)])
    fuse_cli.fuse_folders(fuse, args)  # the shipped weights
    assert sorted(os.listdir(out)) == ["train_a.png", "train_b.png", "train_c.png"]
    fused = np.asarray(Image.open(out / "train_b.png"))
    assert fused.shape == (44, 48) and 1 <= fused.mean() <= 101  # between its two sources


def _record(value, name):
    image = np.full((8, 8), value, np.uint16)
    return {"name": name, "ir": image, "vis": image, "ir_mode": "gray", "vis_mode": "gray",
            "ir_bit_depth": 8, "vis_bit_depth": 8}


def test_mixed_sources_follow_their_weights_and_resume_exactly():
    first = pipeline.RecordSource([_record(10, f"a{i}") for i in range(5)])
    second = pipeline.RecordSource([_record(200, f"b{i}") for i in range(3)])
    ds = pipeline.training_dataset([first, second], weights=[0.75, 0.25], seed=3, batch_size=4,
                                   crop=8, flips=False, rotations=False)
    from_second = [np.mean(ds[k]["ir"][:, 0, 0, 0] > 0.5) for k in range(50)]
    assert abs(np.mean(from_second) - 0.25) < 0.01
    again = pipeline.training_dataset([first, second], weights=[0.75, 0.25], seed=3,
                                      batch_size=4, crop=8, flips=False, rotations=False)
    np.testing.assert_array_equal(again[17]["ir"], ds[17]["ir"])
    it = pipeline.iterator(ds)
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it)["ir"] for _ in range(3)]
    resumed = pipeline.iterator(ds, state=state)
    for batch in expected:
        np.testing.assert_array_equal(next(resumed)["ir"], batch)


def test_mixture_spec_is_parsed_and_bad_ones_refused():
    assert pipeline.parse_mixture("data/msrs:0.7, data/tno:0.3") == [("data/msrs", 0.7),
                                                                     ("data/tno", 0.3)]
    assert pipeline.parse_mixture("/a/b,/c") == [("/a/b", 1.0), ("/c", 1.0)]
    for bad in ("a:0", "a:-1", "a:x", ":0.5", "a:nan"):
        with pytest.raises(ConfigError, match="data.dirs: .* is not PATH:WEIGHT"):
            pipeline.parse_mixture(bad)


def test_training_on_two_releases_mixed_resumes_to_the_same_parameters(tmp_path):
    msrs = _release(tmp_path / "msrs", "msrs", names=("a", "b", "c"))
    m3fd = _release(tmp_path / "m3fd", "m3fd")
    config = tiny_config(steps=2, checkpoint_every=1, keep_checkpoints=3)
    config.data.dirs = f"{msrs}:0.6,{m3fd}:0.4"
    config.data.cache_dir = str(tmp_path / "cache")
    whole = train.train_and_evaluate(config, str(tmp_path / "whole"))
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "2")
    resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
