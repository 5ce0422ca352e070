"""Data-parallel and multi-host training against the single-device step (fake CPU devices)."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import portpicker

from ifes_jax import checkpoint, parallel, train
from tests.helpers.tiny_config import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices=1, **extra):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def test_pmap_and_shard_map_steps_equal_the_single_device_step():
    """Four devices, two images each: the per-device mean and the mean over devices both count."""
    devices = 4
    result = subprocess.run([sys.executable, "-m", "tests.helpers.one_step"], cwd=ROOT,
                            env=_env(devices), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["devices"] == devices
    for kind in ("shard_map", "pmap"):
        assert out[kind] < 1e-5, out
        assert out[kind + "_loss"] < 1e-6 and out[kind + "_step"] == 1
        assert out[kind + "_grad_norm"] < 1e-5, out


def test_batch_not_divisible_by_devices_is_a_config_error():
    code = ("from ifes_jax import parallel\n"
            "try:\n    parallel.check_batch_size(3, 'shard_map')\n"
            "except parallel.ConfigError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(2),
                            capture_output=True, text=True, timeout=120)
    assert "train.batch_size=3 does not split evenly over the 2 devices" in result.stdout


def _final_params(workdir, config):
    template = train.create_train_state(config, jax.random.key(0), 32)
    mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), read_only=True)
    return checkpoint.restore(mngr, template).params, mngr.latest_step()


def _train_cmd(workdir, *overrides):
    return [sys.executable, os.path.join(ROOT, "scripts", "train.py"),
            "--config", os.path.join(ROOT, "tests", "helpers", "tiny_config.py"),
            "--workdir", str(workdir), *overrides]


def test_two_processes_train_like_one_process_over_the_same_global_batch(tmp_path):
    steps = ["--config.train.steps=3", "--config.train.batch_size=2",
             "--config.train.checkpoint_every=100"]
    port = portpicker.pick_unused_port()
    procs = [subprocess.Popen(_train_cmd(tmp_path / "multi", *steps), cwd=ROOT,
                              env=_env(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                       JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=i),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    config = tiny_config(steps=3, batch_size=2, checkpoint_every=100)
    single = train.train_and_evaluate(config, str(tmp_path / "single"))
    multi, step = _final_params(tmp_path / "multi", config)
    assert step == 3
    assert os.listdir(tmp_path / "multi" / "checkpoints") == ["3"]
    data_states = os.listdir(tmp_path / "multi" / "checkpoints" / "3" / "data")
    assert sorted(f for f in data_states if f.endswith(".json")) == ["process_0-of-2.json",
                                                                      "process_1-of-2.json"]
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(multi)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_run_saved_on_two_devices_resumes_on_one(tmp_path):
    """Six steps on two devices; the same run cut back to its step-4 checkpoint resumes on one
    device and ends where it did."""
    result = subprocess.run(_train_cmd(tmp_path / "straight", "--config.train.steps=6",
                                       "--config.train.checkpoint_every=2"),
                            cwd=ROOT, env=_env(2), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "6")
    resumed = train.train_and_evaluate(tiny_config(steps=6, checkpoint_every=2),
                                       str(tmp_path / "resumed"))
    straight, step = _final_params(tmp_path / "straight", tiny_config())
    assert int(resumed.step) == step == 6
    # against the same run on two devices throughout (a one-device run from the start may
    # differ more: the loss's max/selection kinks can flip under a different summation order)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_initialize_distributed_is_a_no_op_without_a_coordinator(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    assert parallel.initialize_distributed() is False
