"""The `IFESNet` a config describes, with the convolution this platform runs best (the one
`ifes_jax.cpu.conv_for` picks for `model.conv_backend`): the one place where the network
meets a backend."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ifes_jax import cpu, model


def from_config(model_config, half_precision: bool = False) -> model.IFESNet:
    """An `IFESNet` from the `config.model` block of a config file; `half_precision` computes
    in bfloat16 (parameters stay in `param_dtype`). The convolution is the one
    `ifes_jax.cpu.conv_for` picks for `model.conv_backend` on this platform."""
    return model.IFESNet(
        num_stages=model_config.num_stages,
        hierarchical_connection=model_config.hierarchical_connection,
        interactive=model_config.interactive,
        width_multiplier=model_config.width_multiplier,
        activation=model_config.activation,
        weight_activation=model_config.weight_activation,
        dtype=jnp.bfloat16 if half_precision else jnp.dtype(model_config.dtype),
        param_dtype=jnp.dtype(model_config.param_dtype),
        remat=model_config.get("remat", False),
        conv=cpu.conv_for(model_config.get("conv_backend", "auto")),
    )


def init_params(net: model.IFESNet, rng, image_size: int = 16):
    """Fresh parameters of `net` from `rng` (the network is traced on two image_size² images).
    Compiled without XLA's optimisation passes: the program runs once, and optimising its
    unrolled random-number code costs seconds (the values are the same to float rounding).
    Under a transform (`jax.eval_shape`, `jit`, ...) it is traced as part of the caller."""
    dummy = jnp.zeros((1, image_size, image_size, 1), jnp.float32)

    def init(key):
        return net.init(key, dummy, dummy)["params"]
    if isinstance(rng, jax.core.Tracer):
        return init(rng)
    return jax.jit(init, compiler_options={"xla_backend_optimization_level": 0})(rng)
