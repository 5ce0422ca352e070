"""Orbax checkpoints of a run: the train state and the resolved config, in one `Composite`.

Orbax writes each step into a temporary folder and renames it when complete, so the latest
step it lists is always a whole checkpoint.
"""
from __future__ import annotations

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp


def manager(directory, *, max_to_keep: int = 3, save_interval_steps: int = 1,
            read_only: bool = False) -> ocp.CheckpointManager:
    """A `CheckpointManager` over `directory` (created unless read_only)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
        create=not read_only, read_only=read_only)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_names=("state", "config"))


def save(mngr: ocp.CheckpointManager, step: int, state, config, *, force: bool = False) -> bool:
    """Save `state` and `config` at `step` (asynchronously); returns whether a save started."""
    return mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(json.loads(config.to_json()))), force=force)


def restore_state(mngr: ocp.CheckpointManager, template_state, step: int | None = None):
    """Restore the train state at `step` (default: latest) into the structure and shardings of
    `template_state` (concrete or abstract arrays)."""
    step = mngr.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_state)
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    return restored.state


def restore_config(mngr: ocp.CheckpointManager, step: int | None = None) -> ml_collections.ConfigDict:
    """The config a checkpoint was written with."""
    step = mngr.latest_step() if step is None else step
    restored = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return ml_collections.ConfigDict(restored.config)
