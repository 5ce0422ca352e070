"""Deterministic synthetic infrared/visible pairs, so that every command runs with no data.

A scene is a set of objects with hard edges. The visible image carries their textures
(gratings, checkers, fine noise) under a smooth illumination, with one shadowed region where
its contrast almost vanishes. The infrared image is a smooth thermal background in which the
same objects appear with other, blurred intensities, plus hot targets (some inside the shadow)
and a fine thermal pattern on one target that the visible image lacks. A good fusion keeps the
visible textures, the hot targets and the infrared-only pattern.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def _smooth_field(rng, shape, sigma):
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    field -= field.min()
    return field / max(field.max(), 1e-12)


def _texture(rng, yy, xx):
    """A random visible texture in [-1, 1] over the grid."""
    kind = rng.integers(4)
    if kind == 0:  # oriented grating
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
        return np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    if kind == 1:  # checkerboard
        cell = rng.integers(3, 10)
        return np.where(((yy // cell) + (xx // cell)) % 2 == 0, 1.0, -1.0)
    if kind == 2:  # fine random texture (foliage, gravel)
        noise = ndimage.gaussian_filter(rng.standard_normal(yy.shape), rng.uniform(0.7, 1.5))
        return np.clip(noise / (noise.std() + 1e-12) / 2, -1, 1)
    return np.zeros_like(yy, dtype=np.float64)  # flat paint


def _shape_mask(rng, yy, xx, height, width, scale):
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    ry, rx = rng.uniform(0.06, 0.25) * scale, rng.uniform(0.06, 0.25) * scale
    if rng.integers(2):
        return (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1


def synthetic_pair(seed: int, height: int = 256, width: int = 256):
    """One (ir, vis) pair of float32 (height, width) images in [0, 1], a pure function of seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    scale = min(height, width)

    illumination = 0.35 + 0.3 * _smooth_field(rng, (height, width), scale / 4)
    vis = illumination.copy()
    thermal = 0.15 + 0.25 * _smooth_field(rng, (height, width), scale / 6)
    ir = thermal.copy()
    for _ in range(rng.integers(6, 11)):
        mask = _shape_mask(rng, yy, xx, height, width, scale)
        shade = rng.uniform(-0.25, 0.25)
        vis = np.where(mask, illumination + shade + rng.uniform(0.05, 0.2) * _texture(rng, yy, xx), vis)
        ir = np.where(mask, thermal + rng.uniform(-0.1, 0.15), ir)
    ir = ndimage.gaussian_filter(ir, 1.5)  # thermal edges are soft

    shadow = ndimage.gaussian_filter(
        _shape_mask(rng, yy, xx, height, width, 1.6 * scale).astype(np.float64), 3)
    vis = vis * (1 - 0.8 * shadow) + 0.05 * shadow  # night / smoke: little visible contrast

    for i in range(rng.integers(2, 5)):
        cy = rng.uniform(0.15, 0.85) * height
        cx = rng.uniform(0.15, 0.85) * width
        ry, rx = rng.uniform(0.05, 0.12) * scale, rng.uniform(0.02, 0.05) * scale  # upright, person-like
        blob = np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) ** 2)
        heat = rng.uniform(0.45, 0.65)
        if i == 0:  # thermal detail the visible image lacks: stripes across the hottest target
            heat = heat * (0.8 + 0.2 * np.sin(2 * np.pi * yy / rng.uniform(3, 6)))
        ir = ir + heat * blob
        vis = vis + 0.04 * blob * rng.uniform(-1, 1)  # barely visible in the visible band

    ir = ir + 0.01 * rng.standard_normal(ir.shape)
    vis = vis + 0.01 * rng.standard_normal(vis.shape)
    return (np.clip(ir, 0, 1).astype(np.float32), np.clip(vis, 0, 1).astype(np.float32))


def synthetic_pairs(seed: int, count: int, height: int = 256, width: int = 256):
    """`count` pairs as two float32 arrays (count, height, width); pair i is synthetic_pair(seed + i)."""
    pairs = [synthetic_pair(seed + i, height, width) for i in range(count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
