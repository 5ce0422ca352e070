"""Training: optimizer, weight decay, the pure train step, and a whole run with resume."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ifes_jax import train
from ifes_jax.data import synthetic
from tests.helpers.tiny_config import tiny_config


def test_kernel_mask_selects_conv_kernels_only():
    state = train.create_train_state(tiny_config(), jax.random.key(0), 16)
    mask = train.kernel_mask(state.params)
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    assert len(flat) == 2 * 22
    for path, selected in flat:
        assert selected == (path[-1].key == "kernel")


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_weight_decay_touches_kernels_and_not_biases(mode):
    config = tiny_config()
    config.optim.weight_decay_mode = mode
    lr, wd = config.optim.learning_rate, config.optim.weight_decay
    params = {"conv": {"kernel": jnp.asarray([[0.5, -2.0], [1e-3, 3.0]]), "bias": jnp.asarray([1.0, -1.0])}}
    tx = train.make_optimizer(config.optim, 10)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    kernel = np.asarray(params["conv"]["kernel"])
    if mode == "decoupled":  # AdamW: -lr * wd * w, outside Adam
        expected = -lr * wd * kernel
    else:  # coupled: Adam's first step on g = wd * w is -lr * g / (|g| + 1e-8)
        g = wd * kernel
        expected = -lr * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(updates["conv"]["kernel"], expected, rtol=1e-5)
    np.testing.assert_array_equal(updates["conv"]["bias"], 0.0)


def test_warmup_cosine_schedule_follows_its_formula():
    config = tiny_config()
    config.optim.update(schedule="warmup_cosine", warmup_steps=10, learning_rate=1e-3)
    fn = train.learning_rate_schedule(config.optim, 110)
    for step in (0, 5, 10, 60, 110):
        if step < 10:
            expected = 1e-3 * step / 10
        else:
            expected = 1e-3 * 0.5 * (1 + np.cos(np.pi * (step - 10) / 100))
        np.testing.assert_allclose(float(fn(step)), expected, rtol=1e-5, atol=1e-12)


def _np_adam_l2_clipped(w, grads, lr, wd, clip, b1=0.9, b2=0.999, eps=1e-8):
    """Clip by global norm, add wd·w, then Adam, written out from the formulas (NumPy)."""
    m = v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        if clip > 0:
            g = g * min(1.0, clip / np.linalg.norm(g))
        g = g + wd * w
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return w


@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_gradient_clipping_follows_its_formula(clip):
    # two steps of very different norms: Adam's second update depends on their ratio, which
    # clipping changes (both become norm 1), so an ignored clip would fail here
    config = tiny_config()
    config.optim.update(grad_clip_norm=clip, weight_decay=0.5, weight_decay_mode="l2",
                        learning_rate=0.1, schedule="constant")
    tx = train.make_optimizer(config.optim, 10)
    w = np.asarray([1.0, -1.0, 0.5, 2.0])
    grads = [np.asarray([30.0, 40.0, 0.0, 0.0]), np.asarray([0.3, -0.1, 0.2, 0.0])]
    params = {"conv": {"kernel": jnp.asarray(w, jnp.float32)}}
    opt_state = tx.init(params)
    for g in grads:
        updates, opt_state = tx.update({"conv": {"kernel": jnp.asarray(g, jnp.float32)}}, opt_state, params)
        params = optax.apply_updates(params, updates)
    expected = _np_adam_l2_clipped(w, grads, 0.1, 0.5, clip)
    np.testing.assert_allclose(params["conv"]["kernel"], expected, rtol=1e-5, atol=1e-6)
    other = _np_adam_l2_clipped(w, grads, 0.1, 0.5, 1.0 - clip)  # the other setting differs
    assert np.abs(other - expected).max() > 1e-2


def test_train_steps_lower_the_loss_on_a_fixed_batch():
    config = tiny_config()  # Adam at a constant 1e-3; the other tests' program (32², batch 2)
    ir, vis = synthetic.synthetic_pairs(0, 2, 32, 32)
    batch = {"ir": ir[..., None], "vis": vis[..., None]}
    state = train.create_train_state(config, jax.random.key(0), 32)
    step = train.make_train_step(config)
    state, first = step(state, batch)
    for _ in range(60):
        state, metrics = step(state, batch)
    assert int(state.step) == 61
    assert float(metrics["loss"]) < 0.7 * float(first["loss"])
    for key in ("loss_ir", "loss_vis", "loss_fusion", "loss_map", "grad_norm", "learning_rate"):
        assert np.isfinite(float(metrics[key]))


def test_synthetic_pairs_are_deterministic_and_in_range():
    a, b = synthetic.synthetic_pair(5, 64, 80), synthetic.synthetic_pair(5, 64, 80)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], synthetic.synthetic_pair(6, 64, 80)[0])
    for x in a:
        assert x.shape == (64, 80) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    ir, vis = a
    # hot targets: the hottest infrared pixels stand out well above the thermal background
    assert np.percentile(ir, 99.9) - np.median(ir) > 0.3


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _run_config(**overrides):
    """The tiny config of the runs below: 6 steps, checkpoints and samples every 3."""
    return tiny_config(**{"steps": 6, "checkpoint_every": 3, "sample_every": 3, **overrides})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final parameters of `_run_config()` run straight through."""
    return train.train_and_evaluate(_run_config(), str(tmp_path_factory.mktemp("straight"))).params


def _assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_train_and_evaluate_writes_its_outputs_and_resumes_exactly(tmp_path, uninterrupted):
    workdir = str(tmp_path / "resumed")
    train.train_and_evaluate(_run_config(steps=3), workdir)
    for name in ("config.json", "metrics.jsonl", "loss_curve.png", "samples/pair0_fused.png",
                 "samples/pair0_weight_ir.png", "samples/pair0_weight_vis.png",
                 "samples/grid_step000003.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]
    assert [r["step"] for r in _read(os.path.join(workdir, "metrics.jsonl"))] == [2, 3]
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 4, "loss": 0.')  # a kill mid-write: the cut line is dropped on resume

    resumed = train.train_and_evaluate(_run_config(), workdir)
    assert int(resumed.step) == 6
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
    rows = _read(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [2, 3, 4, 6]
    for key in ("loss", "loss_ir", "loss_vis", "loss_fusion", "loss_map", "grad_norm",
                "learning_rate", "steps_per_sec", "images_per_sec"):
        assert np.isfinite(rows[-1][key])
    _assert_same_params(uninterrupted, resumed.params)


def test_half_precision_runs_bfloat16_with_float32_state_and_agrees_with_float32():
    ir, vis = synthetic.synthetic_pairs(1, 2, 32, 32)
    batch = {"ir": ir[..., None], "vis": vis[..., None]}
    results = {}
    for half in (False, True):
        config = tiny_config()
        config.half_precision = half
        state = train.create_train_state(config, jax.random.key(0), 32)
        step = train.make_train_step(config)
        # the compiled program itself convolves in bfloat16 (or not at all, in float32)
        compiled = step.lower(state, batch).compile()
        hlo = compiled.as_text()
        convolutions = [line for line in hlo.splitlines()
                        if "custom_call_target=\"IfesConv" in line or " convolution(" in line]
        assert convolutions
        assert all(("bf16[" in line) == half for line in convolutions)
        new, metrics = compiled(state, batch)  # the program inspected above
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((new.params, new.opt_state))
                   if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating))
        results[half] = {k: float(v) for k, v in metrics.items()}
    # bfloat16 keeps 8 bits of mantissa: the loss terms agree to about 1 %
    for key in ("loss", "loss_fusion", "loss_ir", "loss_vis"):
        np.testing.assert_allclose(results[True][key], results[False][key], rtol=2e-2)


def _complete_checkpoints(workdir):
    from ifes_jax import checkpoint
    folder = os.path.join(workdir, "checkpoints")
    assert all(name.isdigit() for name in os.listdir(folder)), os.listdir(folder)  # no temporaries
    mngr = checkpoint.manager(folder, read_only=True)
    try:
        return sorted(mngr.all_steps())
    finally:
        mngr.close()


@pytest.mark.parametrize("fault", ["ctrl_c", "sample_write_fails"])
def test_the_loop_tears_down_however_it_ends(tmp_path, monkeypatch, fault, uninterrupted):
    """A fault right after the step-3 checkpoint was started: that checkpoint completes, the
    files and the data thread are closed, and a rerun resumes to the uninterrupted result."""
    import threading
    threads = set(threading.enumerate())
    config = _run_config()
    if fault == "ctrl_c":
        real_log = train.log
        def log(run, step, metrics):
            if step == 4:
                raise KeyboardInterrupt
            return real_log(run, step, metrics)
        monkeypatch.setattr(train, "log", log)
        expected = KeyboardInterrupt
    else:
        def write_samples(*args):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(train, "write_samples", write_samples)
        expected = OSError
    workdir = str(tmp_path / "run")
    with pytest.raises(expected):
        train.train_and_evaluate(config, workdir)
    assert _complete_checkpoints(workdir) == [3]
    assert [r["step"] for r in _read(os.path.join(workdir, "metrics.jsonl"))] == [2]
    new_threads = [t for t in set(threading.enumerate()) - threads if not t.daemon]
    for t in new_threads:  # orbax's asyncio worker may take a moment to finish after close()
        t.join(timeout=20)
    lingering = [t for t in new_threads if t.is_alive()]  # would block the interpreter's exit
    assert not lingering, lingering
    monkeypatch.undo()
    _assert_same_params(uninterrupted, train.train_and_evaluate(config, workdir).params)


def test_validation_runs_at_every_checkpoint_and_ranks_the_best(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for sub in ("ir", "vis"):
        os.makedirs(tmp_path / "val" / sub)
        for name in ("a", "b"):
            Image.fromarray(rng.integers(0, 255, (40, 36), dtype=np.uint8)).save(tmp_path / "val" / sub / f"{name}.png")
    config = tiny_config(steps=4, checkpoint_every=2, keep_best=1, keep_checkpoints=1)
    config.data.update(val_dir=str(tmp_path / "val"), val_size=32, cache_dir=str(tmp_path / "cache"))
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir))
    rows = _read(workdir / "metrics.jsonl")
    val_rows = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val_rows] == [2, 4]
    assert all(np.isfinite(r["val_loss_fusion"]) for r in val_rows)
    assert os.path.exists(workdir / "samples" / "val" / "grid_step000004.png")
    best = min(val_rows, key=lambda r: r["val_loss"])["step"]
    assert sorted(int(d) for d in os.listdir(workdir / "checkpoints")) == sorted({best, 4})


def test_a_train_state_template_comes_from_eval_shape_without_compiling():
    """`create_train_state` under `jax.eval_shape` (a restore template): the unoptimised init
    compile is skipped there, and the shapes are those of a real state."""
    template = jax.eval_shape(lambda: train.create_train_state(tiny_config(), jax.random.key(0), 32))
    real = train.create_train_state(tiny_config(), jax.random.key(0), 32)
    assert jax.tree.map(lambda x: x.shape, template.params) == jax.tree.map(lambda x: x.shape, real.params)
