"""Training batches: same-position random crops and flips of both sources.

A batch is a pure function of (seed, step), so a resumed run sees exactly the batches that an
uninterrupted run would have seen.
"""
from __future__ import annotations

import numpy as np


def random_crop_flip(rng: np.random.Generator, ir_HW, vis_HW, crop: int, flips: bool = True):
    """One crop of `crop` x `crop` at the same position in both sources, with the same flips."""
    height, width = ir_HW.shape
    if height < crop or width < crop:
        raise ValueError(f"image of size {height}x{width} is smaller than the {crop}x{crop} crop")
    top = rng.integers(height - crop + 1)
    left = rng.integers(width - crop + 1)
    window = (slice(top, top + crop), slice(left, left + crop))
    ir_crop, vis_crop = ir_HW[window], vis_HW[window]
    if flips:
        if rng.integers(2):
            ir_crop, vis_crop = ir_crop[:, ::-1], vis_crop[:, ::-1]
        if rng.integers(2):
            ir_crop, vis_crop = ir_crop[::-1], vis_crop[::-1]
    return ir_crop, vis_crop


def batch_at(ir_NHW, vis_NHW, *, seed: int, step: int, batch_size: int, crop: int,
             flips: bool = True):
    """The batch of training step `step`: {"ir", "vis"} float32 (B, crop, crop, 1) drawn from
    the pool of pairs (ir_NHW[i], vis_NHW[i])."""
    rng = np.random.default_rng([seed, step])
    picks = rng.integers(len(ir_NHW), size=batch_size)
    crops = [random_crop_flip(rng, ir_NHW[i], vis_NHW[i], crop, flips) for i in picks]
    return {"ir": np.stack([c[0] for c in crops])[..., None].astype(np.float32),
            "vis": np.stack([c[1] for c in crops])[..., None].astype(np.float32)}
