"""Image files: float [0, 1] arrays to and from 8- or 16-bit PNGs, written atomically."""
from __future__ import annotations

import os
import tempfile

import numpy as np
from PIL import Image


def to_uint(image01, bit_depth: int = 8) -> np.ndarray:
    """Round a float image in [0, 1] to uint8 (bit_depth 8) or uint16 (bit_depth 16)."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    top = 255 if bit_depth == 8 else 65535
    out = np.rint(np.clip(np.asarray(image01, np.float64), 0.0, 1.0) * top)
    return out.astype(np.uint8 if bit_depth == 8 else np.uint16)


def write_png(path, image01, bit_depth: int = 8) -> None:
    """Write a gray (H, W) or RGB (H, W, 3) float image in [0, 1] as a PNG.

    The file is written under a temporary name in the same folder and renamed, so a reader
    never sees a half-written file.
    """
    pixels = to_uint(image01, bit_depth)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
    os.close(fd)
    try:
        Image.fromarray(pixels).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
