"""Orbax checkpoints of a run: the train state, the data iterator's state and the resolved
config, in one `args.Composite`.

Orbax writes each step into a temporary folder and renames it when complete, so the latest
step it lists is always a whole checkpoint.
"""
from __future__ import annotations

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

ITEMS = ("state", "data", "config")


def manager(directory, *, keep: int = 3, keep_best: int = 0,
            read_only: bool = False) -> ocp.CheckpointManager:
    """A `CheckpointManager` over `directory` (created unless read_only) that keeps the latest
    `keep` checkpoints and, with keep_best > 0, also the `keep_best` lowest by `val_loss`.

    The two are separate preservation policies: `best_fn` with `max_to_keep` alone would keep
    only the best n, and could delete the newest checkpoint that a resume needs.
    """
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    if keep_best > 0:
        policies.append(ocp.checkpoint_managers.BestN(
            get_metric_fn=lambda metrics: -metrics["val_loss"], n=keep_best,
            keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        create=not read_only, read_only=read_only)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=ITEMS)


def save(mngr: ocp.CheckpointManager, step: int, state, config, data_iterator=None, *,
         metrics=None, force: bool = False) -> bool:
    """Save at `step` (asynchronously; `metrics` rank it for keep_best); returns whether a
    save started."""
    items = {"state": ocp.args.StandardSave(state),
             "config": ocp.args.JsonSave(json.loads(config.to_json_best_effort()))}
    if data_iterator is not None:
        import grain  # only training checkpoints carry an iterator
        items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)


def restore(mngr: ocp.CheckpointManager, template_state, data_iterator=None, step=None):
    """The train state at `step` (default: latest), in the structure and shardings of
    `template_state` (concrete or abstract arrays); `data_iterator`, if given, is set to the
    saved position in place."""
    step = mngr.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_state)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
        import grain
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return mngr.restore(step, args=ocp.args.Composite(**items)).state


def restore_params(mngr: ocp.CheckpointManager, template_params, step=None):
    """The model parameters alone of the train state at `step` (default: latest), in the
    structure, dtypes and shardings of `template_params` (abstract arrays): no optimizer state
    is read, so inference needs no optimizer."""
    step = mngr.latest_step() if step is None else step
    item = {"params": template_params}
    state = ocp.args.PyTreeRestore(item=item, partial_restore=True,
                                   restore_args=ocp.checkpoint_utils.construct_restore_args(item))
    return mngr.restore(step, args=ocp.args.Composite(state=state)).state["params"]


def restore_config(mngr: ocp.CheckpointManager, step: int | None = None) -> ml_collections.ConfigDict:
    """The config a checkpoint was written with."""
    step = mngr.latest_step() if step is None else step
    restored = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return ml_collections.ConfigDict(restored.config)
