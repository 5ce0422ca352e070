"""Fusion metrics in pure `jnp` (paper §IV.B, eq. 14–21, and the field's usual set).

Every metric is a function of float (H, W) images in [0, 1] — `fused`, or `(fused, ir, vis)` —
that jits and vmaps. Each docstring states its formula, the scale it computes on and its
reference, because the field's code disagrees on conventions. Metrics of a constant image are
finite: the value each gives is stated.

Each metric is implemented once, its conventions as keyword arguments; `profiles` holds the
tables of conventions (`paper`, `default`, `vifb`, `cddfuse`) and applies them. Metrics compute
in the input's precision (at least float32; float64 under `jax.enable_x64`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ifes_jax import losses

LEVELS = 256


def _float(x):
    """x as an array of its own float precision, at least float32."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _to255(x):
    return _float(x) * 255.0


def _sqrt0(x):
    """sqrt(x) for x ≥ 0 whose gradient at 0 is 0 (a norm's subgradient at its kink) rather
    than ∞, so that flat regions and constant images keep finite gradients; same values."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _round_quotient(num, den):
    """round(num / den) with halves up, for num ≥ 0 and den > 0: exact for integer num and den
    (XLA may divide by a scalar through its reciprocal, so the quotient is checked against
    num and den and corrected by one where it is off)."""
    q = jnp.floor(num / den + 0.5)
    twice = 2.0 * num + den  # q is right when 2·den·q ≤ 2·num + den < 2·den·(q + 1)
    q = jnp.where(twice < 2.0 * den * q, q - 1.0, q)
    return jnp.where(twice >= 2.0 * den * (q + 1.0), q + 1.0, q)


def stretch_levels(x):
    """An image in [0, 1] min-max stretched to the gray levels 0..255 and rounded (halves away
    from zero), as the MATLAB toolboxes' `normalize1` does on 8-bit images; an all-zero or
    constant image becomes all zeros. Returns the levels (0–255 values). The input is taken as
    8-bit levels (rounded first, which also keeps a fused multiply-add from moving k/255·255 off
    the integer and turning exact halves); the output is piecewise constant either way."""
    v = jnp.round(_to255(x))
    lo, hi = jnp.min(v), jnp.max(v)
    span = jnp.where(hi > lo, hi - lo, 1.0)
    return jnp.where(hi > lo, _round_quotient((v - lo) * 255.0, span), 0.0)


def stretch255(x):
    """`stretch_levels` on the 0–1 scale."""
    return stretch_levels(x) / 255.0


def _gray_levels(x):
    """Pixels as integer gray levels 0..255 (rounded, clipped)."""
    return jnp.clip(jnp.round(_to255(x)), 0, LEVELS - 1).astype(jnp.int32)


def _entropy(counts, base: float = 2.0):
    """Shannon entropy of a histogram, in units of log `base` (2: bits, e: nats)."""
    p = counts / jnp.sum(counts)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    return jnp.maximum(-jnp.sum(plogp) / np.log(base), 0.0)


# The heavier metrics are jitted: called eagerly, a new image size compiles one program
# instead of one per operation (several times faster); under a caller's jit they inline.


def histogram(x):
    """Counts of the 256 gray levels of an image in [0, 1]."""
    return jnp.bincount(_gray_levels(x).ravel(), length=LEVELS).astype(_float(x).dtype)


def joint_histogram(a, b):
    """256 x 256 counts of gray-level pairs (a, b)."""
    idx = _gray_levels(a).ravel() * LEVELS + _gray_levels(b).ravel()
    counts = jnp.bincount(idx, length=LEVELS * LEVELS).astype(_float(a).dtype)
    return counts.reshape(LEVELS, LEVELS)


def entropy(fused):
    """EN (eq. 15) = −Σ p_i log2 p_i over the 256 gray levels of the image rounded to 8 bits;
    in bits, 0..8. A constant image gives 0."""
    return _entropy(histogram(fused))


def mutual_information_pair(a, b, *, base: float = 2.0):
    """MI(a, b) = H(a) + H(b) − H(a, b) (eq. 17), 256 gray levels, 256 x 256 joint histogram
    whose marginals give H(a) and H(b); in bits (`base` 2) or nats (`base` e)."""
    joint = joint_histogram(a, b)
    return (_entropy(jnp.sum(joint, axis=1), base) + _entropy(jnp.sum(joint, axis=0), base)
            - _entropy(joint, base))


def mutual_information(fused, ir, vis, *, base: float = 2.0, stretch: bool = False):
    """MI (eq. 16) = MI(ir, F) + MI(vis, F), in bits by default (each term ≤ 8; `base=np.e`
    for nats). `stretch`: each image min-max stretched to 0..255 first (`stretch255`, VIFB's
    convention). 0 for a constant F."""
    if stretch:
        fused, ir, vis = stretch255(fused), stretch255(ir), stretch255(vis)
    return (mutual_information_pair(ir, fused, base=base)
            + mutual_information_pair(vis, fused, base=base))


def cross_entropy(fused, ir, vis):
    """CE = (CE(ir, F) + CE(vis, F)) / 2, CE(S, F) = Σ p_S log2(p_S / p_F) over the gray levels
    where both histograms are non-zero (VIFB's `metricsCross_entropy`; a KL divergence that
    skips empty bins); bits, lower is better. 0 when F = S."""
    h_f = histogram(fused)
    p_f = h_f / jnp.sum(h_f)

    def one(source):
        h_s = histogram(source)
        p_s = h_s / jnp.sum(h_s)
        both = (p_s > 0) & (p_f > 0)
        ratio = jnp.where(both, p_s, 1.0) / jnp.where(both, p_f, 1.0)
        return jnp.sum(jnp.where(both, p_s * jnp.log2(ratio), 0.0))
    return 0.5 * (one(ir) + one(vis))


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
    return _sqrt0(jnp.mean((f - jnp.mean(f)) ** 2))


def _forward_differences(f):
    """Horizontal and vertical forward differences on the common (M−1) x (N−1) grid."""
    return f[:-1, 1:] - f[:-1, :-1], f[1:, :-1] - f[:-1, :-1]


def _central_differences(f):
    """MATLAB's `gradient`: central differences (halved) inside, one-sided on the border."""
    def along(axis):
        first = jax.lax.slice_in_dim(f, 1, 2, axis=axis) - jax.lax.slice_in_dim(f, 0, 1, axis=axis)
        last = (jax.lax.slice_in_dim(f, -1, None, axis=axis)
                - jax.lax.slice_in_dim(f, -2, -1, axis=axis))
        inside = (jax.lax.slice_in_dim(f, 2, None, axis=axis)
                  - jax.lax.slice_in_dim(f, 0, -2, axis=axis)) / 2.0
        return jnp.concatenate([first, inside, last], axis=axis)
    return along(1), along(0)


AG_DIVISORS = ("(M-1)(N-1)", "MN")


def average_gradient(fused, *, differences: str = "forward", divisor: str = "(M-1)(N-1)"):
    """AG (eq. 14) = Σ sqrt((ΔxF² + ΔyF²) / 2) / divisor, on 0–255.

    `differences`: "forward" (the paper's; an (M−1) x (N−1) grid) or "central" (MATLAB's
    `gradient`, all M x N pixels: VIFB and CDDFuse). `divisor`: "(M-1)(N-1)" (the paper's and
    VIFB's, even over M x N central differences) or "MN" (CDDFuse's mean). 0 for a constant
    image."""
    f = _to255(fused)
    dx, dy = _forward_differences(f) if differences == "forward" else _central_differences(f)
    m, n = f.shape
    count = (m - 1) * (n - 1) if divisor == "(M-1)(N-1)" else m * n
    return jnp.sum(_sqrt0((dx * dx + dy * dy) / 2.0)) / count


def gray_level_difference(fused):
    """GLD (eq. 18) = mean over (M−1)(N−1) pixels of |ΔxF| + |ΔyF|, forward differences,
    on 0–255. 0 for a constant image."""
    dx, dy = _forward_differences(_to255(fused))
    return jnp.mean(jnp.abs(dx) + jnp.abs(dy))


def spatial_frequency(fused, scale: float = 1.0, *, mean_over: str = "pixels"):
    """SF (eq. 19–21) = sqrt(RF² + CF²), RF² = Σ (F(i,j) − F(i,j−1))² / (MN), CF likewise over
    rows; on the 0–1 scale by default (the paper's), `scale=255` for 0–255. `mean_over`:
    "pixels" divides both sums by MN (the paper, VIFB), "differences" by their own counts
    M(N−1) and (M−1)N (CDDFuse). 0 for a constant image."""
    f = _float(fused) * scale
    dx2, dy2 = (f[:, 1:] - f[:, :-1]) ** 2, (f[1:, :] - f[:-1, :]) ** 2
    if mean_over == "pixels":
        return _sqrt0((jnp.sum(dx2) + jnp.sum(dy2)) / f.size)
    return _sqrt0(jnp.mean(dx2) + jnp.mean(dy2))


def _source_error(f, s, error):
    """Between two 0–255 images: "mse", or VIFB's "root_sse_per_pixel" sqrt(Σ(S − F)²) / (MN)."""
    if error == "mse":
        return jnp.mean((f - s) ** 2)
    return _sqrt0(jnp.sum((f - s) ** 2)) / f.size


def source_error(fused, ir, vis, *, error: str = "mse"):
    """(e(F, ir) + e(F, vis)) / 2 on 0–255, e = `error`: "mse" (CDDFuse's MSE) or
    "root_sse_per_pixel" (VIFB's RMSE: sqrt of the summed squared error, divided by MN).
    Lower is better; 0 when F equals both sources."""
    f, a, b = _to255(fused), _to255(ir), _to255(vis)
    return (_source_error(f, a, error) + _source_error(f, b, error)) / 2.0


def psnr(fused, ir, vis, *, peak: str = "255", error: str = "mse"):
    """PSNR = 10 log10(P² / e) in dB on 0–255, e = `source_error(error)`: the mean over the two
    sources. P: 255, or "max" = max F (CDDFuse). With VIFB's `error="root_sse_per_pixel"`
    this is VIFB's PSNR. e and P² are floored at 1e-10, so identical images give 148.1 dB
    and an all-black F with `peak="max"` a finite value."""
    e = source_error(fused, ir, vis, error=error)
    p = 255.0 if peak == "255" else jnp.max(_to255(fused))
    return 10.0 * jnp.log10(jnp.maximum(p * p, 1e-10) / jnp.maximum(e, 1e-10))


def _correlation(x, y):
    x, y = x - jnp.mean(x), y - jnp.mean(y)
    den = _sqrt0(jnp.sum(x * x) * jnp.sum(y * y))
    return jnp.where(den > 0, jnp.sum(x * y) / jnp.where(den > 0, den, 1.0), 0.0)


def scd(fused, ir, vis):
    """SCD (Aslantas & Bendes 2015) = corr(F − vis, ir) + corr(F − ir, vis), Pearson
    correlations (scale-free). A correlation with a constant image counts as 0."""
    f, a, b = (_to255(x) for x in (fused, ir, vis))
    return _correlation(f - b, a) + _correlation(f - a, b)


def correlation_coefficient(fused, ir, vis):
    """CC = (corr(ir, F) + corr(vis, F)) / 2, Pearson correlations (CDDFuse's CC). A
    correlation with a constant image counts as 0."""
    f, a, b = (_to255(x) for x in (fused, ir, vis))
    return 0.5 * (_correlation(a, f) + _correlation(b, f))


# --------------------------------------------------------------------------- filters


def sobel(x, padding: str = "constant"):
    """The 3 x 3 Sobel responses (gx, gy) of an (H, W) image, output the size of x: the
    correlations with [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] and its transpose, zero
    ("constant") or replicate ("edge") padding, as 1-2-1 smoothing of central differences."""
    p = jnp.pad(x, 1, mode=padding)
    smooth = lambda d, axis: (jax.lax.slice_in_dim(d, 0, -2, axis=axis)
                              + 2 * jax.lax.slice_in_dim(d, 1, -1, axis=axis)
                              + jax.lax.slice_in_dim(d, 2, None, axis=axis))
    gx = smooth(p[:, 2:] - p[:, :-2], 0)
    gy = smooth(p[2:] - p[:-2], 1)
    return gx, gy


def _separable_valid(images, taps):
    """Each image of a list filtered by the window outer(taps, taps), 'valid' output."""
    out = losses.separable_filter_valid(jnp.stack(images), taps, axes=(1, 2))
    return list(out)


@functools.partial(jax.jit, static_argnames=("window", "window_size", "sigma", "k1", "k2",
                                             "dynamic_range", "sample_covariance"))
def ssim_map(a, b, *, window: str = "gaussian", window_size: int = 11, sigma: float = 1.5,
             k1: float = 0.01, k2: float = 0.03, dynamic_range: float = 255.0,
             sample_covariance: bool = False):
    """The SSIM map (Wang et al. 2004) at every 'valid' window position, on 0–255:
    ((2μxμy + C1)(2σxy + C2)) / ((μx² + μy² + C1)(σx² + σy² + C2)), C_i = (K_i L)².

    Defaults: 11 x 11 Gaussian window (σ 1.5), L = 255 (VIFB's). scikit-image's defaults, as
    CDDFuse calls them, are `window="uniform", window_size=7, sample_covariance=True` (moments
    scaled by n/(n − 1)), and its float-image L = 2 (`dynamic_range=2`)."""
    x, y = _to255(a), _to255(b)
    c1, c2 = (k1 * dynamic_range) ** 2, (k2 * dynamic_range) ** 2
    # moments of the images less their global means: the same σ's with less cancellation
    x0, y0 = jnp.mean(x), jnp.mean(y)
    x, y = x - x0, y - y0
    mx, my, mxx, myy, mxy = _separable_valid([x, y, x * x, y * y, x * y],
                                             losses.window_1d(window, window_size, sigma))
    n = window_size * window_size
    scale = n / (n - 1.0) if sample_covariance else 1.0
    vx, vy, cxy = scale * (mxx - mx * mx), scale * (myy - my * my), scale * (mxy - mx * my)
    mx, my = mx + x0, my + y0
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim(a, b, **conventions):
    """SSIM: the mean of `ssim_map(a, b, **conventions)`. SSIM(x, x) = 1; finite for
    constants."""
    return jnp.mean(ssim_map(a, b, **conventions))


def ssim_fusion(fused, ir, vis, *, combine: str = "mean", **conventions):
    """SSIM fusion score = SSIM(F, ir) + SSIM(F, vis), halved when `combine` is "mean" (our
    default) and not when "sum" (VIFB and CDDFuse; the maximum is then 2)."""
    total = ssim(fused, ir, **conventions) + ssim(fused, vis, **conventions)
    return 0.5 * total if combine == "mean" else total


def decomposition_score(fused, ir, vis):
    """The training loss's MEF-SSIM-style score: eq. 11 between F and the expected image of
    (ir, vis) (eq. 8–10), 11 x 11 uniform windows, ξ = 1.7, on 0–1 (`losses.decomposition_ssim`)."""
    return losses.decomposition_ssim(fused, ir, vis)


# --------------------------------------------------------------------------- Qabf

def _edges(x, *, convolve: bool = False, zero_tolerance: float = 1e-3):
    """Sobel strength and orientation atan(gy/gx) (π/2 where gx = 0) of a 0–255 image.
    `convolve`: true convolution as MATLAB's conv2 and scipy's convolve2d do (it flips the sign
    of gx, which matters where gx = 0). |gx| below `zero_tolerance` counts as zero, so that the
    float noise of a zero gradient does not flip a vertical edge between +π/2 and −π/2 (0 for
    exact 8-bit arithmetic, as the reference codes use)."""
    gx, gy = sobel(x)
    gx = -gx if convolve else gx
    gx = jnp.where(jnp.abs(gx) <= zero_tolerance, 0.0, gx)
    strength = _sqrt0(gx * gx + gy * gy)
    angle = jnp.where(gx == 0, jnp.pi / 2, jnp.arctan(gy / jnp.where(gx == 0, 1.0, gx)))
    return strength, angle


def _edge_preservation(g_src, a_src, g_f, a_f, tie: str, tie_scale: float):
    gt, kg, sg = 0.9994, -15.0, 0.5
    at, ka, sa = 0.9879, -22.0, 0.8
    hi, lo = jnp.maximum(g_src, g_f), jnp.minimum(g_src, g_f)
    relative = jnp.where(hi > 0, lo / jnp.where(hi > 0, hi, 1.0), 1.0)
    if tie == "fused":
        relative = jnp.where(g_src == g_f, tie_scale * g_f, relative)
    orientation = 1.0 - jnp.abs(a_src - a_f) / (jnp.pi / 2)
    q_g = gt / (1.0 + jnp.exp(kg * (relative - sg)))
    q_a = at / (1.0 + jnp.exp(ka * (orientation - sa)))
    return q_g * q_a


@functools.partial(jax.jit, static_argnames=("convolve", "tie", "tie_scale", "zero_tolerance"))
def qabf_maps(fused, ir, vis, *, convolve: bool = False, tie: str = "one",
              tie_scale: float = 1.0, zero_tolerance: float = 1e-3):
    """Per-pixel (Q_AF g_A + Q_BF g_B, g_A + g_B) of `qabf`: Qabf is the ratio of their sums,
    and their ratio per pixel is the local edge preservation."""
    def edges(x):
        return _edges(_to255(x), convolve=convolve, zero_tolerance=zero_tolerance)
    (g_f, a_f), (g_a, a_a), (g_b, a_b) = edges(fused), edges(ir), edges(vis)
    preserved = (_edge_preservation(g_a, a_a, g_f, a_f, tie, tie_scale) * g_a
                 + _edge_preservation(g_b, a_b, g_f, a_f, tie, tie_scale) * g_b)
    return preserved, g_a + g_b


def qabf(fused, ir, vis, **conventions):
    """Q^{AB/F} (Xydeas & Petrović 2000): edge strength and orientation from 3 x 3 Sobel
    filters (zero padding), preservation Q_XF = Γg/(1+e^{κg(G−σg)}) · Γα/(1+e^{κα(A−σα)}) with
    Γg 0.9994, κg −15, σg 0.5, Γα 0.9879, κα −22, σα 0.8, G = min(g_X, g_F)/max(g_X, g_F),
    A = 1 − |α_X − α_F|/(π/2), α = atan(g_y/g_x) (π/2 where g_x = 0), as in the common
    MATLAB code; Qabf = Σ(Q_AF g_A + Q_BF g_B) / Σ(g_A + g_B) (L = 1). Scale-free; 0 when
    neither source has an edge (zero padding makes the border of any non-zero image an edge).

    Conventions (`qabf_maps`): `convolve` (see `_edges`); `tie`: "one" gives G = 1 where
    g_X = g_F, "fused" gives G = `tie_scale`·g_F there, as VIFB's code (which scales the 0–255
    images by 255 once more: `tie_scale=255`; elsewhere the scale cancels) and CDDFuse's
    (`tie_scale=1`) do; `zero_tolerance` (see `_edges`)."""
    num, den = qabf_maps(fused, ir, vis, **conventions)
    total = jnp.sum(den)
    return jnp.where(total > 0, jnp.sum(num) / jnp.where(total > 0, total, 1.0), 0.0)


def edge_intensity(fused):
    """EI (VIFB's `metricsEdge_intensity`) = mean over all pixels of the Sobel gradient
    magnitude sqrt(gx² + gy²), replicate padding, on 0–255. 0 for a constant image."""
    f = _to255(fused)
    gx, gy = sobel(f, padding="edge")
    return jnp.mean(_sqrt0(gx * gx + gy * gy))


# --------------------------------------------------------------------------- VIFF

VIFF_SCALE_WEIGHTS = (1.0 / 2.15, 0.0, 0.15 / 2.15, 1.0 / 2.15)
VIFF_NOISE = 0.005 * 255.0 ** 2
VIFF_MIN_SIZE = 41  # the smallest side that leaves a valid window at all four scales


def _viff_scale_terms(ref, dist, taps, noise=VIFF_NOISE):
    """Per-pixel VID, VIND and gain at one scale (Han's ComVidVindG; Sheikh's vifvec), on
    0–255, with visual noise variance `noise`."""
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
    vid = jnp.log10(1.0 + g * g * s1 / (sv + noise))
    vind = jnp.log10(1.0 + s1 / noise)
    return vid, vind, g


def _check_viff_size(fused, name):
    if min(jnp.shape(fused)[-2:]) < VIFF_MIN_SIZE:
        raise ValueError(f"{name} needs images of at least {VIFF_MIN_SIZE}x{VIFF_MIN_SIZE} "
                         f"pixels, got {jnp.shape(fused)}")


def _viff_scales(*images):
    """The four scales of the VIF pyramid: (taps, images at that scale), on 0–255. Gaussian
    windows of 17, 9, 5, 3 taps (σ = N/5); from scale 2 on, the images are filtered ('valid')
    and subsampled by 2 first."""
    images = [_to255(x) for x in images]
    for scale in range(1, 5):
        size = 2 ** (4 - scale + 1) + 1
        taps = losses.gaussian_window_1d(size, size / 5.0)
        if scale > 1:
            images = [x[::2, ::2] for x in _separable_valid(images, taps)]
        yield taps, images


@jax.jit
def viff_maps(fused, ir, vis):
    """Per scale, finest first, the per-pixel (VID, VIND) of `viff`, each from the source with
    the smaller gain at that pixel: VIFF_k = Σ(VID + 1e-7) / Σ(VIND + 1e-7). The maps shrink
    with the scale ('valid' windows, subsampling by 2)."""
    _check_viff_size(fused, "VIFF")
    maps = []
    for taps, (f, a, b) in _viff_scales(fused, ir, vis):
        vid_a, vind_a, g_a = _viff_scale_terms(a, f, taps)
        vid_b, vind_b, g_b = _viff_scale_terms(b, f, taps)
        use_a = g_a < g_b
        maps.append((jnp.where(use_a, vid_a, vid_b), jnp.where(use_a, vind_a, vind_b)))
    return maps


@jax.jit
def viff(fused, ir, vis):
    """VIFF (Han, Cai, Cao, Xu 2013, the authors' public code): on 0–255, 4 scales with
    Gaussian windows of 17, 9, 5, 3 taps (σ = N/5; 'valid' filtering; from scale 2 on, the
    images are filtered and subsampled by 2 first), Gaussian-scale-mixture gains and distortion
    per source, visual noise 0.005·255²; per pixel the source with the smaller gain is used,
    VIFF_k = Σ(VID + 1e-7) / Σ(VIND + 1e-7), and VIFF = Σ_k p_k VIFF_k with
    p = [1, 0, 0.15, 1]/2.15 (`viff_maps`). VIFF(x, x, x) = 1. Needs images of at least
    41 x 41 pixels (the four scales' valid windows)."""
    return sum(weight * jnp.sum(vid + 1e-7) / jnp.sum(vind + 1e-7)
               for weight, (vid, vind) in zip(VIFF_SCALE_WEIGHTS, viff_maps(fused, ir, vis)))


VIFP_NOISE = 2.0


@jax.jit
def vif_pixel(fused, ir, vis):
    """Pixel-domain VIF (Sheikh & Bovik 2006, `vifvec`'s pixel version) of F against each
    source, summed: VIF(ir, F) + VIF(vis, F) — what CDDFuse's Evaluator names `VIFF`. On 0–255,
    the four scales of `viff`, visual noise variance 2; VIF(S, F) = Σ_scales Σ VID /
    Σ_scales Σ VIND, 1 where that is 0/0 (a flat source). Needs images of at least 41 x 41."""
    _check_viff_size(fused, "VIF")
    num = den = 0.0
    for taps, (f, a, b) in _viff_scales(fused, ir, vis):
        terms = functools.partial(_viff_scale_terms, taps=taps, noise=VIFP_NOISE)
        vid, vind, _ = jax.vmap(terms, in_axes=(0, None))(jnp.stack([a, b]), f)
        num, den = num + jnp.sum(vid, axis=(1, 2)), den + jnp.sum(vind, axis=(1, 2))
    return jnp.sum(jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 1.0))


# --------------------------------------------------------------------------- differentiable


def soft_histogram(x):
    """A differentiable 256-level histogram: each pixel's value v = 255·x is split between the
    levels floor(v) and floor(v)+1 in proportion to its distance (a triangular kernel of
    width 1 gray level). On 8-bit images it equals `histogram`."""
    v = jnp.clip(_to255(x).ravel(), 0.0, LEVELS - 1.0)
    lo = jnp.clip(jnp.floor(v), 0, LEVELS - 2)
    frac = v - lo
    lo = lo.astype(jnp.int32)
    return jnp.zeros(LEVELS, v.dtype).at[lo].add(1.0 - frac).at[lo + 1].add(frac)


def soft_joint_histogram(a, b):
    """The bilinear (triangular-kernel) version of `joint_histogram`."""
    def split(x):
        v = jnp.clip(_to255(x).ravel(), 0.0, LEVELS - 1.0)
        lo = jnp.clip(jnp.floor(v), 0, LEVELS - 2)
        return lo.astype(jnp.int32), v - lo
    la, fa = split(a)
    lb, fb = split(b)
    h = jnp.zeros((LEVELS, LEVELS), fa.dtype)
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
