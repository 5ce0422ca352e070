"""Fusion metrics against NumPy/SciPy references written from their formulas, closed forms,
and the jit/vmap/grad contract."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage, signal

from ifes_jax import metrics, profiles
from ifes_jax.data import pairs

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


# ------------------------------------------------------------------ NumPy references

def np_entropy(x):
    levels = np.clip(np.round(x.astype(np.float64) * 255), 0, 255).astype(int)
    p = np.bincount(levels.ravel(), minlength=256) / levels.size
    p = p[p > 0]
    return -np.sum(p * np.log2(p))


def np_mi(a, b):
    la = np.clip(np.round(a * 255.0), 0, 255).astype(int).ravel()
    lb = np.clip(np.round(b * 255.0), 0, 255).astype(int).ravel()
    joint, _, _ = np.histogram2d(la, lb, bins=256, range=[[-0.5, 255.5], [-0.5, 255.5]])
    pj = joint / joint.sum()
    pa, pb = pj.sum(1), pj.sum(0)
    nz = pj > 0
    return np.sum(pj[nz] * np.log2(pj[nz] / np.outer(pa, pb)[nz]))


def np_ag(x):
    f = x.astype(np.float64) * 255
    dx = f[:-1, 1:] - f[:-1, :-1]
    dy = f[1:, :-1] - f[:-1, :-1]
    return np.mean(np.sqrt((dx ** 2 + dy ** 2) / 2))


def np_gld(x):
    f = x.astype(np.float64) * 255
    return np.mean(np.abs(f[:-1, :-1] - f[1:, :-1]) + np.abs(f[:-1, :-1] - f[:-1, 1:]))


def np_sf(x, scale=1.0):
    f = x.astype(np.float64) * scale
    m, n = f.shape
    h = np.sqrt(np.sum((f[:, 1:] - f[:, :-1]) ** 2) / (m * n))
    v = np.sqrt(np.sum((f[1:, :] - f[:-1, :]) ** 2) / (m * n))
    return np.sqrt(h ** 2 + v ** 2)


def fspecial_gaussian(n, sigma):
    ax = np.arange(n) - (n - 1) / 2
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def filter2_valid(w, x):
    return signal.correlate2d(x, w, mode="valid")


def np_ssim(a, b):
    x, y = a.astype(np.float64) * 255, b.astype(np.float64) * 255
    w = fspecial_gaussian(11, 1.5)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = filter2_valid(w, x), filter2_valid(w, y)
    sx = filter2_valid(w, x * x) - mx ** 2
    sy = filter2_valid(w, y * y) - my ** 2
    sxy = filter2_valid(w, x * y) - mx * my
    return np.mean(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sx + sy + c2)))


def np_viff(fused, ir, vis):
    """Han et al. 2013, following the structure of the authors' public MATLAB code."""
    sq = 0.005 * 255 * 255
    p = np.array([1, 0, 0.15, 1]) / 2.15

    def terms(ref, dist):
        out = []
        for scale in range(1, 5):
            n = 2 ** (4 - scale + 1) + 1
            win = fspecial_gaussian(n, n / 5)
            if scale > 1:
                ref = filter2_valid(win, ref)[::2, ::2]
                dist = filter2_valid(win, dist)[::2, ::2]
            mu1, mu2 = filter2_valid(win, ref), filter2_valid(win, dist)
            s1 = filter2_valid(win, ref * ref) - mu1 ** 2
            s2 = filter2_valid(win, dist * dist) - mu2 ** 2
            s12 = filter2_valid(win, ref * dist) - mu1 * mu2
            s1[s1 < 0] = 0
            s2[s2 < 0] = 0
            g = s12 / (s1 + 1e-10)
            sv = s2 - g * s12
            g[s1 < 1e-10] = 0
            sv[s1 < 1e-10] = s2[s1 < 1e-10]
            s1[s1 < 1e-10] = 0
            g[s2 < 1e-10] = 0
            sv[s2 < 1e-10] = 0
            sv[g < 0] = s2[g < 0]
            g[g < 0] = 0
            sv[sv <= 1e-10] = 1e-10
            out.append((np.log10(1 + g ** 2 * s1 / (sv + sq)), np.log10(1 + s1 / sq), g))
        return out

    f, a, b = (x.astype(np.float64) * 255 for x in (fused, ir, vis))
    ta, tb = terms(a, f), terms(b, f)
    total = 0.0
    for k in range(4):
        use_a = ta[k][2] < tb[k][2]
        vid = np.where(use_a, ta[k][0], tb[k][0])
        vind = np.where(use_a, ta[k][1], tb[k][1])
        total += p[k] * np.sum(vid + 1e-7) / np.sum(vind + 1e-7)
    return total


def np_qabf(fused, ir, vis):
    sx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)
    sy = sx.T

    def edges(x):
        x = x.astype(np.float64) * 255
        gx = ndimage.correlate(x, sx, mode="constant")
        gy = ndimage.correlate(x, sy, mode="constant")
        gx[np.abs(gx) < 1e-3] = 0  # float noise of a zero gradient counts as zero
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(gx == 0, np.pi / 2, np.arctan(gy / gx))
        return np.hypot(gx, gy), a

    def q(gs, as_, gf, af):
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(np.maximum(gs, gf) > 0, np.minimum(gs, gf) / np.maximum(gs, gf), 1.0)
        ori = 1 - np.abs(as_ - af) / (np.pi / 2)
        return (0.9994 / (1 + np.exp(-15 * (rel - 0.5)))) * (0.9879 / (1 + np.exp(-22 * (ori - 0.8))))

    gf, af = edges(fused)
    ga, aa = edges(ir)
    gb, ab = edges(vis)
    return np.sum(q(ga, aa, gf, af) * ga + q(gb, ab, gf, af) * gb) / np.sum(ga + gb)


def np_scd(fused, ir, vis):
    corr = lambda x, y: np.corrcoef(x.ravel(), y.ravel())[0, 1]
    f, a, b = (x.astype(np.float64) for x in (fused, ir, vis))
    return corr(f - b, a) + corr(f - a, b)


def np_psnr(fused, ir, vis):
    f, a, b = (x.astype(np.float64) * 255 for x in (fused, ir, vis))
    return 10 * np.log10(255 ** 2 / ((np.mean((f - a) ** 2) + np.mean((f - b) ** 2)) / 2))


REFERENCES = {
    "EN": lambda f, a, b: np_entropy(f),
    "SD": lambda f, a, b: np.std(f.astype(np.float64) * 255),
    "SF": lambda f, a, b: np_sf(f),
    "AG": lambda f, a, b: np_ag(f),
    "GLD": lambda f, a, b: np_gld(f),
    "MI": lambda f, a, b: np_mi(a, f) + np_mi(b, f),
    "VIFF": np_viff,
    "Qabf": np_qabf,
    "SCD": np_scd,
    "SSIM": lambda f, a, b: (np_ssim(f, a) + np_ssim(f, b)) / 2,
    "PSNR": np_psnr,
}
OURS = {
    "EN": lambda f, a, b: metrics.entropy(f),
    "SD": lambda f, a, b: metrics.standard_deviation(f),
    "SF": lambda f, a, b: metrics.spatial_frequency(f),
    "AG": lambda f, a, b: metrics.average_gradient(f),
    "GLD": lambda f, a, b: metrics.gray_level_difference(f),
    "MI": metrics.mutual_information,
    "VIFF": metrics.viff,
    "Qabf": metrics.qabf,
    "SCD": metrics.scd,
    "SSIM": metrics.ssim_fusion,
    "PSNR": metrics.psnr,
}


def _random_triple(seed=0, shape=(81, 97)):
    rng = np.random.default_rng(seed)
    ir = ndimage.gaussian_filter(rng.uniform(size=shape), 1.5)
    vis = rng.uniform(size=shape)
    ir, vis = ((x - x.min()) / (x.max() - x.min()) for x in (ir, vis))
    return ((0.6 * ir + 0.4 * vis).astype(np.float32), ir.astype(np.float32), vis.astype(np.float32))


def _real_triple():
    found = pairs.find_pairs(os.path.join(DATA, "tno-infv20"))
    (ir, _, _), (vis, _, _) = pairs.read_pair(found[4])
    ir, vis = ir[:200, :260] / 255.0, vis[:200, :260] / 255.0  # a crop keeps the references quick
    return (0.6 * ir + 0.4 * vis).astype(np.float32), ir.astype(np.float32), vis.astype(np.float32)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_metric_matches_numpy_reference_on_random_images(name):
    f, a, b = _random_triple()
    np.testing.assert_allclose(float(OURS[name](f, a, b)), REFERENCES[name](f, a, b), rtol=1e-4)


@pytest.mark.skipif(not os.path.isdir(DATA), reason="real pairs live in ../shared/data")
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_metric_matches_numpy_reference_on_a_real_tno_pair(name):
    f, a, b = _real_triple()
    np.testing.assert_allclose(float(OURS[name](f, a, b)), REFERENCES[name](f, a, b), rtol=1e-4)


def test_entropy_of_256_equally_frequent_levels_is_8_bits():
    x = (np.arange(256 * 16) % 256).reshape(64, 64) / 255.0
    np.testing.assert_allclose(float(metrics.entropy(x)), 8.0, rtol=1e-6)


def test_gradient_metrics_of_a_linear_ramp():
    m, n, step = 20, 30, 2.0  # 2 gray levels per column
    ramp = np.tile(np.arange(n) * step / 255.0, (m, 1)).astype(np.float32)
    np.testing.assert_allclose(float(metrics.average_gradient(ramp)), step / np.sqrt(2), rtol=1e-5)
    np.testing.assert_allclose(float(metrics.gray_level_difference(ramp)), step, rtol=1e-5)
    # SF on 0–1: RF² = (step/255)² (n−1)/n, CF = 0
    np.testing.assert_allclose(float(metrics.spatial_frequency(ramp)),
                               step / 255 * np.sqrt((n - 1) / n), rtol=1e-5)


def test_mutual_information_of_an_image_with_itself_is_its_entropy():
    _, a, _ = _random_triple(1)
    np.testing.assert_allclose(float(metrics.mutual_information_pair(a, a)),
                               float(metrics.entropy(a)), rtol=1e-5)


def test_ssim_and_viff_of_an_image_with_itself_are_one():
    _, a, _ = _random_triple(2)
    np.testing.assert_allclose(float(metrics.ssim(a, a)), 1.0, atol=1e-6)
    np.testing.assert_allclose(float(metrics.viff(a, a, a)), 1.0, rtol=1e-5)


def test_viff_refuses_images_too_small_for_its_scales():
    with pytest.raises(ValueError, match="at least 41x41"):
        metrics.viff(*(np.zeros((40, 100), np.float32),) * 3)
    assert np.isfinite(float(metrics.viff(*(np.full((41, 41), 0.5, np.float32),) * 3)))


def test_paper_mi_is_twice_the_entropy_on_any_input():
    for seed in range(3):
        f, a, b = _random_triple(seed)
        scores = profiles.compute(f, a, b, "paper")
        np.testing.assert_allclose(float(scores["MI"]), 2 * float(scores["EN"]), rtol=1e-6)


@pytest.mark.parametrize("profile", ["paper", "default", "vifb", "cddfuse"])
def test_constant_images_give_finite_values(profile):
    flat = np.full((80, 80), 0.5, np.float32)
    _, a, b = _random_triple(3, (80, 80))
    for f, x, y in [(flat, a, b), (flat, flat, flat), (a, flat, flat)]:
        scores = profiles.score(f, x, y, profile)
        assert all(np.isfinite(v) for v in scores.values()), scores
    scores = profiles.compute(flat, flat, flat, "default")
    assert float(scores["EN"]) == 0 and float(scores["AG"]) == 0 and float(scores["SD"]) == 0


def test_vmap_equals_a_loop():
    triples = [_random_triple(s, (66, 68)) for s in range(3)]
    f, a, b = (np.stack([t[i] for t in triples]) for i in range(3))
    unoptimised = {"xla_backend_optimization_level": 0}  # 66 x 68 images: compiling is the cost
    for name, metric in profiles.PROFILES["default"].metrics.items():
        batched = jax.jit(jax.vmap(metric.fn), compiler_options=unoptimised)(f, a, b)
        single = jax.jit(metric.fn, compiler_options=unoptimised)
        for i in range(3):
            # float32 sums in another order: agreement to 1e-4
            np.testing.assert_allclose(float(batched[i]), float(single(f[i], a[i], b[i])),
                                       rtol=1e-4, atol=1e-6, err_msg=name)


def test_soft_histogram_metrics_equal_the_hard_ones_on_8_bit_images_and_have_finite_grads():
    f, a, b = (np.round(x * 255) / 255 for x in _random_triple(4))
    np.testing.assert_allclose(float(metrics.soft_entropy(f)), float(metrics.entropy(f)), atol=1e-6)
    np.testing.assert_allclose(float(metrics.soft_mutual_information(f, a, b)),
                               float(metrics.mutual_information(f, a, b)), atol=1e-5)
    g_en = jax.grad(metrics.soft_entropy)(jnp.asarray(f) + 0.3 / 255)
    g_mi = jax.grad(metrics.soft_mutual_information)(jnp.asarray(f) + 0.3 / 255, a, b)
    assert bool(jnp.all(jnp.isfinite(g_en))) and bool(jnp.all(jnp.isfinite(g_mi)))
    assert float(jnp.abs(g_en).sum()) > 0
    # on float images the soft entropy is within a small fraction of a bit of the hard one
    fr, _, _ = _random_triple(5)
    assert abs(float(metrics.soft_entropy(fr)) - float(metrics.entropy(fr))) < 0.1
