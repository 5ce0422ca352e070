"""The SSIM-decomposition loss (paper eq. 6–13) against NumPy references written from the formulas."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ifes_jax import losses

XI, C, EPS = 1.7, 0.03 ** 2, 1e-6


def naive_window_ssim_map(fused, ir, vis, taps, xi=XI, c=C, eps=EPS):
    """Eq. 8–11 on every window position by unfolding patches, in float64.

    Weighted inner product <a, b> = Σ w a b with the 2-D window w (Σ w = 1); a patch's mean,
    contrast and structure are taken with it, and the variance floor eps enters as
    S_n = d_n / sqrt(‖d_n‖² + eps), C_n = ‖d_n‖² / sqrt(‖d_n‖² + eps), S̄ = ΣS / sqrt(‖ΣS‖² + eps).
    """
    w = np.outer(taps, taps)
    k = len(taps)
    out = np.empty((ir.shape[0] - k + 1, ir.shape[1] - k + 1))
    dot = lambda a, b: np.sum(w * a * b)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            p1, p2, pf = (x[i:i + k, j:j + k].astype(np.float64) for x in (ir, vis, fused))
            d1, d2, df = p1 - dot(p1, 1), p2 - dot(p2, 1), pf - dot(pf, 1)
            r1, r2 = np.sqrt(dot(d1, d1) + eps), np.sqrt(dot(d2, d2) + eps)
            contrast = max(dot(d1, d1) / r1, dot(d2, d2) / r2)
            s = d1 / r1 + d2 / r2
            target = xi * contrast * s / np.sqrt(dot(s, s) + eps)
            dt = target - dot(target, 1)
            out[i, j] = (2 * dot(dt, df) + c) / (dot(dt, dt) + dot(df, df) + c)
    return out


def numpy_global_ssim(fused, ir, vis, xi=XI, c=C):
    """Eq. 8–11 over the whole image, literally: C_n = ‖I_n − μ‖, S_n = (I_n − μ)/C_n, ..."""
    vecs = [x.astype(np.float64).ravel() for x in (ir, vis)]
    contrasts = [np.linalg.norm(v - v.mean()) for v in vecs]
    structures = [(v - v.mean()) / cn for v, cn in zip(vecs, contrasts)]
    s = structures[0] + structures[1]
    target = xi * max(contrasts) * s / np.linalg.norm(s)
    f = fused.astype(np.float64).ravel()
    cov = np.mean((target - target.mean()) * (f - f.mean()))
    return (2 * cov + c) / (target.var() + f.var() + c)


def _images(seed, shape=(24, 29), flat=False):
    rng = np.random.default_rng(seed)
    ir, vis, fused = (rng.uniform(size=shape).astype(np.float32) for _ in range(3))
    if flat:  # flat regions: constant blocks in each source, and a fully flat corner in all three
        ir[:12, :14] = 0.3
        vis[10:, 12:] = 0.8
        for x in (ir, vis, fused):
            x[:12, :12] = 0.5
    return ir, vis, fused


@pytest.mark.parametrize("window", ["uniform", "gaussian"])
@pytest.mark.parametrize("flat", [False, True])
def test_window_mode_equals_patch_unfolding(window, flat):
    ir, vis, fused = _images(0, flat=flat)
    taps = losses.window_1d(window, 11, 1.5)
    expected = naive_window_ssim_map(fused, ir, vis, taps)
    with jax.enable_x64(True):  # the closed form is exact: compare the maths in float64
        got64 = losses.decomposition_ssim_map(*(jnp.asarray(x, jnp.float64) for x in (fused, ir, vis)),
                                              window=window)
        assert got64.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got64), expected, atol=1e-10)
    # float32, as training runs it: E[x²] − μ² cancels to ~1e-9 absolute, which only matters in
    # windows whose variance is near the 1e-6 floor (the flat-region images)
    got32 = losses.decomposition_ssim_map(fused, ir, vis, mode="window", window=window)
    np.testing.assert_allclose(np.asarray(got32), expected, atol=1e-3 if flat else 1e-5)
    np.testing.assert_allclose(float(jnp.mean(got32)), expected.mean(), atol=1e-4 if flat else 1e-5)


def test_global_mode_equals_equations_8_to_11():
    for seed in range(3):
        ir, vis, fused = _images(seed, shape=(40, 33))
        got = losses.decomposition_ssim(fused, ir, vis, mode="global", eps=0.0)
        np.testing.assert_allclose(float(got), numpy_global_ssim(fused, ir, vis), rtol=1e-5)


def test_expected_image_scores_one_and_has_the_max_contrast():
    ir, vis, _ = _images(4, shape=(30, 30))
    target = losses.expected_image(ir, vis, xi=XI, eps=0.0)
    np.testing.assert_allclose(float(losses.decomposition_ssim(target, ir, vis, mode="global", eps=0.0)),
                               1.0, atol=1e-6)
    np.testing.assert_allclose(float(jnp.std(target)), XI * max(ir.std(), vis.std()), rtol=1e-5)


@pytest.mark.parametrize("mode", ["window", "global"])
def test_ssim_of_image_with_itself_is_one(mode):
    ir, vis, fused = _images(5, flat=True)
    for x in (ir, vis, np.full_like(ir, 0.4)):
        np.testing.assert_allclose(float(losses.cs_ssim(x, x, mode=mode)), 1.0, atol=1e-5)


def test_batched_input_scores_each_image():
    batch = [_images(s) for s in range(3)]
    ir, vis, fused = (np.stack([b[i] for b in batch])[..., None] for i in range(3))
    scores = losses.decomposition_ssim(fused, ir, vis)
    assert scores.shape == (3,)
    for i in range(3):
        np.testing.assert_allclose(float(scores[i]),
                                   float(losses.decomposition_ssim(fused[i, ..., 0], ir[i, ..., 0],
                                                                   vis[i, ..., 0])), rtol=1e-6)


def _loss_config(**overrides):
    cfg = ml_collections.ConfigDict(dict(
        weight_ir=1.0, weight_vis=1.0, weight_fusion=1.0, weight_map=1.0, recon="mse",
        ssim_mode="window", window="uniform", window_size=11, window_sigma=1.5, ssim_c=C, eps=EPS,
        xi=XI, tau=1.0))
    cfg.update(overrides)
    return cfg


def test_total_loss_is_the_weighted_sum_of_eq_6():
    rng = np.random.default_rng(6)
    ir, vis, r_ir, r_vis, fused = (rng.uniform(size=(2, 20, 20, 1)).astype(np.float32) for _ in range(5))
    weights = rng.uniform(size=(2, 20, 20, 2)).astype(np.float32)
    outputs = {"fused": fused, "weights": weights, "recon_ir": r_ir, "recon_vis": r_vis}
    cfg = _loss_config(weight_ir=2.0, weight_map=0.5, tau=1.2, recon="mae")
    total, terms = losses.ifesnet_loss(outputs, ir, vis, cfg)
    l_i, l_v = np.abs(r_ir - ir).mean(), np.abs(r_vis - vis).mean()
    l_m = np.abs(1.2 - weights[..., 0] - weights[..., 1]).mean()
    l_f = np.mean([1 - naive_window_ssim_map(fused[b, ..., 0], ir[b, ..., 0], vis[b, ..., 0],
                                             losses.window_1d("uniform", 11)).mean() for b in range(2)])
    np.testing.assert_allclose([terms["loss_ir"], terms["loss_vis"], terms["loss_map"], terms["loss_fusion"]],
                               [l_i, l_v, l_m, l_f], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(total), 2 * l_i + l_v + l_f + 0.5 * l_m, rtol=1e-5)
    _, mse_terms = losses.ifesnet_loss(outputs, ir, vis, _loss_config())
    np.testing.assert_allclose(float(mse_terms["loss_ir"]), ((r_ir - ir) ** 2).mean(), rtol=1e-5)


def test_weight_map_loss_per_pixel_and_per_image():
    rng = np.random.default_rng(13)
    weights = rng.uniform(0, 1.5, size=(3, 13, 12, 2)).astype(np.float32)
    total = weights[..., 0] + weights[..., 1]
    pixel = [np.mean(np.abs(0.9 - total[b])) for b in range(3)]
    image = [abs(0.9 - np.mean(total[b])) for b in range(3)]
    np.testing.assert_allclose(losses.weight_map_loss(weights, 0.9), pixel, rtol=1e-6)
    np.testing.assert_allclose(losses.weight_map_loss(weights, 0.9, "image"), image, rtol=1e-5)
    # per image, weights summing to τ on average cost nothing, however they vary
    balanced = np.stack([total[0], 2 * total[0].mean() - total[0]], axis=-1)[None]
    assert float(losses.weight_map_loss(balanced, 2 * float(total[0].mean()), "image")[0]) < 1e-5
    _, terms = losses.ifesnet_loss({"fused": weights[..., :1], "weights": weights,
                                    "recon_ir": weights[..., :1], "recon_vis": weights[..., 1:]},
                                   weights[..., :1], weights[..., 1:],
                                   _loss_config(tau=0.9, map_reduction="image"))
    np.testing.assert_allclose(float(terms["loss_map"]), np.mean(image), rtol=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        losses.weight_map_loss(weights, 1.0, "sum")


@pytest.mark.parametrize("mode", ["window", "global"])
@pytest.mark.parametrize("window", ["uniform", "gaussian"])
def test_gradient_is_finite_on_flat_images(mode, window):
    flat = np.full((1, 24, 24, 1), 0.5, np.float32)
    ramp = np.tile(np.linspace(0, 1, 24, dtype=np.float32), (24, 1))[None, ..., None]
    half = flat.copy()
    half[:, :, 12:] = 0.9
    loss = lambda f, a, b: losses.decomposition_ssim(f, a, b, mode=mode, window=window)  # noqa: E731
    value_of = jax.jit(loss)  # one program for the four cases (one size)
    grad_of = jax.jit(jax.grad(lambda f, a, b: loss(f, a, b).sum(), argnums=(0, 1, 2)))
    for ir, vis, fused in [(flat, flat, flat), (flat, ramp, flat), (half, flat, ramp), (ramp, -ramp + 1, flat)]:
        grads = grad_of(fused, ir, vis)
        value = value_of(fused, ir, vis)
        assert bool(jnp.all(jnp.isfinite(value)))
        for g in grads:
            assert bool(jnp.all(jnp.isfinite(g)))
