"""Inference: load a trained IFESNet from a checkpoint and fuse images of any size."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ifes_jax import checkpoint, configured, losses, model as model_lib
from ifes_jax.data.images import (MAX_PIXELS, luma, read_image, rgb_to_ycbcr, to_float01,
                                  write_png, ycbcr_to_rgb)
from ifes_jax.errors import DataError, InputError


def checkpoint_dir(path) -> tuple[str, int | None]:
    """(the checkpoints folder, a step or None for the latest) of a workdir, a checkpoints
    folder or one step's folder."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise InputError(f"{path}: no such checkpoint or workdir")
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints"), None
    name = os.path.basename(path)
    if name.isdigit() and os.path.isdir(os.path.join(path, "state")):
        return os.path.dirname(path), int(name)
    if any(d.isdigit() for d in os.listdir(path)):
        return path, None
    raise InputError(f"{path}: not a workdir or checkpoint folder (no checkpoints/ or step folders)")


SMOOTH_SIZE, SMOOTH_VARIANCE = 5, 2.0  # the paper's Discussion (Fig. 8): 5 x 5 Gaussian, variance 2
RECEPTIVE_MARGIN = 32  # > the deepest path of the largest variant (16 convs of radius 1, 4 stages + HC)
MIN_TILE = 2 * (RECEPTIVE_MARGIN + SMOOTH_SIZE // 2) + 1


def smoothing_taps() -> np.ndarray:
    """1-D taps of the 5 x 5 Gaussian (variance 2) used by `smooth_weights`."""
    x = np.arange(SMOOTH_SIZE) - SMOOTH_SIZE // 2
    g = np.exp(-x ** 2 / (2 * SMOOTH_VARIANCE))
    return g / g.sum()


def smooth(weights_BHWC):
    """Each weight map convolved with the 5 x 5 Gaussian, symmetric borders (same size)."""
    r = SMOOTH_SIZE // 2
    padded = jnp.pad(weights_BHWC, ((0, 0), (r, r), (r, r), (0, 0)), mode="symmetric")
    return losses.separable_filter_valid(padded, smoothing_taps(), axes=(1, 2))


@dataclasses.dataclass
class Fuser:
    """A trained model ready to fuse: `fuser(ir, vis)` on gray float images in [0, 1].

    Any size: the network is fully convolutional. Images larger than `tile` pixels a side are
    fused in overlapping tiles (each with a `RECEPTIVE_MARGIN` border that is dropped), which
    gives the untiled result up to float rounding, in bounded memory.
    """

    config: ml_collections.ConfigDict
    params: dict
    net: model_lib.IFESNet
    tile: int = 1024
    progress: bool = False  # a progress bar over the tiles of an image of several

    def __post_init__(self):
        if not isinstance(self.tile, int) or self.tile < MIN_TILE:
            raise InputError(f"tile must be an integer of at least {MIN_TILE} pixels (two "
                             f"{RECEPTIVE_MARGIN + SMOOTH_SIZE // 2}-pixel margins and a core), got {self.tile}")
        if not all(np.all(np.isfinite(p)) for p in jax.tree.leaves(jax.device_get(self.params))):
            raise InputError("the model's parameters are not all finite (NaN or inf)")

    @functools.cached_property
    def _apply(self):
        def apply(params, ir, vis, smooth_weights):
            out = self.net.apply({"params": params}, ir, vis)
            if smooth_weights:
                w = smooth(out["weights"])
                out = dict(out, weights=w, fused=w[..., :1] * ir + w[..., 1:] * vis)
            return out
        return jax.jit(apply, static_argnums=3)

    def __call__(self, ir, vis, *, smooth_weights: bool = False):
        """Fuse (H, W), (B, H, W) or (B, H, W, 1) gray images in [0, 1]; returns {"fused":
        the input's layout, "weights": (..., H, W, 2)} as float32 numpy arrays."""
        ir, vis = np.asarray(ir, np.float32), np.asarray(vis, np.float32)
        if ir.shape != vis.shape:
            raise InputError(f"infrared {ir.shape} and visible {vis.shape} shapes differ")
        if ir.ndim not in (2, 3, 4) or (ir.ndim == 4 and ir.shape[-1] != 1):
            raise InputError(f"expected gray images as HW, BHW or BHW1, got shape {ir.shape}")
        x_ir = ir.reshape((-1,) + ir.shape[-2:] if ir.ndim < 4 else ir.shape[:3])[..., None]
        x_vis = vis.reshape(x_ir.shape)
        fused, weights = self._fuse_tiled(x_ir, x_vis, smooth_weights)
        if ir.ndim == 2:
            return {"fused": fused[0, ..., 0], "weights": weights[0]}
        return {"fused": fused.reshape(ir.shape), "weights": weights}

    def _run(self, ir, vis, smooth_weights):
        out = jax.device_get(self._apply(self.params, ir, vis, smooth_weights))
        if not (np.all(np.isfinite(out["fused"])) and np.all(np.isfinite(out["weights"]))):
            raise DataError("the model's output is not finite (NaN or inf): nothing written")
        return out["fused"], out["weights"]

    def _fuse_tiled(self, ir, vis, smooth_weights):
        height, width = ir.shape[1:3]
        if max(height, width) <= self.tile:
            return self._run(ir, vis, smooth_weights)
        margin = RECEPTIVE_MARGIN + (SMOOTH_SIZE // 2 if smooth_weights else 0)
        core = self.tile - 2 * margin
        fused = np.empty(ir.shape, np.float32)
        weights = np.empty(ir.shape[:3] + (2,), np.float32)
        tiles = [(top, left) for top in _tile_starts(height, core) for left in _tile_starts(width, core)]
        if self.progress:
            from tqdm import tqdm
            tiles = tqdm(tiles, desc=f"tiles of {width}x{height}", unit="tile", leave=False,
                         disable=len(tiles) < 4)
        for top, left in tiles:
            # every tile has the same shape (one compilation); it reaches `margin` beyond its core
            t0 = min(max(top - margin, 0), max(height - self.tile, 0))
            l0 = min(max(left - margin, 0), max(width - self.tile, 0))
            window = (slice(None), slice(t0, t0 + self.tile), slice(l0, l0 + self.tile))
            f, w = self._run(ir[window], vis[window], smooth_weights)
            rows = slice(top - t0, min(top + core, height) - t0)
            cols = slice(left - l0, min(left + core, width) - l0)
            out_rows = slice(top, min(top + core, height))
            out_cols = slice(left, min(left + core, width))
            fused[:, out_rows, out_cols] = f[:, rows, cols]
            weights[:, out_rows, out_cols] = w[:, rows, cols]
        return fused, weights


def _tile_starts(size, core):
    return list(range(0, size, core))


def load(path, step: int | None = None, *, half_precision: bool = False,
         tile: int = 1024, progress: bool = False) -> Fuser:
    """The model of a workdir or checkpoint folder (its config is read from the checkpoint), or
    of a folder of exported weights (`export`); `half_precision` runs it in bfloat16."""
    if os.path.isfile(os.path.join(path, "params.msgpack")):
        if step is not None:
            raise InputError(f"{path}: exported weights have no steps to choose from")
        return load_exported(path, half_precision=half_precision, tile=tile, progress=progress)
    folder, found_step = checkpoint_dir(path)
    step = step if step is not None else found_step
    mngr = checkpoint.manager(folder, read_only=True)
    try:
        if mngr.latest_step() is None:
            raise InputError(f"{folder}: holds no complete checkpoint")
        step = mngr.latest_step() if step is None else step
        where = f"{folder}/{step}"
        config = checkpoint.guarded(where, "config", lambda: checkpoint.restore_config(mngr, step))
        net = configured.from_config(config.model, half_precision)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                                abstract_params(net))
        params = checkpoint.guarded(where, "parameters",
                                    lambda: checkpoint.restore_params(mngr, template, step=step))
    finally:
        mngr.close()
    return Fuser(config, params, net, tile, progress)


def abstract_params(net: model_lib.IFESNet):
    """The shapes and dtypes of `net`'s parameters (nothing is computed)."""
    x = jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32)
    return jax.eval_shape(net.init, jax.random.key(0), x, x)["params"]


NORMALIZATIONS = ("none", "minmax")


def minmax_stretch(image):
    """Stretch an image's values to fill [0, 1]: (x − min) / (max − min), as CDDFuse's test
    script does to every fused image before saving it. A flat image is returned as it is."""
    lo, hi = float(np.min(image)), float(np.max(image))
    return image if hi <= lo else (image - lo) / (hi - lo)


def fuse_color(fuser: Fuser, ir, vis, *, smooth_weights: bool = False, normalize: str = "none"):
    """Fuse float images in [0, 1] of any colour: ir (H, W) (an (H, W, 3) infrared image is
    reduced to its Y), vis (H, W) or (H, W, 3). A colour visible image is fused on its BT.601 Y;
    its Cb/Cr are kept and the result is converted back to RGB. `normalize="minmax"` stretches
    the fused gray image (or Y) to [0, 1] (`minmax_stretch`; off by default: the paper's model
    outputs eq. 4 as it is). Returns {"fused": (H, W) or (H, W, 3), "weights": (H, W, 2)}."""
    if normalize not in NORMALIZATIONS:
        raise InputError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    ir, vis = np.asarray(ir, np.float32), np.asarray(vis, np.float32)
    ir = luma(ir)
    if ir.shape != vis.shape[:2]:
        raise InputError(f"infrared {ir.shape[1]}x{ir.shape[0]} and visible "
                         f"{vis.shape[1]}x{vis.shape[0]} sizes differ")
    stretch = minmax_stretch if normalize == "minmax" else (lambda image: image)
    if vis.ndim == 2:
        out = fuser(ir, vis, smooth_weights=smooth_weights)
        return dict(out, fused=stretch(out["fused"]))
    ycbcr = rgb_to_ycbcr(vis)
    out = fuser(ir, ycbcr[..., 0], smooth_weights=smooth_weights)
    rgb = ycbcr_to_rgb(np.concatenate([stretch(out["fused"])[..., None], ycbcr[..., 1:]], axis=-1))
    return {"fused": np.clip(rgb, 0.0, 1.0), "weights": out["weights"]}


def read_pair_files(ir_path, vis_path, max_pixels: int = MAX_PIXELS):
    """(ir float, vis float, bit depth of the output) of two image files, checked: a missing or
    unreadable file, one over `max_pixels` or differing sizes raise a one-line error naming
    the files."""
    ir_px, ir_bits, ir_mode = read_image(ir_path, max_pixels)
    vis_px, vis_bits, _ = read_image(vis_path, max_pixels)
    if ir_px.shape[:2] != vis_px.shape[:2]:
        (h1, w1), (h2, w2) = ir_px.shape[:2], vis_px.shape[:2]
        raise DataError(f"{ir_path} is {w1}x{h1}, {vis_path} is {w2}x{h2}: sizes differ")
    if ir_mode == "rgb":
        warnings.warn(f"{ir_path}: colour infrared image reduced to gray (BT.601 Y)", stacklevel=2)
    return to_float01(ir_px, ir_bits), to_float01(vis_px, vis_bits), max(ir_bits, vis_bits)


def output_paths(out_path, save_weights: bool = False) -> list[str]:
    """Every file `fuse_files` writes for `out_path`."""
    return [out_path] + (weight_paths(out_path) if save_weights else [])


def check_outputs(outputs, inputs, overwrite: bool = False):
    """Refuse, before any work, an output that is (or would replace) an input, that exists
    (unless `overwrite`), that is a folder, or whose folder is a file."""
    for path in outputs:
        real = os.path.realpath(path)
        for source in inputs:
            if real == os.path.realpath(source) or (
                    os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source)):
                raise InputError(f"{path}: the output would overwrite the input {source}")
        if os.path.isdir(path):
            raise InputError(f"{path}: is a folder, not an output file")
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise InputError(f"{path}: cannot be written under {parent}, which is a file")
        if os.path.exists(path) and not overwrite:
            raise InputError(f"{path}: exists (use --overwrite to replace it)")


def fuse_files(fuser: Fuser, ir_path, vis_path, out_path, *, bit_depth: int = 8,
               save_weights: bool = False, smooth_weights: bool = False, overwrite: bool = False,
               max_pixels: int = MAX_PIXELS, normalize: str = "none"):
    """Fuse two image files into `out_path` (PNG; the weight maps beside it as
    NAME_weight_ir.png / NAME_weight_vis.png). Every output is checked first (`check_outputs`),
    every file is written under a temporary name and renamed, and if one fails the others
    written by this call are removed: a failure leaves no partial output."""
    outputs = output_paths(out_path, save_weights)
    check_outputs(outputs, [ir_path, vis_path], overwrite)
    ir, vis, _ = read_pair_files(ir_path, vis_path, max_pixels)
    out = fuse_color(fuser, ir, vis, smooth_weights=smooth_weights, normalize=normalize)
    if bit_depth == 16 and out["fused"].ndim == 3:
        raise InputError(f"{vis_path}: 16-bit output is written for gray images only")
    images = [out["fused"], np.clip(out["weights"][..., 0], 0, 1), np.clip(out["weights"][..., 1], 0, 1)]
    written = []
    try:
        for path, image in zip(outputs, images):
            write_png(path, image, bit_depth)
            written.append(path)
    except OSError as exc:
        for path in written:
            os.remove(path)
        raise InputError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    return out


def weight_paths(out_path):
    stem, _ = os.path.splitext(out_path)
    return [f"{stem}_weight_ir.png", f"{stem}_weight_vis.png"]


SHIPPED_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


def export(fuser: Fuser, folder: str = SHIPPED_WEIGHTS) -> None:
    """Write a model's parameters (flax msgpack, float32) and config (JSON) into `folder`, the
    form in which weights ship inside the package."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "params.msgpack"), "wb") as f:
        f.write(_params_bytes(fuser.params))
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(fuser.config.to_json_best_effort(indent=2))
    record = {"params_sha256": params_sha256(fuser.params)}
    with open(os.path.join(folder, "checksum.json"), "w") as f:
        json.dump(record, f, indent=2)


def _params_bytes(params) -> bytes:
    """The parameters as float32 flax msgpack: the bytes of an exported params.msgpack."""
    from flax import serialization
    return serialization.to_bytes(
        jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(params)))


def params_sha256(params) -> str:
    """SHA-256 of `_params_bytes`: the `params_sha256` of checksum.json and of the exports."""
    import hashlib
    return hashlib.sha256(_params_bytes(params)).hexdigest()


def _sha256_file(path) -> str:
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _checksums(folder) -> dict:
    path = os.path.join(folder, "checksum.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable checksum file ({exc})") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}: not a checksum record")
    return record


def load_exported(folder: str = SHIPPED_WEIGHTS, *, half_precision: bool = False,
                  tile: int = 1024, progress: bool = False) -> Fuser:
    """The model `export` wrote into `folder` (by default the weights shipped with the package)."""
    from flax import serialization
    paths = [os.path.join(folder, n) for n in ("params.msgpack", "config.json")]
    for path in paths:
        if not os.path.isfile(path):
            raise InputError(f"{path}: missing (no exported weights in {folder})")
    expected = _checksums(folder).get("params_sha256")
    if expected is None:
        raise InputError(f"{folder}: no params_sha256 in checksum.json, so the weights cannot be "
                         "verified (export them again with scripts/export_weights.py)")
    if _sha256_file(paths[0]) != expected:
        raise InputError(f"{paths[0]}: its SHA-256 differs from checksum.json (corrupted or "
                         "replaced weights)")
    try:
        with open(paths[1]) as f:
            config = ml_collections.ConfigDict(json.load(f))
    except ValueError as exc:
        raise InputError(f"{paths[1]}: not a JSON config ({exc})") from None
    net = configured.from_config(config.model, half_precision)
    template = abstract_params(net)
    with open(paths[0], "rb") as f:
        try:
            params = serialization.from_bytes(template, f.read())
        except (ValueError, KeyError) as exc:
            raise InputError(f"{paths[0]}: does not match {paths[1]} ({exc})") from None
    return Fuser(config, jax.tree.map(jnp.asarray, params), net, tile, progress)
