"""Orbax checkpoints of a run: the train state, the data iterator's state, the resolved config
and a digest of the state's arrays, in one `args.Composite`.

Orbax writes each step into a temporary folder and renames it when complete, so the latest
step it lists is always a whole checkpoint. Orbax checks no array data on restore, so each
checkpoint also records the SHA-256 of the bytes of the parameters, the optimizer state and
the step (`digest`), and a restore that reads other bytes is refused (`CorruptCheckpoint`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from ifes_jax.errors import InputError

ITEMS = ("state", "data", "config", "digest")


class CorruptCheckpoint(InputError):
    """A checkpoint's array data differ from the digest saved with it."""


def tree_digest(tree) -> str:
    """SHA-256 over every array of `tree` (dtype, shape and bytes, in tree order), from this
    process's copy of each (the state is replicated)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)
        a = np.ascontiguousarray(jax.device_get(leaf))
        if a.dtype.kind in "iub":  # integers by value: a step saved as int32 restores as int64
            a = a.astype(np.int64)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def state_digest(state) -> dict:
    return {"step": tree_digest(state.step), "params": tree_digest(state.params),
            "opt_state": tree_digest(state.opt_state)}


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
             "config": ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
             "digest": ocp.args.JsonSave(state_digest(state))}
    if data_iterator is not None:
        import grain  # only training checkpoints carry an iterator
        items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)


def restore(mngr: ocp.CheckpointManager, template_state, data_iterator=None, step=None):
    """The train state at `step` (default: latest), in the structure and shardings of
    `template_state` (concrete or abstract arrays); `data_iterator`, if given, is set to the
    saved position in place."""
    step = mngr.latest_step() if step is None else step
    check_architecture(mngr, step, template_state.params)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_state)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
        import grain
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    state = mngr.restore(step, args=ocp.args.Composite(**items)).state
    expected = saved_digest(mngr, step)
    for part in ("step", "params", "opt_state"):
        _verify(mngr, step, part, getattr(state, part), expected)
    return state


def check_architecture(mngr: ocp.CheckpointManager, step: int, template_params) -> None:
    """Refuse, from the checkpoint's metadata and before any array is read, parameters whose
    names or shapes differ from `template_params`' (a checkpoint of another architecture: a
    restore that fails midway leaves orbax threads printing tracebacks into the output)."""
    folder = os.path.join(str(mngr.directory), str(step))
    stored = ocp.PyTreeCheckpointer().metadata(os.path.join(folder, "state"))
    stored = getattr(stored, "item_metadata", stored)
    stored = getattr(stored, "tree", stored)["params"]
    shapes = lambda tree: {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf
                           in jax.tree_util.tree_flatten_with_path(tree)[0]}
    have, want = shapes(stored), shapes(template_params)
    for name in sorted(set(have) | set(want)):
        if have.get(name) != want.get(name):
            raise InputError(f"{folder}: does not fit the architecture of this config (params"
                             f"{name}: stored {have.get(name, 'nothing')}, the config's "
                             f"{want.get(name, 'nothing')})")


def saved_digest(mngr: ocp.CheckpointManager, step: int) -> dict | None:
    """The digest saved with checkpoint `step`, or None for a checkpoint written before digests."""
    if not os.path.isdir(os.path.join(str(mngr.directory), str(step), "digest")):
        logging.warning("%s/%d has no digest (an older checkpoint): its arrays are not verified",
                        mngr.directory, step)
        return None
    return dict(mngr.restore(step, args=ocp.args.Composite(digest=ocp.args.JsonRestore())).digest)


def _verify(mngr, step, part, tree, expected):
    if expected is not None and tree_digest(tree) != expected[part]:
        raise CorruptCheckpoint(f"{mngr.directory}/{step}: the {part} arrays differ from the digest "
                                "saved with them (a corrupted checkpoint)")

def restore_params(mngr: ocp.CheckpointManager, template_params, step=None):
    """The model parameters alone of the train state at `step` (default: latest), in the
    structure, dtypes and shardings of `template_params` (abstract arrays): no optimizer state
    is read, so inference needs no optimizer."""
    step = mngr.latest_step() if step is None else step
    check_architecture(mngr, step, template_params)
    item = {"params": template_params}
    state = ocp.args.PyTreeRestore(item=item, partial_restore=True,
                                   restore_args=ocp.checkpoint_utils.construct_restore_args(item))
    params = mngr.restore(step, args=ocp.args.Composite(state=state)).state["params"]
    _verify(mngr, step, "params", params, saved_digest(mngr, step))
    return params


def guarded(where: str, what: str, read):
    """`read()`, with any failure of orbax, tensorstore or the config as one line naming the
    checkpoint `where`: a shape that differs from the config's architecture, or unreadable
    data (`CorruptCheckpoint` and other InputErrors pass as they are)."""
    try:
        return read()
    except InputError:
        raise
    except Exception as exc:  # orbax and tensorstore raise many types for one bad file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        if "shape" in first.lower() and what in ("parameters", "state"):
            raise InputError(f"{where}: does not fit the architecture of this config "
                             f"({first})") from None
        raise InputError(f"{where}: unreadable {what} ({type(exc).__name__}: {first})") from None


def restore_config(mngr: ocp.CheckpointManager, step: int | None = None) -> ml_collections.ConfigDict:
    """The config a checkpoint was written with."""
    step = mngr.latest_step() if step is None else step
    restored = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return ml_collections.ConfigDict(restored.config)
