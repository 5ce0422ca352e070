"""Durability: exact resume after a kill, SIGTERM, SIGKILL during a save, the non-finite guard,
and the preservation policies of the checkpoint manager."""
import json
import os
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifes_jax import checkpoint, train
from tests.test_parallel import ROOT, _env, _final_params, _train_cmd
from tests.helpers.tiny_config import tiny_config


def _start(workdir, *overrides):
    """scripts/train.py in the background, its output in a log file (a full pipe would block it)."""
    log = open(f"{workdir}.log", "w")
    proc = subprocess.Popen(_train_cmd(workdir, *overrides), cwd=ROOT, env=_env(), stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    proc.log_path = log.name
    return proc


def _output(proc):
    with open(proc.log_path) as f:
        return f.read()


def _wait_for(predicate, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early:\n{_output(proc)[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out:\n{_output(proc)[-3000:]}")


def _steps(workdir):
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


def _assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    workdir = tmp_path / "killed"
    proc = _start(workdir, "--config.train.steps=1000", "--config.train.checkpoint_every=4")
    try:
        _wait_for(lambda: _steps(workdir) and not any(
            "tmp" in d for d in os.listdir(workdir / "checkpoints")), proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), read_only=True)
    first = mngr.latest_step()
    assert first is not None and first % 4 == 0
    config = tiny_config(steps=first + 4, checkpoint_every=4)
    resumed = train.train_and_evaluate(config, str(workdir))
    straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
    _assert_same_params(resumed.params, straight.params)
    # the data iterator resumed at the next batch: both runs end at the same position
    for d in (workdir, tmp_path / "straight"):
        with open(os.path.join(d, "checkpoints", str(first + 4), "data", "process_0-of-1.json")) as f:
            assert json.load(f)["next_index"] == first + 4


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    workdir = tmp_path / "preempted"
    proc = _start(workdir, "--config.train.steps=100000", "--config.train.checkpoint_every=100000",
                  "--config.train.log_every=1")
    metrics = workdir / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    out = _output(proc)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM" in out
    (step,) = _steps(workdir)
    assert step >= 3
    resumed = train.train_and_evaluate(tiny_config(steps=step + 2), str(workdir))
    assert int(resumed.step) == step + 2


def test_sigkill_during_saves_leaves_a_restorable_checkpoint(tmp_path):
    workdir = tmp_path / "hard"
    proc = _start(workdir, "--config.train.steps=100000", "--config.train.checkpoint_every=1",
                  "--config.train.keep_checkpoints=2")
    try:  # with a save every step, the kill lands during or right next to a save
        _wait_for(lambda: len(_steps(workdir)) >= 2, proc)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # and a checkpoint that was being written when the process died, as orbax leaves it
    partial = workdir / "checkpoints" / "99999.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half_written").write_bytes(b"\0" * 100)
    config = tiny_config()
    params, latest = _final_params(workdir, config)
    assert latest < 99999
    assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))
    resumed = train.train_and_evaluate(tiny_config(steps=latest + 1, checkpoint_every=1), str(workdir))
    assert int(resumed.step) == latest + 1


def _poisoned(monkeypatch, bad_step):
    """Make the batch of step `bad_step` (1-based) contain NaN."""
    original = train.make_dataset

    def make_dataset(config, local_batch):
        ds = original(config, local_batch)
        return ds.map_with_index(lambda i, b: {k: np.full_like(v, np.nan) for k, v in b.items()}
                                 if i == bad_step - 1 else b)
    monkeypatch.setattr(train, "make_dataset", make_dataset)


def test_a_nan_batch_stops_the_run_naming_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    _poisoned(monkeypatch, bad_step=5)
    workdir = str(tmp_path / "nan")
    with pytest.raises(train.NonFiniteLossError) as err:
        train.train_and_evaluate(tiny_config(steps=10, checkpoint_every=2, log_every=1), workdir)
    message = str(err.value)
    assert "non-finite loss at step 5" in message and "loss_fusion=" in message and "\n" not in message
    assert max(_steps(workdir)) == 4
    params, _ = _final_params(workdir, tiny_config())
    assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))


def test_skip_policy_drops_the_bad_update_and_carries_on(tmp_path, monkeypatch):
    _poisoned(monkeypatch, bad_step=3)
    config = tiny_config(steps=6, nonfinite="skip", log_every=6)
    state = train.train_and_evaluate(config, str(tmp_path / "skip"))
    assert int(state.step) == 6
    assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(state.params))
    rows = [json.loads(line) for line in open(tmp_path / "skip" / "metrics.jsonl")]
    assert rows[-1]["nonfinite"] == 1.0


def test_a_non_finite_step_leaves_parameters_and_optimizer_state_unchanged():
    config = tiny_config()
    state = train.create_train_state(config, jax.random.key(0), 16)
    bad = {"ir": jnp.full((1, 16, 16, 1), jnp.nan), "vis": jnp.zeros((1, 16, 16, 1))}
    new, metrics = jax.jit(train.per_device_step(config))(state, bad)
    assert float(metrics["nonfinite"]) == 1.0 and int(new.step) == 1
    _assert_same_params(new.params, state.params)
    _assert_same_params(new.opt_state, state.opt_state)


def test_best_checkpoints_survive_alongside_the_latest(tmp_path):
    config = tiny_config()
    state = train.create_train_state(config, jax.random.key(0), 16)
    mngr = checkpoint.manager(tmp_path / "ck", keep=2, keep_best=1)
    val_losses = {1: 0.5, 2: 0.1, 3: 0.4, 4: 0.3, 5: 0.6}
    for step, loss in val_losses.items():
        checkpoint.save(mngr, step, state, config, metrics={"val_loss": loss})
        mngr.wait_until_finished()
    assert sorted(mngr.all_steps()) == [2, 4, 5]  # the best (2) and the latest two
    mngr.close()
