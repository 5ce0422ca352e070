"""The weights shipped inside the package load and fuse out of the box."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ifes_jax import fuse
from ifes_jax.data.synthetic import synthetic_pair

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(fuse.SHIPPED_WEIGHTS, "checksum.json")


def test_shipped_weights_are_small_and_reproduce_their_stored_fusion():
    assert os.path.getsize(os.path.join(fuse.SHIPPED_WEIGHTS, "params.msgpack")) <= 8 * 2 ** 20
    with open(CHECK) as f:
        stored = json.load(f)
    model = fuse.load_exported()
    ir, vis = synthetic_pair(stored["seed"], stored["height"], stored["width"])
    fused = model(ir, vis)["fused"]
    pixels = np.rint(np.clip(fused, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_allclose(float(fused.mean()), stored["mean"], rtol=1e-5)
    np.testing.assert_allclose(float(fused.std()), stored["std"], rtol=1e-4)
    # the 8-bit checksum: its pixel sum, up to a rare ±1 where another CPU rounds differently
    assert int(np.sum(pixels, dtype=np.int64)) == pytest.approx(stored["pixel_sum"], abs=pixels.size * 1e-3)


def test_fuse_cli_works_without_a_checkpoint(tmp_path):
    ir, vis = synthetic_pair(1, 48, 64)
    Image.fromarray(np.rint(ir * 255).astype(np.uint8)).save(tmp_path / "ir.png")
    Image.fromarray(np.rint(vis * 255).astype(np.uint8)).save(tmp_path / "vis.png")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fuse.py"),
                             "--ir", str(tmp_path / "ir.png"), "--vis", str(tmp_path / "vis.png"),
                             "--out", str(tmp_path / "f.png")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.asarray(Image.open(tmp_path / "f.png")).shape == (48, 64)


def test_load_reads_an_exported_folder_like_load_exported():
    ir, vis = synthetic_pair(7, 40, 56)
    np.testing.assert_array_equal(fuse.load(fuse.SHIPPED_WEIGHTS)(ir, vis)["fused"],
                                  fuse.load_exported()(ir, vis)["fused"])
    with pytest.raises(fuse.InputError, match="no steps"):
        fuse.load(fuse.SHIPPED_WEIGHTS, step=3)
