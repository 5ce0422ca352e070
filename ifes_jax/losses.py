"""The IFESNet loss (paper §III.D, eq. 6–13) and its SSIM-decomposition target, in pure `jnp`.

The expected image of eq. 8–10 decomposes each source into contrast and structure,
    C_n = ‖I_n − μ_n‖,   S_n = (I_n − μ_n) / C_n,   C̄ = max_n C_n,   S̄ = ΣS_n / ‖ΣS_n‖,
    Ī = ξ·C̄·S̄,
and eq. 11 scores the fused image against it with the contrast-structure SSIM (no luminance):
    SSIM = (2σ_{Ī,If} + c) / (σ²_Ī + σ²_If + c).

Two modes. `global`: one decomposition over the whole image (eq. 9–10 read literally).
`window`: the patch-wise decomposition of MEF-SSIM / SPD-MEF, the works the paper cites — every
window position (stride 1, valid positions only) is decomposed on its own and the scores are
averaged. Both are computed in closed form from (local) moments, never by unfolding patches:
with σ_n the source std, σ_nf the source/fused covariance and ρ the source correlation,
    ‖S1 + S2‖² = 2 + 2ρ,
    σ²_Ī  = ξ² · max(σ1, σ2)²,
    σ_Ī,If = ξ · max(σ1, σ2) · (σ_1f/σ1 + σ_2f/σ2) / ‖S1 + S2‖,
so the window mode costs a few separable filters and O(H·W) memory. Flat patches are handled by
a variance floor `eps` (see `decomposition_ssim_from_moments`): a flat patch has zero contrast
and contributes no structure, values and gradients stay finite, and the floor enters the closed
form exactly as it enters the patch-wise definition, so the two agree.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_EPS = 1e-6  # variance floor: 8-bit quantisation noise alone has variance (1/255)²/12 ≈ 1.3e-6


def gaussian_window_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps (the 2-D window is their outer product)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def window_1d(window: str, size: int, sigma: float = 1.5) -> np.ndarray:
    """1-D taps of the separable `uniform` or `gaussian` window."""
    if window == "uniform":
        return np.full(size, 1.0 / size)
    if window == "gaussian":
        return gaussian_window_1d(size, sigma)
    raise ValueError(f"window must be 'uniform' or 'gaussian', got {window!r}")


class Moments(NamedTuple):
    """First and second moments of (ir, vis, fused) over a window; each (B, H', W')."""

    var_ir: jax.Array
    var_vis: jax.Array
    var_fused: jax.Array
    cov_ir_vis: jax.Array
    cov_ir_fused: jax.Array
    cov_vis_fused: jax.Array


def _moments_from_means(m1, m2, mf, m11, m22, mff, m12, m1f, m2f) -> Moments:
    return Moments(m11 - m1 * m1, m22 - m2 * m2, mff - mf * mf,
                   m12 - m1 * m2, m1f - m1 * mf, m2f - m2 * mf)


def _products(ir, vis, fused):
    return [ir, vis, fused, ir * ir, vis * vis, fused * fused, ir * vis, ir * fused, vis * fused]


def _centre(ir_BHW, vis_BHW, fused_BHW):
    # Moments are shift-invariant; removing each image's mean cuts float32 cancellation in E[x²]−μ².
    centre = lambda x: x - jax.lax.stop_gradient(jnp.mean(x, axis=(-2, -1), keepdims=True))
    return centre(ir_BHW), centre(vis_BHW), centre(fused_BHW)


def global_moments(ir_BHW, vis_BHW, fused_BHW) -> Moments:
    """Moments over the whole image (population statistics); each (B, 1, 1)."""
    ir, vis, fused = _centre(ir_BHW, vis_BHW, fused_BHW)
    means = [jnp.mean(p, axis=(-2, -1), keepdims=True) for p in _products(ir, vis, fused)]
    return _moments_from_means(*means)


def separable_filter_valid(x, taps, axes=(-2, -1)):
    """Correlate `x` with the window outer(taps, taps) over two axes, 'valid' output.

    Written as shifted, weighted sums of slices: XLA fuses them into a few passes, where a
    depthwise convolution is about 20x slower on CPU.
    """
    taps = [float(t) for t in np.asarray(taps)]
    for axis in axes:
        n = x.shape[axis] - len(taps) + 1
        x = sum(t * jax.lax.slice_in_dim(x, i, i + n, axis=axis) for i, t in enumerate(taps))
    return x


def local_moments(ir_BHW, vis_BHW, fused_BHW, taps) -> Moments:
    """Moments at every valid window position, by one separable filter over the nine
    products; each (B, H−k+1, W−k+1)."""
    ir, vis, fused = _centre(ir_BHW, vis_BHW, fused_BHW)
    stack_BHWC = jnp.stack(_products(ir, vis, fused), axis=-1)
    means = separable_filter_valid(stack_BHWC, taps, axes=(1, 2))
    return _moments_from_means(*jnp.moveaxis(means, -1, 0))


def decomposition_ssim_from_moments(m: Moments, *, xi: float, c: float, eps: float = DEFAULT_EPS):
    """Eq. 11 between the fused image and Ī = ξ·C̄·S̄ (eq. 8–10), per window, in closed form.

    With the variance floor: S_n = d_n / sqrt(var_n + eps), S̄ = ΣS / sqrt(‖ΣS‖² + eps), and
    C_n = var_n / sqrt(var_n + eps) (= σ_n for var_n ≫ eps, 0 for a flat patch, with a finite
    gradient there). Norms are per pixel (‖a‖² = E_w[a²]), which leaves Ī unchanged.
    """
    var_ir = jnp.maximum(m.var_ir, 0.0)
    var_vis = jnp.maximum(m.var_vis, 0.0)
    std_ir, std_vis = jnp.sqrt(var_ir + eps), jnp.sqrt(var_vis + eps)
    contrast_max = jnp.maximum(var_ir / std_ir, var_vis / std_vis)  # C̄
    # ‖S1 + S2‖² = ‖S1‖² + ‖S2‖² + 2<S1, S2>
    norm_sq = var_ir / std_ir ** 2 + var_vis / std_vis ** 2 + 2.0 * m.cov_ir_vis / (std_ir * std_vis)
    norm_sq = jnp.maximum(norm_sq, 0.0)
    norm = jnp.sqrt(norm_sq + eps)
    var_target = (xi * contrast_max) ** 2 * norm_sq / (norm * norm)
    cov_target_fused = xi * contrast_max * (m.cov_ir_fused / std_ir + m.cov_vis_fused / std_vis) / norm
    var_fused = jnp.maximum(m.var_fused, 0.0)
    return (2.0 * cov_target_fused + c) / (var_target + var_fused + c)


def _as_BHW(x):
    x = jnp.asarray(x)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # at least float32; float64 stays
    if x.ndim == 4:
        if x.shape[-1] != 1:
            raise ValueError(f"expected single-channel NHWC images, got shape {x.shape}")
        return x[..., 0]
    if x.ndim in (2, 3):
        return x
    raise ValueError(f"expected HW, BHW or BHW1 images, got shape {x.shape}")


def moments(ir, vis, fused, *, mode: str = "window", window: str = "uniform",
            window_size: int = 11, sigma: float = 1.5) -> Moments:
    """`global_moments` or `local_moments` of HW, BHW or BHW1 images, by `mode`; each field is
    (..., H', W') with H' = H − k + 1 in `window` mode and 1 × 1 in `global` mode."""
    fused, ir, vis = _as_BHW(fused), _as_BHW(ir), _as_BHW(vis)
    single = fused.ndim == 2
    if single:
        fused, ir, vis = fused[None], ir[None], vis[None]
    if mode == "global":
        m = global_moments(ir, vis, fused)
    elif mode == "window":
        if min(fused.shape[-2:]) < window_size:
            raise ValueError(f"images of size {fused.shape[-2:]} are smaller than the "
                             f"{window_size}×{window_size} window")
        m = local_moments(ir, vis, fused, window_1d(window, window_size, sigma))
    else:
        raise ValueError(f"mode must be 'window' or 'global', got {mode!r}")
    return Moments(*(x[0] for x in m)) if single else m


def decomposition_ssim_map(fused, ir, vis, *, mode: str = "window", window: str = "uniform",
                           window_size: int = 11, sigma: float = 1.5, xi: float = 1.7,
                           c: float = 0.03 ** 2, eps: float = DEFAULT_EPS):
    """Per-window score of eq. 11 for `fused` against the expected image of (ir, vis).

    Images are HW, BHW or BHW1 in [0, 1]; the layout of the result is that of `moments`.
    """
    m = moments(ir, vis, fused, mode=mode, window=window, window_size=window_size, sigma=sigma)
    return decomposition_ssim_from_moments(m, xi=xi, c=c, eps=eps)


def decomposition_ssim(fused, ir, vis, **kwargs):
    """Mean of `decomposition_ssim_map` over windows: one score per image."""
    return jnp.mean(decomposition_ssim_map(fused, ir, vis, **kwargs), axis=(-2, -1))


def expected_image(ir, vis, *, xi: float = 1.7, eps: float = DEFAULT_EPS):
    """Ī = ξ·C̄·S̄ of eq. 8–10 over the whole image (the `global` decomposition), zero-mean,
    with the variance floor of `decomposition_ssim_from_moments`.

    Images are HW or BHW(1); returns the same layout. Its std is ξ·max(σ_ir, σ_vis) (eps = 0).
    """
    ir_BHW, vis_BHW = _as_BHW(ir), _as_BHW(vis)
    mean_sq = lambda d: jnp.mean(d * d, axis=(-2, -1), keepdims=True)
    d_ir = ir_BHW - jnp.mean(ir_BHW, axis=(-2, -1), keepdims=True)
    d_vis = vis_BHW - jnp.mean(vis_BHW, axis=(-2, -1), keepdims=True)
    var_ir, var_vis = mean_sq(d_ir), mean_sq(d_vis)
    structure = d_ir / jnp.sqrt(var_ir + eps) + d_vis / jnp.sqrt(var_vis + eps)
    structure = structure / jnp.sqrt(mean_sq(structure) + eps)
    contrast = jnp.maximum(var_ir / jnp.sqrt(var_ir + eps), var_vis / jnp.sqrt(var_vis + eps))
    return (xi * contrast * structure).reshape(jnp.shape(ir))


def cs_ssim(a, b, *, mode: str = "window", window: str = "uniform", window_size: int = 11,
            sigma: float = 1.5, c: float = 0.03 ** 2):
    """Contrast-structure SSIM (eq. 11's form), (2σ_ab + c) / (σ²_a + σ²_b + c), averaged over
    windows; one score per image. SSIM(a, a) = 1, and constant images give finite values."""
    m = moments(a, a, b, mode=mode, window=window, window_size=window_size, sigma=sigma)
    score = (2.0 * m.cov_ir_fused + c) / (jnp.maximum(m.var_ir, 0.0) + jnp.maximum(m.var_fused, 0.0) + c)
    return jnp.mean(score, axis=(-2, -1))


def reconstruction_loss(target, reconstruction, kind: str = "mse"):
    """L_I, L_V of eq. 7 (`mse`), or the `mae` variant of Table VI; one value per image."""
    diff = jnp.asarray(reconstruction, jnp.float32) - jnp.asarray(target, jnp.float32)
    axes = tuple(range(1, diff.ndim))
    if kind == "mse":
        return jnp.mean(diff * diff, axis=axes)
    if kind == "mae":
        return jnp.mean(jnp.abs(diff), axis=axes)
    raise ValueError(f"reconstruction loss must be 'mse' or 'mae', got {kind!r}")


MAP_REDUCTIONS = ("pixel", "image")


def weight_map_loss(weights_BHW2, tau: float = 1.0, reduction: str = "pixel"):
    """L_M = |τ − W1 − W2| (eq. 13); one value per image. `pixel`: the mean over pixels of
    |τ − W1 − W2|; `image`: |τ − mean(W1 + W2)|, one constraint on each image's mean weight sum
    (eq. 13 names no reduction)."""
    w = jnp.asarray(weights_BHW2, jnp.float32)
    axes = tuple(range(1, w.ndim - 1))
    if reduction == "pixel":
        return jnp.mean(jnp.abs(tau - w[..., 0] - w[..., 1]), axis=axes)
    if reduction == "image":
        return jnp.abs(tau - jnp.mean(w[..., 0] + w[..., 1], axis=axes))
    raise ValueError(f"weight-map reduction must be one of {', '.join(MAP_REDUCTIONS)}, got {reduction!r}")


def ifesnet_loss(outputs, ir_BHW1, vis_BHW1, loss_config, extra_terms=None):
    """L = L_I + L_V + L_F + L_M (eq. 6) with per-term weights, plus Σ weight · term of
    `extra_terms`, {name: (weight, fn(fused, ir, vis) -> batch mean)} (the metric terms of
    `metric_terms.make_terms`). Returns (total, terms): every term's unweighted batch mean by
    name, and `loss`, the total. `outputs` is the dict returned by `IFESNet`."""
    cfg = loss_config
    fused = outputs["fused"]
    weighted = {
        "loss_ir": (cfg.weight_ir, reconstruction_loss(ir_BHW1, outputs["recon_ir"], cfg.recon)),
        "loss_vis": (cfg.weight_vis, reconstruction_loss(vis_BHW1, outputs["recon_vis"], cfg.recon)),
        "loss_fusion": (cfg.weight_fusion, 1.0 - decomposition_ssim(
            fused, ir_BHW1, vis_BHW1, mode=cfg.ssim_mode, window=cfg.window,
            window_size=cfg.window_size, sigma=cfg.window_sigma, xi=cfg.xi, c=cfg.ssim_c,
            eps=cfg.eps)),
        "loss_map": (cfg.weight_map, weight_map_loss(
            outputs["weights"], cfg.tau, cfg.get("map_reduction", "pixel"))),
    }
    weighted = {name: (weight, jnp.mean(value)) for name, (weight, value) in weighted.items()}
    for name, (weight, fn) in (extra_terms or {}).items():
        weighted[name] = (weight, fn(fused, ir_BHW1, vis_BHW1))
    total = sum(weight * value for weight, value in weighted.values())
    return total, dict({name: value for name, (_, value) in weighted.items()}, loss=total)
