"""Per-pixel metric maps: they add up to the metrics (NumPy references of tests/test_metrics.py),
and `evaluate --maps` writes them."""
import os

import numpy as np
from PIL import Image

from ifes_jax import evaluate, losses, metric_maps, metrics
from tests.test_metrics import _random_triple, np_ssim, np_viff


def test_maps_add_up_to_their_metrics():
    fused, ir, vis = _random_triple(5, (70, 90))
    maps = metric_maps.metric_maps(fused, ir, vis)
    np.testing.assert_allclose(float(np.mean(maps["ssim"])),
                               (np_ssim(fused, ir) + np_ssim(fused, vis)) / 2, rtol=1e-4)
    np.testing.assert_allclose(float(np.mean(maps["mef_ssim"])),
                               float(losses.decomposition_ssim(fused, ir, vis)), rtol=1e-6)
    assert maps["ssim"].shape == maps["mef_ssim"].shape == (60, 80)  # 'valid' 11 x 11 windows
    num, den = metrics.qabf_maps(fused, ir, vis)
    np.testing.assert_allclose(float(np.sum(maps["qabf"] * den) / np.sum(den)),
                               float(metrics.qabf(fused, ir, vis)), rtol=1e-5)
    # VIFF from the per-scale maps (Σ VID / Σ VIND, weighted) is the reference VIFF
    viff = sum(w * float(np.sum(vid + 1e-7) / np.sum(vind + 1e-7))
               for w, (vid, vind) in zip(metrics.VIFF_SCALE_WEIGHTS, metrics.viff_maps(fused, ir, vis)))
    np.testing.assert_allclose(viff, np_viff(fused, ir, vis), rtol=1e-4)
    assert [maps[f"viff_{k}"].shape for k in range(1, 5)] == [(54, 74), (23, 33), (10, 15), (4, 7)]


def test_evaluate_writes_every_methods_maps_only_when_asked(tmp_path):
    rng = np.random.default_rng(0)
    for sub in ("ir", "vis"):
        os.makedirs(tmp_path / "data" / sub)
        Image.fromarray(rng.integers(0, 255, (64, 72), dtype=np.uint8)).save(tmp_path / "data" / sub / "p.png")
    methods = evaluate.parse_methods("average,max")
    evaluate.evaluate(str(tmp_path / "data"), methods, str(tmp_path / "plain"), profile="default",
                      figure_pairs=0, log=lambda msg: None)
    assert not os.path.exists(tmp_path / "plain" / "maps")
    evaluate.evaluate(str(tmp_path / "data"), methods, str(tmp_path / "out"), profile="default",
                      figure_pairs=0, maps=True, log=lambda msg: None)
    written = sorted(os.listdir(tmp_path / "out" / "maps" / "p"))
    names = ["mef_ssim", "qabf", "ssim", "viff_1", "viff_2", "viff_3", "viff_4"]
    assert written == sorted(f"{m}_{n}.png" for m in ("average", "max") for n in names)
    assert Image.open(tmp_path / "out" / "maps" / "p" / "max_qabf.png").size == (72, 64)
