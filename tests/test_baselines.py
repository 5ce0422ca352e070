"""Classical baselines against their definitions."""
import jax
import numpy as np

from ifes_jax import baselines, losses

laplacian = jax.jit(baselines.laplacian)  # as `evaluate` runs it (eagerly, each op compiles per shape)


def _pair(seed=0, shape=(37, 53)):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=shape).astype(np.float32), rng.uniform(size=shape).astype(np.float32)


def test_average_and_max_are_their_formulas():
    a, b = _pair()
    np.testing.assert_allclose(baselines.average(a, b), (a + b) / 2, rtol=1e-7)
    np.testing.assert_array_equal(baselines.maximum(a, b), np.maximum(a, b))


def test_laplacian_pyramid_reconstructs_its_input_when_both_sources_are_equal():
    for shape in [(37, 53), (64, 64), (129, 100)]:
        a, _ = _pair(1, shape)
        np.testing.assert_allclose(laplacian(a, a), a, atol=1e-6)


def test_laplacian_fusion_keeps_the_stronger_detail_and_averages_the_base():
    a, b = _pair(2, (64, 64))
    levels = baselines.pyramid_levels(a.shape)
    pa, pb = baselines.laplacian_pyramid(a, levels), baselines.laplacian_pyramid(b, levels)
    chosen = [np.where(np.abs(fa) >= np.abs(fb), fa, fb) for fa, fb in zip(pa[:-1], pb[:-1])]
    expected = baselines.reconstruct(chosen + [(pa[-1] + pb[-1]) / 2])
    np.testing.assert_allclose(laplacian(a, b), expected, atol=1e-6)
    assert levels == 4  # 64 px: the top level keeps 8 px a side


def test_target_is_the_expected_image_plus_mean_luminance():
    a, b = _pair(3)
    expected = np.clip(np.asarray(losses.expected_image(a, b)) + (a.mean() + b.mean()) / 2, 0, 1)
    np.testing.assert_allclose(baselines.target(a, b), expected, atol=1e-6)
