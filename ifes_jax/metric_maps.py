"""Per-pixel maps of the local metrics, for weighting or looking at: SSIM, Qabf, the loss's
decomposition score (MEF-SSIM) and VIFF's information ratio per scale; `evaluate --maps` writes
them as PNGs. Maps are of gray (H, W) images in [0, 1]; windowed maps are smaller than the
image ('valid' positions), VIFF's shrink by 2 per scale."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from ifes_jax import losses, metrics
from ifes_jax.data.images import luma, write_png


def _ratio(num, den):
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


@jax.jit
def metric_maps(fused, ir, vis) -> dict:
    """{name: map}: `ssim` (the mean of SSIM(F, ir) and SSIM(F, vis) maps, default profile's
    Gaussian 11 x 11), `qabf` (Q_AF g_A + Q_BF g_B over g_A + g_B per pixel, 0 where neither
    source has an edge), `mef_ssim` (eq. 11 per 11 x 11 window) and `viff_1` .. `viff_4`
    (VID / VIND per pixel at each scale)."""
    maps = {"ssim": 0.5 * (metrics.ssim_map(fused, ir) + metrics.ssim_map(fused, vis))}
    maps["qabf"] = _ratio(*metrics.qabf_maps(fused, ir, vis))
    maps["mef_ssim"] = losses.decomposition_ssim_map(fused, ir, vis)
    for k, (vid, vind) in enumerate(metrics.viff_maps(fused, ir, vis), start=1):
        maps[f"viff_{k}"] = _ratio(vid, vind)
    return maps


def write_maps(folder, prefix, fused, ir, vis) -> list[str]:
    """`metric_maps` of gray or colour images (colour ones on their BT.601 Y) as 8-bit PNGs
    `folder/prefix_<name>.png`, each map clipped to [0, 1]; returns the paths."""
    gray = [luma(np.asarray(x, np.float32)) for x in (fused, ir, vis)]
    paths = []
    for name, m in jax.device_get(metric_maps(*gray)).items():
        paths.append(os.path.join(folder, f"{prefix}_{name}.png"))
        write_png(paths[-1], np.clip(m, 0.0, 1.0))
    return paths
