"""The training XLA flags: added only where they apply and never over the user's choice, and
a train step computes the same loss and update with them as without."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ifes_jax import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_training_flags_are_added_unless_the_user_chose():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    xla_flags.use_training_flags(env)
    if xla_flags.training_flags_apply():
        assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2",
                                            *xla_flags.TRAINING_CPU_FLAGS]
    else:
        assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
    mine = {"XLA_FLAGS": f"{xla_flags.YNN_FLAG}=individual_convolution"}
    xla_flags.use_training_flags(mine)
    assert mine["XLA_FLAGS"] == f"{xla_flags.YNN_FLAG}=individual_convolution"
    opted_out = {"IFES_JAX_DEFAULT_XLA": "1"}
    xla_flags.use_training_flags(opted_out)
    assert "XLA_FLAGS" not in opted_out


STEP = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, {root!r})
from configs import quickstart
from ifes_jax import train
from ifes_jax.data import synthetic
config = quickstart.get_config()
state = train.create_train_state(config, jax.random.key(0), 32)
ir, vis = synthetic.synthetic_pairs(0, 2, 32, 32)
state, metrics = train.make_train_step(config)(state, {{"ir": jnp.asarray(ir[..., None]), "vis": jnp.asarray(vis[..., None])}})
kernel = np.asarray(state.params["ivif_3"]["kernel"]).ravel()[:64].tolist()
print(json.dumps({{"loss": float(metrics["loss"]), "kernel": kernel}}))
"""


def _step(flags):
    env = dict(os.environ, XLA_FLAGS=flags, IFES_JAX_DEFAULT_XLA="1")
    out = subprocess.run([sys.executable, "-c", STEP.format(root=ROOT)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_train_step_is_the_same_with_the_training_flags():
    if not xla_flags.training_flags_apply():  # requirements.txt pins a jaxlib that knows them
        pytest.skip("this jaxlib does not know the training flags, so they are never set")
    default, flagged = _step(""), _step(" ".join(xla_flags.TRAINING_CPU_FLAGS))
    np.testing.assert_allclose(flagged["loss"], default["loss"], rtol=1e-5)
    np.testing.assert_allclose(flagged["kernel"], default["kernel"], rtol=1e-4, atol=1e-6)
