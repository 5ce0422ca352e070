"""Human-visual-system fusion metrics in pure `jnp`: Chen–Blum (Qcb) and Chen–Varshney (Qcv).

Both filter images with a contrast-sensitivity function in the frequency domain, as the MATLAB
code that VIFB ships (from Z. Liu's `imageFusionMetrics`) does: on the centred frequency grid of
MATLAB's `freqspace`, (k − ⌊n/2⌋)·2/n, the filter multiplies the centred FFT and the real part
of the inverse FFT is kept. Images are (H, W) in [0, 1]; each is min-max stretched to the gray
levels 0..255 and rounded first (`metrics.stretch_levels`), as that code does.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ifes_jax import losses
from ifes_jax.metrics import sobel, stretch_levels


def _radial_frequency(shape, cycles_per_unit):
    """r = sqrt(u² + v²) on `freqspace`'s centred grid, u scaled by W/c and v by H/c, in FFT
    order (the centred grid through `ifftshift`)."""
    h, w = shape
    v = (np.arange(h) - h // 2) * 2.0 / h * (h / cycles_per_unit)
    u = (np.arange(w) - w // 2) * 2.0 / w * (w / cycles_per_unit)
    return np.fft.ifftshift(np.hypot(u[None, :], v[:, None]))


def _csf_filter(image, response):
    """The real part of ifft2(fft2(image) · response), `response` in FFT order."""
    spectrum = jnp.fft.fft2(image) * jnp.asarray(response, image.dtype)
    return jnp.real(jnp.fft.ifft2(spectrum)).astype(image.dtype)


# --------------------------------------------------------------------------- Chen–Blum

QCB_F0, QCB_F1, QCB_A = 15.3870, 1.3456, 0.7622


def _gaussian_taps_unnormalised(sigma):
    """1-D factor of the 31 x 31 Gaussian exp(−(x² + y²)/(2σ²)) / (2πσ²) on −15..15."""
    x = np.arange(-15, 16, dtype=np.float64)
    return np.exp(-x * x / (2 * sigma * sigma)) / np.sqrt(2 * np.pi * sigma * sigma)


def _masked_contrast(image):
    """C' = C³ / (C² + 1e-4), C = |(G2 ∗ I) / (G4 ∗ I) − 1| (zero-padded 'same' filtering);
    C = 0 where G4 ∗ I = 0 (an all-zero image: MATLAB's code gives NaN there)."""
    padded = jnp.pad(image, 15)
    narrow = losses.separable_filter_valid(padded, _gaussian_taps_unnormalised(2.0))
    wide = losses.separable_filter_valid(padded, _gaussian_taps_unnormalised(4.0))
    c = jnp.where(wide != 0, jnp.abs(narrow / jnp.where(wide != 0, wide, 1.0) - 1.0), 0.0)
    return c ** 3 / (c * c + 1e-4)


def qcb_map(fused, ir, vis):
    """The Chen–Blum quality map (Chen & Blum, Image Vis. Comput. 2009): λ_A Q_AF + λ_B Q_BF,
    Q_SF = min(C'_S / C'_F, C'_F / C'_S), λ_A = C'_A² / (C'_A² + C'_B²), where C' is the masked
    local contrast of the CSF-filtered image (CSF exp(−(r/15.387)²) − 0.7622 exp(−(r/1.3456)²),
    frequencies scaled by H/30 and W/30). Pixels where a ratio is 0/0 count as 0."""
    images = [stretch_levels(x) for x in (fused, ir, vis)]
    r = _radial_frequency(images[0].shape, 30.0)
    response = np.exp(-(r / QCB_F0) ** 2) - QCB_A * np.exp(-(r / QCB_F1) ** 2)
    c_f, c_a, c_b = (_masked_contrast(_csf_filter(x, response)) for x in images)

    def ratio(num, den):
        return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)

    def preservation(c_s):
        return jnp.where(c_s < c_f, ratio(c_s, c_f), ratio(c_f, c_s))
    saliency_a = ratio(c_a * c_a, c_a * c_a + c_b * c_b)
    saliency_b = ratio(c_b * c_b, c_a * c_a + c_b * c_b)
    return saliency_a * preservation(c_a) + saliency_b * preservation(c_b)


def qcb(fused, ir, vis):
    """Qcb: the mean of `qcb_map` (VIFB's `metricsQcb`); 0..1, higher is better."""
    return jnp.mean(qcb_map(fused, ir, vis))


# --------------------------------------------------------------------------- Chen–Varshney

QCV_BLOCK, QCV_ALPHA = 16, 5


def _block_sums(x, block=QCV_BLOCK):
    """Sums over non-overlapping block x block tiles, partial tiles zero-padded."""
    h, w = x.shape
    ph, pw = -h % block, -w % block
    x = jnp.pad(x, ((0, ph), (0, pw)))
    return x.reshape((h + ph) // block, block, (w + pw) // block, block).sum(axis=(1, 3))


def _mannos_sakrison(r):
    return 2.6 * (0.0192 + 0.144 * r) * np.exp(-(0.144 * r) ** 1.1)


def qcv(fused, ir, vis):
    """Qcv (Chen & Varshney, Inf. Fusion 2007), VIFB's `metricsQcv`: Σ_blocks (λ_A D_A + λ_B D_B)
    / Σ_blocks (λ_A + λ_B) over 16 x 16 blocks (partial ones zero-padded), λ_S = Σ g_S⁵ (Sobel
    magnitude, zero padding), D_S = the mean square of S − F filtered by the Mannos–Sakrison
    CSF (frequencies scaled by H/8 and W/8). On 0–255; lower is better. 0 when neither source
    has an edge."""
    f, a, b = (stretch_levels(x) for x in (fused, ir, vis))
    response = _mannos_sakrison(_radial_frequency(f.shape, 8.0))

    def saliency(x):
        gx, gy = sobel(x)
        g = jnp.sqrt(gx * gx + gy * gy)
        return _block_sums(g ** QCV_ALPHA)

    def distortion(x):
        return _block_sums(_csf_filter(x - f, response) ** 2) / QCV_BLOCK ** 2
    lam_a, lam_b = saliency(a), saliency(b)
    total = jnp.sum(lam_a + lam_b)
    num = jnp.sum(lam_a * distortion(a) + lam_b * distortion(b))
    return jnp.where(total > 0, num / jnp.where(total > 0, total, 1.0), 0.0)
