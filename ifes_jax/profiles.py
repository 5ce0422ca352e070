"""Metric profiles: which metrics a table reports and under which conventions.

A profile is a table of conventions over the one implementation of each metric in `metrics`
and `hvs_metrics`, plus how colour is handled and whether the scored images are 8-bit files:

- `paper`: the paper's Tables I–V (gray, BT.601 Y of a colour visible image);
- `default`: the set most fusion benchmarks report, our conventions (gray);
- `vifb`: VIFB's 13 MATLAB metrics (Zhang et al., CVPRW 2020 / TPAMI 2023), per RGB channel and
  averaged, on the 8-bit images;
- `cddfuse`: CDDFuse's `utils/Evaluator.py` (Zhao et al., CVPR 2023), on the gray images as its
  `test_IVF.py` reads them (OpenCV's BGR2GRAY in float32, rounded).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ifes_jax import hvs_metrics, metrics
from ifes_jax.data.images import luma


@dataclasses.dataclass(frozen=True)
class Metric:
    fn: Callable  # (fused, ir, vis) -> scalar, on (H, W) images in [0, 1]
    convention: str
    lower_is_better: bool = False
    layout: str = "per_channel"  # colour profiles: "per_channel" (mean) or "side_by_side"
    dtype: str | None = None  # the precision the reference code computes in; None: the input's


@dataclasses.dataclass(frozen=True)
class Profile:
    metrics: dict[str, Metric]
    colour: str  # "luma" | "channels" | "opencv_gray": how images are turned into inputs
    eight_bit: bool  # the toolbox scores 8-bit files: a float fusion is rounded to 8 bits first
    colour_note: str

    @property
    def needs_x64(self) -> bool:
        return any(m.dtype == "float64" for m in self.metrics.values())


def fused_only(fn):
    @functools.wraps(fn)
    def wrapped(fused, ir, vis):
        return fn(fused)
    return wrapped


_p = functools.partial
_VIFF = "Han et al. 2013, 4 scales, Gaussian windows 17/9/5/3 (σ = N/5), weights [1, 0, 0.15, 1]/2.15, visual noise 0.005·255²"

PAPER = Profile({
    "AG": Metric(fused_only(metrics.average_gradient), "eq. 14, 0–255, (M−1)(N−1) forward differences"),
    "EN": Metric(fused_only(metrics.entropy), "eq. 15, bits, 256 gray levels"),
    "MI": Metric(metrics.mutual_information_paper,
                 "2 × EN(F): reproduces the paper's MI column (it equals 2 × EN on every row, the "
                 "signature of a MATLAB MI script whose joint entropy collapses to 0); not a true MI"),
    "GLD": Metric(fused_only(metrics.gray_level_difference), "eq. 18, 0–255, (M−1)(N−1) forward differences"),
    "SF": Metric(fused_only(metrics.spatial_frequency), "eq. 19–21, 0–1"),
    "VIFF": Metric(metrics.viff, _VIFF),
}, colour="luma", eight_bit=False, colour_note="colour visible images are scored on their BT.601 Y")

DEFAULT = Profile({
    "EN": Metric(fused_only(metrics.entropy), "bits, 256 gray levels"),
    "SD": Metric(fused_only(metrics.standard_deviation), "0–255, population"),
    "SF": Metric(fused_only(_p(metrics.spatial_frequency, scale=255.0)), "0–255, sums over MN"),
    "AG": Metric(fused_only(metrics.average_gradient), "0–255, (M−1)(N−1) forward differences"),
    "GLD": Metric(fused_only(metrics.gray_level_difference), "0–255"),
    "MI": Metric(metrics.mutual_information, "bits, 256 × 256 joint histogram, MI(ir,F) + MI(vis,F)"),
    "VIFF": Metric(metrics.viff, _VIFF),
    "Qabf": Metric(metrics.qabf, "Xydeas–Petrović, Sobel, L = 1"),
    "SCD": Metric(metrics.scd, "Aslantas–Bendes 2015"),
    "SSIM": Metric(metrics.ssim_fusion, "(SSIM(F,ir) + SSIM(F,vis))/2, Gaussian 11×11, L = 255"),
    "PSNR": Metric(metrics.psnr, "dB, 255² / mean of MSE(F,ir), MSE(F,vis)"),
    "MEF-SSIM": Metric(metrics.decomposition_score,
                       "the training loss's decomposition score, 11×11 uniform windows, ξ = 1.7"),
}, colour="luma", eight_bit=False, colour_note="colour visible images are scored on their BT.601 Y")

_VIFB_ERROR = "root_sse_per_pixel"
_ZERO = 1e-6  # Sobel responses of 8-bit levels are integers: below this is float noise of a 0
VIFB = Profile({
    "CE": Metric(metrics.cross_entropy, "bits, 256 raw gray levels, (CE(vis,F) + CE(ir,F))/2, "
                 "bins where either histogram is empty skipped", lower_is_better=True),
    "EN": Metric(fused_only(metrics.entropy), "bits, 256 gray levels"),
    "MI": Metric(_p(metrics.mutual_information, base=np.e, stretch=True),
                 "nats, each image min-max stretched to 0..255 and rounded (halves away from 0), "
                 "MI(vis,F) + MI(ir,F)"),
    "PSNR": Metric(_p(metrics.psnr, error=_VIFB_ERROR),
                   "dB, 10 log10(255² / m), m = mean over the sources of sqrt(Σ(S − F)²)/(MN)"),
    "AG": Metric(fused_only(_p(metrics.average_gradient, differences="central")),
                 "0–255, MATLAB `gradient` (central inside, one-sided on the border), Σ/((M−1)(N−1))"),
    "EI": Metric(fused_only(metrics.edge_intensity), "0–255, Sobel magnitude, replicate padding, mean"),
    "Qabf": Metric(_p(metrics.qabf, convolve=True, tie="fused", tie_scale=255.0, zero_tolerance=_ZERO),
                   "Xydeas–Petrović, true convolution, G = 255·g_F where g_S = g_F (its images are "
                   "scaled by 255 once more)"),
    "SD": Metric(fused_only(metrics.standard_deviation), "0–255, population (VIFB's 'Variance')"),
    "SF": Metric(fused_only(_p(metrics.spatial_frequency, scale=255.0)),
                 "0–255, channels side by side as one M × 3N image, sums over 3MN", layout="side_by_side"),
    "RMSE": Metric(_p(metrics.source_error, error=_VIFB_ERROR),
                   "mean over the sources of sqrt(Σ(S − F)²)/(MN), 0–255 (not a true RMSE)",
                   lower_is_better=True),
    "SSIM": Metric(_p(metrics.ssim_fusion, combine="sum"),
                   "SSIM(vis,F) + SSIM(ir,F), Gaussian 11×11 σ 1.5 'valid', L = 255"),
    "Qcb": Metric(hvs_metrics.qcb, "Chen–Blum, images min-max stretched to 0..255"),
    "Qcv": Metric(hvs_metrics.qcv, "Chen–Varshney, 16×16 blocks, α = 5, images min-max stretched "
                  "to 0..255", lower_is_better=True),
}, colour="channels", eight_bit=True,
    colour_note="every metric is computed per RGB channel of the fused image (against the visible "
                "image's channel and the gray infrared image) and the channel values averaged, "
                "as VIFB does; SF lays the channels side by side")

CDDFUSE = Profile({
    "EN": Metric(fused_only(metrics.entropy), "bits, 256 gray levels"),
    "SD": Metric(fused_only(metrics.standard_deviation), "0–255, population (np.std)"),
    "SF": Metric(fused_only(_p(metrics.spatial_frequency, scale=255.0, mean_over="differences")),
                 "0–255, mean squared differences over their own counts"),
    "AG": Metric(fused_only(_p(metrics.average_gradient, differences="central", divisor="MN")),
                 "0–255, central differences (one-sided on the border), mean over MN"),
    "MI": Metric(_p(metrics.mutual_information, base=np.e),
                 "nats over the raw gray values (sklearn's mutual_info_score), MI(F,ir) + MI(F,vis)"),
    "SCD": Metric(metrics.scd, "Aslantas–Bendes 2015"),
    "VIF": Metric(metrics.vif_pixel, "pixel-domain VIF (Sheikh–Bovik) summed over the sources, "
                  "4 scales, noise variance 2 (CDDFuse calls it VIFF)"),
    "Qabf": Metric(_p(metrics.qabf, convolve=True, tie="fused", zero_tolerance=_ZERO),
                   "Xydeas–Petrović on 0–255, true convolution, G = g_F where g_S = g_F"),
    "SSIM": Metric(_p(metrics.ssim_fusion, combine="sum", window="uniform", window_size=7,
                      sample_covariance=True, dynamic_range=2.0),
                   "SSIM(F,ir) + SSIM(F,vis) with scikit-image's defaults as CDDFuse calls them: "
                   "uniform 7×7, sample covariance, L = 2 on 0–255 values"),
    "CC": Metric(metrics.correlation_coefficient, "(corr(ir,F) + corr(vis,F))/2"),
    "PSNR": Metric(_p(metrics.psnr, peak="max"), "dB, 10 log10(max(F)² / mean of the two MSEs)"),
    "MSE": Metric(metrics.source_error, "0–255, mean of MSE(F,ir) and MSE(F,vis)",
                  lower_is_better=True),
}, colour="opencv_gray", eight_bit=True,
    colour_note="every image is reduced to gray as CDDFuse's test script reads it: OpenCV's "
                "BGR2GRAY in float32 (0.299 R + 0.587 G + 0.114 B), rounded to integers")


def _in_precision(profile: Profile, dtype: str, names=None) -> Profile:
    """`profile` with the metrics `names` (all by default) computed in `dtype`."""
    return dataclasses.replace(profile, metrics={
        name: dataclasses.replace(m, dtype=dtype) if names is None or name in names else m
        for name, m in profile.metrics.items()})


# MATLAB computes in double. CDDFuse's numpy code computes in the images' float32, except where
# a float64 operand promotes it: VIF's window (scipy's convolve2d), MI (scikit-learn) and SSIM
# (scipy.ndimage filters in double; its bound is in tests/test_toolbox_profiles.py).
VIFB = _in_precision(VIFB, "float64")
CDDFUSE = _in_precision(_in_precision(CDDFUSE, "float32"), "float64", {"MI", "VIF", "SSIM"})

PROFILES = {"paper": PAPER, "default": DEFAULT, "vifb": VIFB, "cddfuse": CDDFUSE}


def names(profile: str) -> list[str]:
    return list(PROFILES[profile].metrics)


def conventions(profile: str) -> dict[str, str]:
    return {name: m.convention for name, m in PROFILES[profile].metrics.items()}


def lower_is_better(profile: str) -> set[str]:
    return {name for name, m in PROFILES[profile].metrics.items() if m.lower_is_better}


# --------------------------------------------------------------------------- colour


def opencv_gray(rgb01):
    """OpenCV's float32 BGR2GRAY of an RGB image in [0, 1], as CDDFuse's reader applies it to
    0–255 values, then `np.round` (halves to even): integer gray levels, returned in [0, 1]."""
    rgb = np.asarray(rgb01, np.float32) * np.float32(255)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    gray = b * np.float32(0.114) + g * np.float32(0.587) + r * np.float32(0.299)
    return (np.round(gray) / np.float32(255)).astype(np.float32)


def to_inputs(image01, profile: str):
    """An (H, W) or (H, W, 3) float image in [0, 1] as `profile` scores it."""
    colour = PROFILES[profile].colour
    image01 = np.asarray(image01, np.float32)
    if colour == "luma":
        return luma(image01)
    if colour == "opencv_gray":
        return image01 if image01.ndim == 2 else opencv_gray(image01)
    return image01


# --------------------------------------------------------------------------- compute


def _per_channel(metric: Metric, fused, ir, vis):
    """A metric of (H, W, C) images: per channel and averaged, or channels side by side."""
    channels = fused.shape[-1]
    ir, vis = (x if x.ndim == 3 else jnp.repeat(x[..., None], channels, axis=-1) for x in (ir, vis))
    if metric.layout == "side_by_side":
        def wide(x):
            return jnp.concatenate([x[..., c] for c in range(channels)], axis=1)
        return metric.fn(wide(fused), wide(ir), wide(vis))
    return jnp.mean(jax.vmap(metric.fn, in_axes=-1)(fused, ir, vis))


def _cast(metric: Metric, images, eight_bit: bool):
    """The images in the metric's precision; for a profile of 8-bit images, at their nearest
    8-bit levels (a float32 k/255 widened to float64 is not k/255)."""
    if metric.dtype is not None:
        images = [x.astype(metric.dtype) for x in images]
    return [jnp.round(x * 255.0) / 255.0 for x in images] if eight_bit else images


def _apply(metric: Metric, fused, ir, vis, eight_bit: bool):
    fused, ir, vis = _cast(metric, [fused, ir, vis], eight_bit)
    if jnp.ndim(fused) == 2:
        return metric.fn(fused, ir, vis)
    return _per_channel(metric, fused, ir, vis)


@functools.partial(jax.jit, static_argnames="profile")
def compute(fused, ir, vis, profile: str = "default"):
    """Every metric of `profile` for one triple in [0, 1]: {name: scalar}. Images are (H, W),
    or for the `vifb` profile a fused and visible image may be (H, W, 3) (`to_inputs`).

    The `vifb` and `cddfuse` profiles score 8-bit images (each image is taken to its nearest
    8-bit levels, so they have no useful gradient: use the metrics themselves for a loss) and
    compute some metrics in float64, as their reference code does: call them through `score`,
    or under `jax.enable_x64(True)`."""
    spec = PROFILES[profile]
    if spec.needs_x64 and not jax.config.jax_enable_x64:
        raise ValueError(f"profile {profile!r} computes in float64: use profiles.score, or call "
                         "it under jax.enable_x64(True)")
    if jnp.ndim(fused) == 2 and jnp.ndim(vis) == 3:
        raise ValueError("a gray fused image with a colour visible image: give the fused image "
                         "in colour, or both in gray")
    return {name: _apply(m, fused, ir, vis, spec.eight_bit) for name, m in spec.metrics.items()}


def score(fused, ir, vis, profile: str = "default") -> dict[str, float]:
    """`compute` for images on the host, as floats; the profiles that need float64 run under
    `jax.enable_x64(True)`, scoped to this call."""
    spec = PROFILES[profile]
    images = [np.asarray(x) for x in (fused, ir, vis)]
    if not spec.needs_x64:
        return {k: float(v) for k, v in jax.device_get(compute(*images, profile)).items()}
    with jax.enable_x64(True):
        images = [x.astype(np.float64) for x in images]
        return {k: float(v) for k, v in jax.device_get(compute(*images, profile)).items()}
