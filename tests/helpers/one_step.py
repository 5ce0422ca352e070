"""Run in a subprocess with N fake CPU devices: one step of each data-parallel wrapper on a
global batch of two images per device, against the single-device step on the same batch.
Prints the max differences of the parameters, the loss and (relative) the gradient norm."""
import json
import sys

import jax
import numpy as np

from ifes_jax import parallel, train
from ifes_jax.data import synthetic
from tests.helpers.tiny_config import tiny_config

config = tiny_config()
config.optim.learning_rate = 1e-3
ir, vis = synthetic.synthetic_pairs(0, 2 * jax.device_count(), 32, 32)
batch = {"ir": ir[..., None], "vis": vis[..., None]}
fresh = lambda: train.create_train_state(config, jax.random.key(0), 32)
reference, ref_metrics = train.make_train_step(config)(fresh(), batch)  # same compiler options
out = {"devices": jax.device_count()}
for kind in ("shard_map", "pmap"):
    runner = parallel.make_runner(kind, train.per_device_step(config))
    state, metrics = runner.step(runner.place_state(fresh()), runner.place_batch(batch))
    state, metrics = runner.single_copy(state), runner.single_copy(metrics)
    out[kind] = max(float(np.max(np.abs(a - b))) for a, b in
                    zip(jax.tree.leaves(reference.params), jax.tree.leaves(state.params)))
    out[kind + "_loss"] = abs(float(metrics["loss"]) - float(ref_metrics["loss"]))
    # Adam's update hides a gradient scaled by the device count (psum for pmean); its norm does not
    out[kind + "_grad_norm"] = abs(float(metrics["grad_norm"]) / float(ref_metrics["grad_norm"]) - 1)
    out[kind + "_step"] = int(state.step)
json.dump(out, sys.stdout)
