"""Inference: load a trained IFESNet from a checkpoint and fuse images of any size."""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ifes_jax import checkpoint, model as model_lib, train
from ifes_jax.errors import InputError


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


@dataclasses.dataclass
class Fuser:
    """A trained model ready to fuse: `fuser(ir, vis)` on gray float images in [0, 1]."""

    config: ml_collections.ConfigDict
    params: dict
    net: model_lib.IFESNet

    @functools.cached_property
    def _apply(self):
        return jax.jit(lambda params, ir, vis: self.net.apply({"params": params}, ir, vis))

    def __call__(self, ir, vis):
        """Fuse (H, W) or (B, H, W) or (B, H, W, 1) images; returns {"fused": same layout as
        the input, "weights": (..., H, W, 2)} as float32 numpy arrays."""
        ir, vis = np.asarray(ir, np.float32), np.asarray(vis, np.float32)
        if ir.shape != vis.shape:
            raise InputError(f"infrared {ir.shape} and visible {vis.shape} shapes differ")
        squeeze = ir.ndim == 2
        x_ir, x_vis = (x[None] if squeeze else x for x in (ir, vis))
        if x_ir.ndim == 3:
            x_ir, x_vis = x_ir[..., None], x_vis[..., None]
        out = jax.device_get(self._apply(self.params, x_ir, x_vis))
        fused = out["fused"].reshape(x_ir.shape)
        fused = fused[0, ..., 0] if squeeze else fused.reshape(ir.shape)
        weights = out["weights"][0] if squeeze else out["weights"]
        return {"fused": fused, "weights": weights}


def load(path, step: int | None = None) -> Fuser:
    """The model of a workdir or checkpoint folder (its config is read from the checkpoint)."""
    folder, found_step = checkpoint_dir(path)
    step = step if step is not None else found_step
    mngr = checkpoint.manager(folder, read_only=True)
    try:
        if mngr.latest_step() is None:
            raise InputError(f"{folder}: holds no complete checkpoint")
        config = checkpoint.restore_config(mngr, step)
        template = jax.eval_shape(
            lambda: train.create_train_state(config, jax.random.key(0), 16))
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        template = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device)
            if isinstance(x, jax.ShapeDtypeStruct) else x, template)
        try:
            state = checkpoint.restore(mngr, template, step=step)
        except (ValueError, KeyError) as exc:
            raise InputError(f"{folder}: the checkpoint does not match its config's "
                             f"architecture ({str(exc).splitlines()[0]})") from None
    finally:
        mngr.close()
    return Fuser(config, state.params, model_lib.from_config(config.model))
