"""Inference: the fuse CLI and API, colour, tiling, smoothing, and bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ifes_jax import fuse, train
from ifes_jax.data.images import rgb_to_ycbcr
from ifes_jax.data.synthetic import synthetic_pair
from tests.helpers.tiny_config import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train.train_and_evaluate(tiny_config(steps=2), str(path))
    return str(path)


@pytest.fixture(scope="module")
def fuser(workdir):
    return fuse.load(workdir)


def _save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _pair_files(root, name="a", size=(70, 90), colour=False, seed=0):
    ir, vis = synthetic_pair(seed, *size)
    ir8 = np.rint(ir * 255).astype(np.uint8)
    vis8 = np.rint(vis * 255).astype(np.uint8)
    if colour:
        tint = np.array([1.0, 0.8, 0.6])
        vis8 = np.rint(np.clip(vis[..., None] * tint + 0.1 * np.roll(vis, 7, axis=1)[..., None], 0, 1) * 255).astype(np.uint8)
    ir_path, vis_path = os.path.join(root, "ir", f"{name}.png"), os.path.join(root, "vis", f"{name}.png")
    _save(ir_path, ir8)
    _save(vis_path, vis8)
    return ir_path, vis_path


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fuse.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_and_api_give_identical_pixels(tmp_path, workdir, fuser):
    ir_path, vis_path = _pair_files(tmp_path)
    out = tmp_path / "cli.png"
    result = _cli("--checkpoint", workdir, "--ir", ir_path, "--vis", vis_path, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    api = fuser(np.asarray(Image.open(ir_path)) / 255.0, np.asarray(Image.open(vis_path)) / 255.0)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.rint(np.clip(api["fused"], 0, 1) * 255))


def test_api_on_a_batch_equals_the_api_per_image(fuser):
    pairs = [synthetic_pair(s, 40, 56) for s in range(3)]
    ir = np.stack([p[0] for p in pairs])
    vis = np.stack([p[1] for p in pairs])
    batch = fuser(ir[..., None], vis[..., None])
    assert batch["fused"].shape == (3, 40, 56, 1) and batch["weights"].shape == (3, 40, 56, 2)
    for i in range(3):
        single = fuser(ir[i], vis[i])
        np.testing.assert_allclose(batch["fused"][i, ..., 0], single["fused"], atol=1e-6)
        np.testing.assert_allclose(batch["weights"][i], single["weights"], atol=1e-6)


def test_colour_output_keeps_visible_chroma_and_fuses_luma(tmp_path, workdir, fuser):
    ir_path, vis_path = _pair_files(tmp_path, colour=True)
    out = tmp_path / "colour.png"
    result = _cli("--checkpoint", workdir, "--ir", ir_path, "--vis", vis_path, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    fused = np.asarray(Image.open(out)) / 255.0
    vis = np.asarray(Image.open(vis_path)) / 255.0
    assert fused.shape == vis.shape
    ycc_out, ycc_vis = rgb_to_ycbcr(fused), rgb_to_ycbcr(vis)
    gray = fuser(np.asarray(Image.open(ir_path)) / 255.0, ycc_vis[..., 0])["fused"]
    inside = (ycc_out[..., 0] > 0.03) & (ycc_out[..., 0] < 0.97)  # RGB clipping aside
    np.testing.assert_allclose(ycc_out[..., 1:][inside], ycc_vis[..., 1:][inside], atol=3 / 255)
    np.testing.assert_allclose(ycc_out[..., 0], np.clip(gray, 0, 1), atol=3 / 255)


def test_tiles_give_the_untiled_result(fuser):
    ir, vis = synthetic_pair(7, 200, 260)
    whole = fuser(ir, vis)
    fuser.tile = 100  # 36-pixel cores between 32-pixel margins
    try:
        tiled = fuser(ir, vis)
        smoothed_tiled = fuser(ir, vis, smooth_weights=True)
    finally:
        fuser.tile = 1024
    np.testing.assert_allclose(tiled["fused"], whole["fused"], atol=1e-5)
    np.testing.assert_allclose(tiled["weights"], whole["weights"], atol=1e-5)
    np.testing.assert_allclose(smoothed_tiled["fused"], fuser(ir, vis, smooth_weights=True)["fused"], atol=1e-5)


def test_smooth_weights_applies_the_5x5_gaussian_of_variance_2(fuser):
    ir, vis = synthetic_pair(8, 48, 64)
    raw = fuser(ir, vis)["weights"]
    smoothed = fuser(ir, vis, smooth_weights=True)
    x = np.arange(5) - 2
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 2.0))
    g /= g.sum()
    for c in range(2):
        expected = ndimage.convolve(raw[..., c].astype(np.float64), g, mode="reflect")
        np.testing.assert_allclose(smoothed["weights"][..., c], expected, atol=1e-5)
    w = smoothed["weights"]
    np.testing.assert_allclose(smoothed["fused"], w[..., 0] * ir + w[..., 1] * vis, atol=1e-5)


def test_folder_mode_writes_every_pair_and_weight_maps(tmp_path, workdir):
    for i, name in enumerate(["p1", "p2", "p3"]):
        _pair_files(tmp_path / "in", name, size=(40 + 8 * (i % 2), 52), seed=i)
    out = tmp_path / "out"
    result = _cli("--checkpoint", workdir, "--ir-dir", str(tmp_path / "in" / "ir"),
                  "--vis-dir", str(tmp_path / "in" / "vis"), "--out-dir", str(out), "--save-weights")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(out)) == sorted(f"{n}{s}.png" for n in ("p1", "p2", "p3")
                                            for s in ("", "_weight_ir", "_weight_vis"))


def test_sixteen_bit_gray_output(tmp_path, workdir):
    ir, vis = synthetic_pair(9, 40, 48)
    ir_path, vis_path = str(tmp_path / "ir.png"), str(tmp_path / "vis.png")
    Image.fromarray(np.rint(ir * 65535).astype(np.uint16)).save(ir_path)
    Image.fromarray(np.rint(vis * 65535).astype(np.uint16)).save(vis_path)
    out = tmp_path / "f16.png"
    result = _cli("--checkpoint", workdir, "--ir", ir_path, "--vis", vis_path, "--out", str(out),
                  "--bit-depth", "16")
    assert result.returncode == 0, result.stderr[-2000:]
    pixels = np.asarray(Image.open(out))
    assert pixels.dtype in (np.uint16, np.int32) and pixels.max() > 255


def _one_line_error(result):
    assert result.returncode != 0
    lines = [l for l in result.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, result.stderr[:3000]
    return lines[0]


def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, workdir):
    ir_path, vis_path = _pair_files(tmp_path / "in")
    out = tmp_path / "o.png"
    assert "no such checkpoint" in _one_line_error(
        _cli("--checkpoint", str(tmp_path / "none"), "--ir", ir_path, "--vis", vis_path, "--out", str(out)))
    assert "no such file" in _one_line_error(
        _cli("--checkpoint", workdir, "--ir", str(tmp_path / "x.png"), "--vis", vis_path, "--out", str(out)))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert "not a readable image" in _one_line_error(
        _cli("--checkpoint", workdir, "--ir", str(bad), "--vis", vis_path, "--out", str(out)))
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(small)
    assert "sizes differ" in _one_line_error(
        _cli("--checkpoint", workdir, "--ir", str(small), "--vis", vis_path, "--out", str(out)))
    assert not out.exists()
    os.makedirs(tmp_path / "empty" / "ir")
    os.makedirs(tmp_path / "empty" / "vis")
    assert "no images" in _one_line_error(
        _cli("--checkpoint", workdir, "--ir-dir", str(tmp_path / "empty" / "ir"),
             "--vis-dir", str(tmp_path / "empty" / "vis"), "--out-dir", str(tmp_path / "o")))
    _pair_files(tmp_path / "in", "only_ir")
    os.remove(tmp_path / "in" / "vis" / "only_ir.png")
    assert "without a twin" in _one_line_error(
        _cli("--checkpoint", workdir, "--ir-dir", str(tmp_path / "in" / "ir"),
             "--vis-dir", str(tmp_path / "in" / "vis"), "--out-dir", str(tmp_path / "o")))
    assert "inside the input folder" in _one_line_error(
        _cli("--checkpoint", workdir, "--ir-dir", str(tmp_path / "in" / "ir"),
             "--vis-dir", str(tmp_path / "in" / "vis"), "--out-dir", str(tmp_path / "in" / "ir" / "f")))
    out.write_bytes(b"old")
    assert "exists" in _one_line_error(
        _cli("--checkpoint", workdir, "--ir", ir_path, "--vis", vis_path, "--out", str(out)))
    assert out.read_bytes() == b"old"


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path, workdir):
    import shutil
    other = tmp_path / "other"
    shutil.copytree(workdir, other)
    for step in os.listdir(other / "checkpoints"):
        meta = other / "checkpoints" / step / "config" / "metadata"
        config = json.loads(meta.read_text())
        config["model"]["width_multiplier"] = 0.25
        meta.write_text(json.dumps(config))
    ir_path, vis_path = _pair_files(tmp_path / "in")
    message = _one_line_error(_cli("--checkpoint", str(other), "--ir", ir_path, "--vis", vis_path,
                                   "--out", str(tmp_path / "o.png")))
    assert "does not fit the architecture of this config" in message
    assert not (tmp_path / "o.png").exists()


def test_a_bad_pair_mid_folder_leaves_no_partial_file_and_the_rest_complete(tmp_path, workdir):
    for i, name in enumerate(["p1", "p2", "p3"]):
        _pair_files(tmp_path / "in", name, size=(40, 52), seed=i)
    (tmp_path / "in" / "vis" / "p2.png").write_bytes(b"\x89PNG\r\n\x1a\ncorrupt")
    out = tmp_path / "out"
    args = ["--checkpoint", workdir, "--ir-dir", str(tmp_path / "in" / "ir"),
            "--vis-dir", str(tmp_path / "in" / "vis"), "--out-dir", str(out)]
    result = _cli(*args)
    assert "pair p2" in _one_line_error(result)
    result = _cli(*args, "--skip-bad", "--overwrite")
    assert result.returncode == 1 and "failed: p2" in result.stderr
    assert sorted(os.listdir(out)) == ["p1.png", "p3.png"]  # no temporary or partial files


def test_write_png_leaves_nothing_when_the_write_fails(tmp_path, monkeypatch):
    from ifes_jax.data import images

    def explode(self, fp, *args, **kwargs):
        fp.write(b"half")  # write_png hands Pillow the open temporary file
        raise OSError("disk full")
    monkeypatch.setattr(Image.Image, "save", explode)
    with pytest.raises(OSError):
        images.write_png(str(tmp_path / "x.png"), np.zeros((4, 4)))
    assert os.listdir(tmp_path) == []


def test_top_level_api(workdir):
    import ifes_jax
    model = ifes_jax.load_model(workdir)
    assert isinstance(model, ifes_jax.Fuser)
    ir, vis = synthetic_pair(11, 32, 40)
    rgb = np.stack([vis, vis * 0.9, vis * 0.8], axis=-1)
    out = ifes_jax.fuse_color(model, ir, rgb)
    assert out["fused"].shape == (32, 40, 3) and out["weights"].shape == (32, 40, 2)


def test_fusing_never_imports_the_trainer(tmp_path, workdir):
    """Inference restores the parameters alone: no optimizer, data pipeline or trainer."""
    ir_path, vis_path = _pair_files(str(tmp_path))
    code = ("import runpy, sys\n"
            f"sys.argv = ['fuse.py', '--checkpoint', {workdir!r}, '--ir', {ir_path!r}, "
            f"'--vis', {vis_path!r}, '--out', {str(tmp_path / 'f.png')!r}]\n"
            f"runpy.run_path({os.path.join(ROOT, 'scripts', 'fuse.py')!r}, run_name='__main__')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('optax', 'grain', 'tensorflow_datasets') or m == 'ifes_jax.train'))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "f.png").exists()


def _stretched(image):  # CDDFuse's saving step, in numpy
    return (image - image.min()) / (image.max() - image.min())


def test_normalize_minmax_stretches_each_fused_image_and_is_off_by_default(tmp_path, workdir, fuser):
    ir_path, vis_path = _pair_files(tmp_path, seed=3)
    out = tmp_path / "stretched.png"
    result = _cli("--checkpoint", workdir, "--ir", ir_path, "--vis", vis_path, "--out", str(out),
                  "--normalize", "minmax")
    assert result.returncode == 0, result.stderr[-2000:]
    plain = fuser(np.asarray(Image.open(ir_path)) / 255.0, np.asarray(Image.open(vis_path)) / 255.0)["fused"]
    written = np.asarray(Image.open(out))
    np.testing.assert_array_equal(written, np.rint(_stretched(plain) * 255))
    assert written.min() == 0 and written.max() == 255
    assert plain.min() > 0.5 / 255 or plain.max() < 254.5 / 255  # so the default is not stretched
    # evaluate's ckpt-minmax method scores the same stretched image; ckpt scores it as fused
    from ifes_jax import evaluate
    methods = evaluate.parse_methods(f"ckpt:{workdir},ckpt-minmax:{workdir}")
    assert [m.label for m in methods] == [f"ours ({os.path.basename(workdir)})",
                                          f"ours ({os.path.basename(workdir)}, min-max)"]
    runner = evaluate.Runner(methods)
    ir, vis = np.asarray(Image.open(ir_path)) / 255.0, np.asarray(Image.open(vis_path)) / 255.0
    as_fused, _ = runner.fuse(methods[0], "a", ir, vis)
    stretched, _ = runner.fuse(methods[1], "a", ir, vis)
    np.testing.assert_allclose(as_fused, plain, atol=1e-6)
    np.testing.assert_allclose(stretched, _stretched(plain), atol=1e-6)
    # a flat image has no range to stretch; videos are not stretched frame by frame
    flat = np.full((5, 6), 0.25, np.float32)
    np.testing.assert_array_equal(fuse.minmax_stretch(flat), flat)
    refused = _cli("--checkpoint", workdir, "--ir-video", str(tmp_path), "--vis-video", str(tmp_path),
                   "--out", str(tmp_path / "v.mp4"), "--normalize", "minmax")
    assert refused.returncode != 0 and "--normalize is for images" in refused.stderr
