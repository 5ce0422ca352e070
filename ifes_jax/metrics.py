"""Fusion metrics in pure `jnp` (paper §IV.B, eq. 14–21, and the field's usual set).

Every metric is a function of float (H, W) images in [0, 1] — `fused`, or `(fused, ir, vis)` —
that jits and vmaps. Each docstring states its formula, the scale it computes on and its
reference, because the field's code disagrees on conventions. Metrics of a constant image are
finite: the value each gives is stated.

Profiles (see `PROFILES`) pick metrics and conventions: `paper` matches the paper's Tables I–V,
`default` is the set most fusion benchmarks report.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ifes_jax import losses

LEVELS = 256


def _to255(x):
    return jnp.asarray(x, jnp.float32) * 255.0


def _gray_levels(x):
    """Pixels as integer gray levels 0..255 (rounded, clipped)."""
    return jnp.clip(jnp.round(_to255(x)), 0, LEVELS - 1).astype(jnp.int32)


def _entropy_bits(p):
    p = p / jnp.sum(p)
    return jnp.maximum(-jnp.sum(jnp.where(p > 0, p * jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0)), 0.0)


def histogram(x):
    """Counts of the 256 gray levels of an image in [0, 1]."""
    return jnp.bincount(_gray_levels(x).ravel(), length=LEVELS).astype(jnp.float32)


def joint_histogram(a, b):
    """256 x 256 counts of gray-level pairs (a, b)."""
    idx = _gray_levels(a).ravel() * LEVELS + _gray_levels(b).ravel()
    return jnp.bincount(idx, length=LEVELS * LEVELS).astype(jnp.float32).reshape(LEVELS, LEVELS)


def entropy(fused):
    """EN (eq. 15) = −Σ p_i log2 p_i over the 256 gray levels of the image rounded to 8 bits;
    in bits, 0..8. A constant image gives 0."""
    return _entropy_bits(histogram(fused))


def mutual_information_pair(a, b):
    """MI(a, b) = H(a) + H(b) − H(a, b) (eq. 17) in bits, 256 gray levels, 256 x 256 joint
    histogram."""
    return entropy(a) + entropy(b) - _entropy_bits(joint_histogram(a, b))


def mutual_information(fused, ir, vis):
    """MI (eq. 16) = MI(ir, F) + MI(vis, F), in bits (each term ≤ 8). 0 for a constant F."""
    return mutual_information_pair(ir, fused) + mutual_information_pair(vis, fused)


def mutual_information_paper(fused, ir=None, vis=None):
    """The paper's MI column: 2 × EN(F), in bits.

    The paper's MI equals twice its EN on every row (Table I: 13.85 = 2 × 6.923), the
    signature of a widely copied MATLAB MI script whose joint-entropy term collapses to zero.
    This reproduces that column so that numbers can be set beside the paper's; it is not a
    mutual information (see `mutual_information`).
    """
    return 2.0 * entropy(fused)


def standard_deviation(fused):
    """SD = sqrt(mean((F − μ)²)) on the 0–255 scale (population std). 0 for a constant image."""
    f = _to255(fused)
    return jnp.sqrt(jnp.mean((f - jnp.mean(f)) ** 2))


def _forward_differences(f):
    """Horizontal and vertical forward differences on the common (M−1) x (N−1) grid."""
    return f[:-1, 1:] - f[:-1, :-1], f[1:, :-1] - f[:-1, :-1]


def average_gradient(fused):
    """AG (eq. 14) = mean over (M−1)(N−1) pixels of sqrt((ΔxF² + ΔyF²) / 2), forward
    differences, on 0–255. 0 for a constant image."""
    dx, dy = _forward_differences(_to255(fused))
    return jnp.mean(jnp.sqrt((dx * dx + dy * dy) / 2.0))


def gray_level_difference(fused):
    """GLD (eq. 18) = mean over (M−1)(N−1) pixels of |ΔxF| + |ΔyF|, forward differences,
    on 0–255. 0 for a constant image."""
    dx, dy = _forward_differences(_to255(fused))
    return jnp.mean(jnp.abs(dx) + jnp.abs(dy))


def spatial_frequency(fused, scale: float = 1.0):
    """SF (eq. 19–21) = sqrt(RF² + CF²), RF² = Σ (F(i,j) − F(i,j−1))² / (MN), CF likewise over
    rows; on the 0–1 scale by default (the paper's), `scale=255` for 0–255. 0 for a constant
    image."""
    f = jnp.asarray(fused, jnp.float32) * scale
    n = f.size
    rf = jnp.sum((f[:, 1:] - f[:, :-1]) ** 2) / n
    cf = jnp.sum((f[1:, :] - f[:-1, :]) ** 2) / n
    return jnp.sqrt(rf + cf)


def psnr(fused, ir, vis):
    """PSNR = 10 log10(255² / ((MSE(F, ir) + MSE(F, vis)) / 2)) in dB, on 0–255 (the fusion
    benchmarks' definition). MSE is floored at 1e-10, so identical images give 148.1 dB."""
    f, a, b = _to255(fused), _to255(ir), _to255(vis)
    mse = (jnp.mean((f - a) ** 2) + jnp.mean((f - b) ** 2)) / 2.0
    return 10.0 * jnp.log10(255.0 ** 2 / jnp.maximum(mse, 1e-10))


def _correlation(x, y):
    x, y = x - jnp.mean(x), y - jnp.mean(y)
    den = jnp.sqrt(jnp.sum(x * x) * jnp.sum(y * y))
    return jnp.where(den > 0, jnp.sum(x * y) / jnp.where(den > 0, den, 1.0), 0.0)


def scd(fused, ir, vis):
    """SCD (Aslantas & Bendes 2015) = corr(F − vis, ir) + corr(F − ir, vis), Pearson
    correlations (scale-free). A correlation with a constant image counts as 0."""
    f, a, b = (jnp.asarray(x, jnp.float32) for x in (fused, ir, vis))
    return _correlation(f - b, a) + _correlation(f - a, b)


# --------------------------------------------------------------------------- filters


def _filter_valid(x, taps_2d):
    """2-D correlation with 'valid' output (MATLAB filter2(w, x, 'valid'))."""
    k = jnp.asarray(taps_2d, jnp.float32)
    return jax.lax.conv_general_dilated(
        x[None, :, :, None], k[:, :, None, None], (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)[0, :, :, 0]


def _filter_same(x, taps_2d):
    """2-D correlation, zero padding, output the size of x."""
    k = np.asarray(taps_2d)
    ph, pw = k.shape[0] // 2, k.shape[1] // 2
    return _filter_valid(jnp.pad(x, ((ph, ph), (pw, pw))), k)


def _separable_valid(images, taps):
    """Each image of a list filtered by the window outer(taps, taps), 'valid' output."""
    out = losses.separable_filter_valid(jnp.stack(images, axis=-1), taps, axes=(0, 1))
    return [out[..., i] for i in range(len(images))]


def ssim(a, b, *, window_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03):
    """SSIM (Wang et al. 2004): mean of the SSIM map over 'valid' 11 x 11 Gaussian (σ 1.5)
    windows, K1 0.01, K2 0.03, on 0–255 (L = 255). SSIM(x, x) = 1; finite for constants."""
    x, y = _to255(a), _to255(b)
    c1, c2 = (k1 * 255.0) ** 2, (k2 * 255.0) ** 2
    mx, my, mxx, myy, mxy = _separable_valid([x, y, x * x, y * y, x * y],
                                             losses.gaussian_window_1d(window_size, sigma))
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    score = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return jnp.mean(score)


def ssim_fusion(fused, ir, vis):
    """SSIM-based fusion score = (SSIM(F, ir) + SSIM(F, vis)) / 2 (see `ssim`)."""
    return 0.5 * (ssim(fused, ir) + ssim(fused, vis))


def decomposition_score(fused, ir, vis):
    """The training loss's MEF-SSIM-style score: eq. 11 between F and the expected image of
    (ir, vis) (eq. 8–10), 11 x 11 uniform windows, ξ = 1.7, on 0–1 (`losses.decomposition_ssim`)."""
    return losses.decomposition_ssim(fused, ir, vis)


# --------------------------------------------------------------------------- Qabf

_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
_SOBEL_Y = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], np.float32)


def _edges(x):
    gx, gy = _filter_same(x, _SOBEL_X), _filter_same(x, _SOBEL_Y)
    # float noise of a zero gradient (|gx| < 1e-3 gray levels) counts as zero, so that the
    # orientation of a vertical edge does not flip between +π/2 and −π/2 with rounding
    gx = jnp.where(jnp.abs(gx) < 1e-3, 0.0, gx)
    strength = jnp.sqrt(gx * gx + gy * gy)
    angle = jnp.where(gx == 0, jnp.pi / 2, jnp.arctan(gy / jnp.where(gx == 0, 1.0, gx)))
    return strength, angle


def _edge_preservation(g_src, a_src, g_f, a_f):
    gt, kg, sg = 0.9994, -15.0, 0.5
    at, ka, sa = 0.9879, -22.0, 0.8
    hi, lo = jnp.maximum(g_src, g_f), jnp.minimum(g_src, g_f)
    relative = jnp.where(hi > 0, lo / jnp.where(hi > 0, hi, 1.0), 1.0)
    orientation = 1.0 - jnp.abs(a_src - a_f) / (jnp.pi / 2)
    q_g = gt / (1.0 + jnp.exp(kg * (relative - sg)))
    q_a = at / (1.0 + jnp.exp(ka * (orientation - sa)))
    return q_g * q_a


def qabf(fused, ir, vis):
    """Q^{AB/F} (Xydeas & Petrović 2000): edge strength and orientation from 3 x 3 Sobel
    filters (zero padding), preservation Q_XF = Γg/(1+e^{κg(G−σg)}) · Γα/(1+e^{κα(A−σα)}) with
    Γg 0.9994, κg −15, σg 0.5, Γα 0.9879, κα −22, σα 0.8, G = min(g_X, g_F)/max(g_X, g_F),
    A = 1 − |α_X − α_F|/(π/2), α = atan(g_y/g_x) (π/2 where g_x = 0), as in the common
    MATLAB code; Qabf = Σ(Q_AF g_A + Q_BF g_B) / Σ(g_A + g_B) (L = 1). Scale-free; 0 when
    neither source has an edge (zero padding makes the border of any non-zero image an edge)."""
    g_f, a_f = _edges(_to255(fused))
    g_a, a_a = _edges(_to255(ir))
    g_b, a_b = _edges(_to255(vis))
    num = jnp.sum(_edge_preservation(g_a, a_a, g_f, a_f) * g_a
                  + _edge_preservation(g_b, a_b, g_f, a_f) * g_b)
    den = jnp.sum(g_a + g_b)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


# --------------------------------------------------------------------------- VIFF

VIFF_SCALE_WEIGHTS = (1.0 / 2.15, 0.0, 0.15 / 2.15, 1.0 / 2.15)
VIFF_NOISE = 0.005 * 255.0 ** 2
VIFF_MIN_SIZE = 65  # the smallest side that leaves a valid window at all four scales


def _viff_scale_terms(ref, dist, taps):
    """Per-pixel VID, VIND and gain at one scale (Han's ComVidVindG), on 0–255."""
    mu1, mu2, m11, m22, m12 = _separable_valid([ref, dist, ref * ref, dist * dist, ref * dist], taps)
    s1 = jnp.maximum(m11 - mu1 * mu1, 0.0)
    s2 = jnp.maximum(m22 - mu2 * mu2, 0.0)
    s12 = m12 - mu1 * mu2
    g = s12 / (s1 + 1e-10)
    sv = s2 - g * s12
    flat1 = s1 < 1e-10
    g = jnp.where(flat1, 0.0, g)
    sv = jnp.where(flat1, s2, sv)
    s1 = jnp.where(flat1, 0.0, s1)
    flat2 = s2 < 1e-10
    g = jnp.where(flat2, 0.0, g)
    sv = jnp.where(flat2, 0.0, sv)
    sv = jnp.where(g < 0, s2, sv)
    g = jnp.maximum(g, 0.0)
    sv = jnp.maximum(sv, 1e-10)
    vid = jnp.log10(1.0 + g * g * s1 / (sv + VIFF_NOISE))
    vind = jnp.log10(1.0 + s1 / VIFF_NOISE)
    return vid, vind, g


def viff(fused, ir, vis):
    """VIFF (Han, Cai, Cao, Xu 2013, the authors' public code): on 0–255, 4 scales with
    Gaussian windows of 17, 9, 5, 3 taps (σ = N/5; 'valid' filtering; from scale 2 on, the
    images are filtered and subsampled by 2 first), Gaussian-scale-mixture gains and distortion
    per source, visual noise 0.005·255²; per pixel the source with the smaller gain is used,
    VIFF_k = Σ(VID + 1e-7) / Σ(VIND + 1e-7), and VIFF = Σ_k p_k VIFF_k with
    p = [1, 0, 0.15, 1]/2.15. VIFF(x, x, x) = 1. Needs images of at least 65 x 65 pixels
    (the four scales' valid windows)."""
    if min(jnp.shape(fused)[-2:]) < VIFF_MIN_SIZE:
        raise ValueError(f"VIFF needs images of at least {VIFF_MIN_SIZE}x{VIFF_MIN_SIZE} pixels, "
                         f"got {jnp.shape(fused)}")
    f, a, b = _to255(fused), _to255(ir), _to255(vis)
    total = 0.0
    for scale, weight in enumerate(VIFF_SCALE_WEIGHTS, start=1):
        size = 2 ** (4 - scale + 1) + 1
        taps = losses.gaussian_window_1d(size, size / 5.0)
        if scale > 1:
            f, a, b = (x[::2, ::2] for x in _separable_valid([f, a, b], taps))
        vid_a, vind_a, g_a = _viff_scale_terms(a, f, taps)
        vid_b, vind_b, g_b = _viff_scale_terms(b, f, taps)
        use_a = g_a < g_b
        vid = jnp.where(use_a, vid_a, vid_b)
        vind = jnp.where(use_a, vind_a, vind_b)
        total = total + weight * jnp.sum(vid + 1e-7) / jnp.sum(vind + 1e-7)
    return total


# --------------------------------------------------------------------------- differentiable


def soft_histogram(x):
    """A differentiable 256-level histogram: each pixel's value v = 255·x is split between the
    levels floor(v) and floor(v)+1 in proportion to its distance (a triangular kernel of
    width 1 gray level). On 8-bit images it equals `histogram`."""
    v = jnp.clip(_to255(x).ravel(), 0.0, LEVELS - 1.0)
    lo = jnp.clip(jnp.floor(v), 0, LEVELS - 2)
    frac = v - lo
    lo = lo.astype(jnp.int32)
    return jnp.zeros(LEVELS).at[lo].add(1.0 - frac).at[lo + 1].add(frac)


def soft_joint_histogram(a, b):
    """The bilinear (triangular-kernel) version of `joint_histogram`."""
    def split(x):
        v = jnp.clip(_to255(x).ravel(), 0.0, LEVELS - 1.0)
        lo = jnp.clip(jnp.floor(v), 0, LEVELS - 2)
        return lo.astype(jnp.int32), v - lo
    la, fa = split(a)
    lb, fb = split(b)
    h = jnp.zeros((LEVELS, LEVELS))
    for da, wa in ((0, 1.0 - fa), (1, fa)):
        for db, wb in ((0, 1.0 - fb), (1, fb)):
            h = h.at[la + da, lb + db].add(wa * wb)
    return h


def _entropy_bits_smooth(p):
    p = p / jnp.sum(p)
    return -jnp.sum(p * jnp.log2(p + 1e-12))


def soft_entropy(fused):
    """A differentiable EN from `soft_histogram` (bits); equals `entropy` on 8-bit images up to
    the 1e-12 inside the log."""
    return _entropy_bits_smooth(soft_histogram(fused))


def soft_mutual_information(fused, ir, vis):
    """A differentiable MI (eq. 16–17) from the triangular-kernel histograms (bits)."""
    def pair(a, f):
        return (_entropy_bits_smooth(soft_histogram(a)) + _entropy_bits_smooth(soft_histogram(f))
                - _entropy_bits_smooth(soft_joint_histogram(a, f)))
    return pair(ir, fused) + pair(vis, fused)


# --------------------------------------------------------------------------- profiles


def _fused_only(fn):
    @functools.wraps(fn)
    def wrapped(fused, ir, vis):
        return fn(fused)
    return wrapped


PROFILES = {
    # the paper's Tables I–V, in its row order and conventions
    "paper": {
        "AG": _fused_only(average_gradient),
        "EN": _fused_only(entropy),
        "MI": mutual_information_paper,
        "GLD": _fused_only(gray_level_difference),
        "SF": _fused_only(spatial_frequency),
        "VIFF": viff,
    },
    "default": {
        "EN": _fused_only(entropy),
        "SD": _fused_only(standard_deviation),
        "SF": _fused_only(functools.partial(spatial_frequency, scale=255.0)),
        "AG": _fused_only(average_gradient),
        "GLD": _fused_only(gray_level_difference),
        "MI": mutual_information,
        "VIFF": viff,
        "Qabf": qabf,
        "SCD": scd,
        "SSIM": ssim_fusion,
        "PSNR": psnr,
        "MEF-SSIM": decomposition_score,
    },
}

CONVENTIONS = {
    "paper": {
        "AG": "eq. 14, 0–255, (M−1)(N−1) forward differences",
        "EN": "eq. 15, bits, 256 gray levels",
        "MI": "2 × EN(F): reproduces the paper's MI column (it equals 2 × EN on every row, the "
              "signature of a MATLAB MI script whose joint entropy collapses to 0); not a true MI",
        "GLD": "eq. 18, 0–255, (M−1)(N−1) forward differences",
        "SF": "eq. 19–21, 0–1",
        "VIFF": "Han et al. 2013, 4 scales, Gaussian windows 17/9/5/3 (σ = N/5), weights "
                "[1, 0, 0.15, 1]/2.15, visual noise 0.005·255²",
    },
    "default": {
        "EN": "bits, 256 gray levels", "SD": "0–255", "SF": "0–255", "AG": "0–255",
        "GLD": "0–255", "MI": "bits, 256 × 256 joint histogram, MI(ir,F) + MI(vis,F)",
        "VIFF": "Han et al. 2013", "Qabf": "Xydeas–Petrović, Sobel, L = 1",
        "SCD": "Aslantas–Bendes 2015", "SSIM": "(SSIM(F,ir) + SSIM(F,vis))/2, Gaussian 11×11",
        "PSNR": "dB, 255² / mean of MSE(F,ir), MSE(F,vis)",
        "MEF-SSIM": "the training loss's decomposition score, 11×11 uniform windows, ξ = 1.7",
    },
}


@functools.partial(jax.jit, static_argnames="profile")
def compute(fused, ir, vis, profile: str = "default"):
    """Every metric of `profile` for one (H, W) triple in [0, 1]: {name: scalar}."""
    return {name: fn(fused, ir, vis) for name, fn in PROFILES[profile].items()}
