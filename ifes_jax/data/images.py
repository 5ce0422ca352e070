"""Image files and colour: reading 8/16-bit gray/RGB/RGBA files with clear errors, BT.601 YCbCr,
and writing 8- or 16-bit PNGs atomically."""
from __future__ import annotations

import os
import uuid

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ifes_jax.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 64_000_000  # per image, checked from the header before decoding (--max-pixels)


def read_image(path, max_pixels: int = MAX_PIXELS):
    """Read an image file losslessly: returns (pixels, bit_depth, mode).

    pixels is uint8 (bit_depth 8) or uint16 (bit_depth 16), (H, W) for mode "gray" and
    (H, W, 3) for mode "rgb". Alpha is dropped; palette images are expanded; an EXIF
    orientation is applied, so the pixels are the image as a viewer shows it. Raises DataError
    for a missing, empty or unreadable file, for an image of more than `max_pixels` pixels
    (read from the header, before anything is decoded) and for modes other than gray, RGB
    and RGBA.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise DataError(f"{path}: {width}x{height} is {width * height / 1e6:.0f} megapixels, "
                                f"over the limit of {max_pixels / 1e6:.0f} (raise it with --max-pixels)")
            img.load()
            img = ImageOps.exif_transpose(img)
            mode = img.mode
            if mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                mode = img.mode
            if mode in ("1", "L", "LA"):
                return np.asarray(img.convert("L"), np.uint8), 8, "gray"
            if mode in ("RGB", "RGBA"):
                return np.asarray(img.convert("RGB"), np.uint8), 8, "rgb"
            if _sixteen_bit(mode):
                pixels = np.asarray(img)
                if pixels.min() < 0 or pixels.max() > 65535:
                    raise DataError(f"{path}: 32-bit integer image with values outside 0..65535 "
                                    "(only 8- and 16-bit images are supported)")
                return pixels.astype(np.uint16), 16, "gray"
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: refused by Pillow as a decompression bomb ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    raise DataError(f"{path}: unsupported image mode {mode!r} (expected gray, RGB or RGBA, "
                    "8 or 16 bits)")


def _sixteen_bit(mode: str) -> bool:
    """Pillow's modes of 16-bit (and 32-bit integer) gray images."""
    return mode.startswith("I;16") or mode == "I"


def header_bit_depth(path) -> int:
    """16 for a 16-bit (or 32-bit integer) image file, else 8, read from the header alone."""
    try:
        with Image.open(path) as img:
            return 16 if _sixteen_bit(img.mode) else 8
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError,
            SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def to_float01(pixels, bit_depth: int) -> np.ndarray:
    """uint pixels to float32 in [0, 1]: divided by 255 (8-bit) or 65535 (16-bit)."""
    return np.asarray(pixels, np.float32) / np.float32(2 ** bit_depth - 1)


def rgb_to_ycbcr(rgb):
    """BT.601 full-range (JPEG) YCbCr of an RGB image in [0, 1]; Cb and Cr are centred on 0.5."""
    rgb = np.asarray(rgb, np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 0.5 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([y, cb, cr], axis=-1)


def ycbcr_to_rgb(ycbcr):
    """Inverse of `rgb_to_ycbcr` (not clipped)."""
    ycbcr = np.asarray(ycbcr, np.float32)
    y, cb, cr = ycbcr[..., 0], ycbcr[..., 1] - 0.5, ycbcr[..., 2] - 0.5
    return np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)


def luma(image01):
    """The gray image of an (H, W) or (H, W, 3) float image: itself, or BT.601 Y."""
    image01 = np.asarray(image01, np.float32)
    if image01.ndim == 2:
        return image01
    r, g, b = image01[..., 0], image01[..., 1], image01[..., 2]
    return 0.299 * r + 0.587 * g + 0.114 * b  # rgb_to_ycbcr's Y, without Cb and Cr


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
    never sees a half-written file; it gets the permissions the umask gives a new file.
    (Pillow writes 16-bit PNGs for gray images only.)
    """
    pixels = to_uint(image01, bit_depth)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if bit_depth == 16 and pixels.ndim == 3:
        raise ValueError("16-bit PNG output is supported for gray images only")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}.png")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            Image.fromarray(pixels).save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
