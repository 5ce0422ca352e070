"""The train step's compiler options: given only where they apply and never over the user's
choice, they move its convolutions off YNNPACK, and the step computes the same loss and update
with them as without."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from ifes_jax import train
from ifes_jax.cpu import xla_flags
from ifes_jax.data import synthetic

applies = pytest.mark.skipif(not xla_flags.training_options_apply(),
                             reason="this jaxlib does not know the options, so they are never given")


def test_options_are_given_only_where_they_apply():
    options = xla_flags.training_compiler_options(environ={}, platform="cpu")
    assert options == (xla_flags.TRAINING_CPU_OPTIONS if xla_flags.training_options_apply() else {})
    assert xla_flags.training_compiler_options(environ={}, platform="gpu") == {}
    mine = {"XLA_FLAGS": f"{xla_flags.YNN_FLAG}=individual_convolution"}
    assert xla_flags.training_compiler_options(environ=mine, platform="cpu") == {}
    opted_out = {"IFES_JAX_DEFAULT_XLA": "1"}
    assert xla_flags.training_compiler_options(environ=opted_out, platform="cpu") == {}


def _compiled_step(options):
    config = quickstart.get_config()
    config.model.conv_backend = "xla"  # the options choose between XLA's convolution paths
    state = train.create_train_state(config, jax.random.key(0), 32)
    ir, vis = synthetic.synthetic_pairs(0, 2, 32, 32)
    batch = {"ir": jnp.asarray(ir[..., None]), "vis": jnp.asarray(vis[..., None])}
    compiled = jax.jit(train.per_device_step(config)).lower(state, batch).compile(
        compiler_options=options)
    return compiled, state, batch


def _convolutions(hlo_text):
    """(convolutions in all, those inside YNNPACK fusions) of a compiled module's text."""
    ynn = set(re.findall(r"kind=kCustom, calls=(%[\w.\-]+)", hlo_text))
    total = inside = 0
    computation = None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?(%[\w.\-]+) ", line)
        if header:
            computation = header.group(1)
        elif " convolution(" in line:
            total += 1
            inside += computation in ynn
    return total, inside


@applies
def test_options_move_the_step_convolutions_off_ynnpack_and_keep_the_step_the_same():
    """One test, so that each of the two programs is compiled once."""
    if jax.default_backend() != "cpu":
        pytest.skip("CPU options")
    default, optioned = _compiled_step({}), _compiled_step(xla_flags.TRAINING_CPU_OPTIONS)
    default_total, default_ynn = _convolutions(default[0].as_text())
    total, ynn = _convolutions(optioned[0].as_text())
    assert default_ynn > 0  # this jaxlib's default: YNNPACK convolutions
    assert total >= default_total > 0 and ynn == 0
    results = []
    for step, state, batch in (default, optioned):
        new_state, metrics = step(state, batch)
        results.append((float(metrics["loss"]), np.asarray(new_state.params["ivif_3"]["kernel"])))
    (loss_a, kernel_a), (loss_b, kernel_b) = results
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5)
    # Adam's first update is about ±lr per weight whatever the gradient's size: it must agree
    # to 1 % of the learning rate (a gradient near 0 may round differently on the two paths)
    lr = quickstart.get_config().optim.learning_rate
    np.testing.assert_allclose(kernel_b, kernel_a, rtol=0, atol=0.01 * lr)
