"""Data parallelism: one per-device train step, run over every device by a thin wrapper.

The step `(state, batch, axis_name) -> (state, metrics)` averages gradients and metrics with
`lax.pmean` over the named data axis. Two wrappers run it:

* `shard_map` (default): `jax.shard_map` under `jit` over a 1-D `Mesh` of all devices; the
  state is replicated, the batch split on its first axis. It spans hosts: each process feeds
  its own rows and the global batch is assembled with `make_array_from_process_local_data`.
* `pmap`: `jax.pmap` over the local devices; the state carries a leading device axis and the
  batch is reshaped to (devices, batch / devices, ...). Single host only.

A `Runner` hides the layout difference from the training loop: it places the state and the
batches, runs the step, and hands back a single-copy state for checkpoints and images.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ifes_jax import cpu
from ifes_jax.errors import ConfigError

AXIS = "data"
KINDS = ("shard_map", "pmap")


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Join a multi-process run (`jax.distributed.initialize`) when a coordinator is given by
    argument or by JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; returns
    whether it did. On CPU the collectives go through gloo."""
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if not coordinator_address:
        return False
    if num_processes is None and "JAX_NUM_PROCESSES" in env:
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in env:
        process_id = int(env["JAX_PROCESS_ID"])
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True


def check_batch_size(global_batch: int, kind: str) -> int:
    """The per-process batch; a clear error if the batch does not split over the devices."""
    if kind not in KINDS:
        raise ConfigError(f"train.parallel must be one of {KINDS}, got {kind!r}")
    if kind == "pmap" and jax.process_count() > 1:
        raise ConfigError("train.parallel='pmap' runs on one host; use 'shard_map' over several")
    devices = jax.device_count()
    if global_batch % devices:
        raise ConfigError(f"train.batch_size={global_batch} does not split evenly over the "
                          f"{devices} devices: use a multiple of {devices}")
    return global_batch // jax.process_count()


@dataclasses.dataclass
class Runner:
    kind: str
    step: Callable  # (placed state, placed batch) -> (placed state, metrics)
    mesh: Mesh

    @property
    def batch_sharding(self):
        return NamedSharding(self.mesh, P(AXIS))

    def place_state(self, state):
        if self.kind == "pmap":  # one copy per device along a leading axis
            n = jax.local_device_count()
            stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), state)
            return jax.device_put(stacked, self.batch_sharding)
        return jax.device_put(state, NamedSharding(self.mesh, P()))

    def single_copy(self, tree):
        """The state (or metrics) without the pmap device axis: for checkpoints and logs."""
        return jax.tree.map(lambda x: x[0], tree) if self.kind == "pmap" else tree

    def local_copy(self, tree):
        """Process-local arrays of a replicated tree (usable by this process alone)."""
        tree = self.single_copy(tree)
        return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)

    def place_batch(self, local_batch):
        """A global batch from this process's rows (numpy or already on the devices)."""
        if self.kind == "pmap":
            n = jax.local_device_count()
            return jax.tree.map(lambda x: jnp.reshape(x, (n, x.shape[0] // n) + x.shape[1:]),
                                local_batch)
        if jax.process_count() == 1:
            return jax.device_put(local_batch, self.batch_sharding)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(x)),
            local_batch)


def make_runner(kind: str, per_device_step: Callable[..., Any]) -> Runner:
    """Wrap `per_device_step(state, batch, axis_name=...)` for every device, donating the
    state's buffers."""
    mesh = Mesh(np.asarray(jax.devices()), (AXIS,))
    step = functools.partial(per_device_step, axis_name=AXIS)
    if kind == "pmap":
        mapped = jax.pmap(step, axis_name=AXIS)
    elif kind == "shard_map":
        # check_vma=False: the step averages gradients itself (pmean), as under pmap; with
        # varying-axis checks on, autodiff would also psum the gradients of the replicated
        # parameters.
        mapped = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()),
                               check_vma=False)
    else:
        raise ValueError(f"train.parallel must be one of {KINDS}, got {kind!r}")
    # pmap is jit over shard_map in this JAX: the outer jit gives both the compiler options
    wrapped = jax.jit(mapped, donate_argnums=0, compiler_options=cpu.compiler_options())
    return Runner(kind, wrapped, mesh)
