"""Training: the optimizer, the pure train step and `train_and_evaluate(config, workdir)`."""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from ifes_jax import checkpoint, cpu, losses, model as model_lib, parallel
from ifes_jax.data import pipeline, synthetic
from ifes_jax.data.images import write_png
from ifes_jax.errors import ConfigError

SAMPLE_SEED = 10_000  # synthetic sample pairs come from seeds no training pool uses by default


def kernel_mask(params):
    """True for conv kernels, False for biases: weight decay touches kernels only (§IV.A)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def learning_rate_schedule(optim, total_steps: int) -> optax.Schedule:
    """constant, warmup_constant or warmup_cosine (cosine decay to 0 at total_steps)."""
    lr, warmup = optim.learning_rate, optim.warmup_steps
    if optim.schedule == "constant":
        return optax.constant_schedule(lr)
    if optim.schedule == "warmup_constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)], [warmup])
    if optim.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1))
    raise ConfigError(f"optim.schedule must be constant, warmup_constant or warmup_cosine, "
                      f"got {optim.schedule!r}")


def make_optimizer(optim, total_steps: int) -> optax.GradientTransformation:
    """Adam (β1 0.9) with weight decay on conv kernels: coupled L2 — the gradient of
    wd/2·‖w‖², as a TensorFlow kernel regulariser adds — or decoupled (AdamW)."""
    schedule = learning_rate_schedule(optim, total_steps)
    parts = [optax.clip_by_global_norm(optim.grad_clip_norm)] if optim.grad_clip_norm > 0 else []
    if optim.weight_decay_mode == "l2":
        parts += [optax.add_decayed_weights(optim.weight_decay, mask=kernel_mask),
                  optax.adam(schedule, b1=optim.b1, b2=optim.b2)]
    elif optim.weight_decay_mode == "decoupled":
        parts += [optax.adamw(schedule, b1=optim.b1, b2=optim.b2,
                              weight_decay=optim.weight_decay, mask=kernel_mask)]
    else:
        raise ConfigError(f"optim.weight_decay_mode must be l2 or decoupled, "
                          f"got {optim.weight_decay_mode!r}")
    return optax.chain(*parts)


def create_train_state(config, rng, image_size: int = 64) -> train_state.TrainState:
    """A fresh TrainState: parameters from `rng`, the optimizer from `config.optim`."""
    net = model_lib.from_config(config.model, half_precision=config.get("half_precision", False))
    dummy = jnp.zeros((1, image_size, image_size, 1), jnp.float32)
    params = jax.jit(net.init)(rng, dummy, dummy)["params"]
    tx = make_optimizer(config.optim, config.train.steps)
    return train_state.TrainState.create(apply_fn=net.apply, params=params, tx=tx)


def train_step(state, batch, *, loss_config, learning_rate_fn=None, axis_name=None):
    """One optimisation step on a batch {"ir", "vis"} of (B, H, W, 1) float32 crops.

    Pure: (state, batch) -> (state, metrics). With `axis_name`, gradients and metrics are
    averaged over that named data axis (pmap / shard_map); without, it is a plain step.
    A step whose loss or gradient is not finite leaves the parameters and optimizer state
    as they were (only the step counter advances) and reports `nonfinite` = 1.
    """
    def loss_fn(params):
        outputs = state.apply_fn({"params": params}, batch["ir"], batch["vis"])
        return losses.ifesnet_loss(outputs, batch["ir"], batch["vis"], loss_config)

    grads, terms = jax.grad(loss_fn, has_aux=True)(state.params)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        terms = jax.lax.pmean(terms, axis_name)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(terms["loss"]) & jnp.isfinite(grad_norm)
    updated = state.apply_gradients(grads=grads)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    metrics = dict(terms, grad_norm=grad_norm, nonfinite=1.0 - finite.astype(jnp.float32))
    if learning_rate_fn is not None:
        metrics["learning_rate"] = learning_rate_fn(state.step)
    return new_state.replace(step=state.step + 1), metrics


def per_device_step(config):
    """`train_step` bound to `config`: (state, batch, axis_name=None) -> (state, metrics)."""
    return functools.partial(
        train_step, loss_config=config.loss,
        learning_rate_fn=learning_rate_schedule(config.optim, config.train.steps))


def make_train_step(config):
    """The jit-compiled single-device train step for `config`, donating the old state (with
    the platform's training compiler options, `cpu.compiler_options`)."""
    return jax.jit(per_device_step(config), donate_argnums=0, compiler_options=cpu.compiler_options())


def fuse_fn(apply_fn):
    """jit-compiled (params, ir, vis) -> model outputs."""
    return jax.jit(lambda params, ir, vis: apply_fn({"params": params}, ir, vis))


# ----------------------------------------------------------------------------------- outputs

def sample_pairs(config):
    """The fixed synthetic pairs whose fusions are written during training."""
    size = config.train.sample_size
    return synthetic.synthetic_pairs(SAMPLE_SEED, config.train.num_samples, size, size)


def write_samples(folder, step, fuse, params, ir_NHW, vis_NHW):
    """Fused images and weight maps of the sample pairs, plus a grid PNG
    (rows: pairs; columns: IR, VIS, fused, W_ir, W_vis)."""
    out = jax.device_get(fuse(params, ir_NHW[..., None], vis_NHW[..., None]))
    rows = []
    for i in range(len(ir_NHW)):
        fused, w = out["fused"][i, ..., 0], out["weights"][i]
        write_png(os.path.join(folder, f"pair{i}_fused.png"), fused)
        write_png(os.path.join(folder, f"pair{i}_weight_ir.png"), np.clip(w[..., 0], 0, 1))
        write_png(os.path.join(folder, f"pair{i}_weight_vis.png"), np.clip(w[..., 1], 0, 1))
        rows.append(np.concatenate([ir_NHW[i], vis_NHW[i], fused, w[..., 0], w[..., 1]], axis=1))
    write_png(os.path.join(folder, f"grid_step{step:06d}.png"), np.concatenate(rows, axis=0))


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss_curve(metrics_path, png_path):
    """Loss terms against step (log scale) from metrics.jsonl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    for key in ("loss", "loss_ir", "loss_vis", "loss_fusion", "loss_map"):
        ax.plot(steps, [r[key] for r in rows], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


def _truncate_metrics(path, last_step):
    """Drop log lines after the checkpoint a run resumes from: those steps run again."""
    if not os.path.exists(path):
        return
    kept = [r for r in read_metrics(path) if r["step"] <= last_step]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)


# ------------------------------------------------------------------------------- the loop

class NonFiniteLossError(FloatingPointError):
    """A training step produced a non-finite loss or gradient (train.nonfinite = 'stop')."""


def make_source(config, *, folder=None, split=None, train_list=None):
    """Records of a split of a pairs folder (built as a tfds dataset in `data.cache_dir`);
    by default the training folder `data.dir`, or the synthetic pairs when it is unset."""
    data = config.data
    folder = data.dir if folder is None else folder
    if folder is None:
        return pipeline.synthetic_source(config.seed, data.synthetic_pairs, data.synthetic_size)
    from ifes_jax.data import tfds_pairs  # tensorflow-datasets is imported only for folders
    builder = tfds_pairs.prepare(
        folder, os.path.expanduser(data.cache_dir),
        train_list=data.train_list if train_list is None else train_list,
        train_fraction=data.train_fraction, mismatch=data.mismatch, split_seed=data.split_seed)
    return pipeline.tfds_source(builder, data.split if split is None else split)


def make_dataset(config, source, local_batch: int):
    data = config.data
    return pipeline.training_dataset(
        source, seed=config.seed, batch_size=local_batch, crop=data.crop_size, flips=data.flips,
        rotations=data.rotations, small_images=data.small_images,
        shard_index=jax.process_index(), shard_count=jax.process_count())


def validation_pairs(config):
    """Centre crops of the validation pairs, (N, S, S) float32 each, or None without val data."""
    data = config.data
    if data.val_dir is None:
        return None
    source = make_source(config, folder=data.val_dir, split=data.val_split,
                         train_list=data.val_train_list)
    crops = [pipeline.centre_crop(source[i], data.val_size)
             for i in range(min(len(source), data.val_pairs))]
    return np.stack([c[0] for c in crops]), np.stack([c[1] for c in crops])


def evaluate_loss(fuse, params, ir_NHW, vis_NHW, loss_config):
    """The loss terms averaged over pairs, one pair at a time (equal shapes: one compile)."""
    rows = []
    for ir, vis in zip(ir_NHW, vis_NHW):
        ir, vis = ir[None, ..., None], vis[None, ..., None]
        _, terms = losses.ifesnet_loss(fuse(params, ir, vis), ir, vis, loss_config)
        rows.append(jax.device_get(terms))
    return {f"val_{k}": float(np.mean([r[k] for r in rows])) for k in rows[0]}


class _StopRequest:
    """Set by SIGTERM (preemption): the loop saves a checkpoint and returns."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
    """Train IFESNet as `config` says over every device (and host), writing everything into
    `workdir`; resumes from the latest checkpoint there. Returns the final TrainState (a single
    copy). Only process 0 writes logs and images; every process takes part in checkpoints."""
    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    cfg_train = config.train
    local_batch = parallel.check_batch_size(cfg_train.batch_size, cfg_train.parallel)
    dataset = make_dataset(config, make_source(config), local_batch)  # bad data stops us here
    val = validation_pairs(config)
    is_main = jax.process_index() == 0
    if is_main:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    samples_ir, samples_vis = sample_pairs(config)

    runner = parallel.make_runner(cfg_train.parallel, per_device_step(config))
    state = runner.place_state(create_train_state(config, jax.random.key(config.seed),
                                                  config.data.crop_size))
    on_device = runner.batch_sharding if cfg_train.parallel == "shard_map" and jax.process_count() == 1 else None
    data_iter = pipeline.iterator(dataset, device=on_device, prefetch=config.data.prefetch)
    mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"),
                              keep=cfg_train.keep_checkpoints, keep_best=cfg_train.keep_best)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if mngr.latest_step() is not None:
        state = runner.place_state(checkpoint.restore(mngr, runner.single_copy(state), data_iter))
        if is_main:
            _truncate_metrics(metrics_path, int(runner.single_copy(state).step))
            print(f"resumed from {workdir}/checkpoints at step {int(runner.single_copy(state).step)}")
    start = int(runner.single_copy(state).step)

    fuse = fuse_fn(state.apply_fn)
    writer = SummaryWriter(os.path.join(workdir, "tensorboard")) if is_main else None
    clock = {"time": time.perf_counter(), "step": start}
    interval = []  # per-step metric rows since the last log line

    def write_row(row):
        if not is_main:
            return
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k != "step":
                writer.add_scalar(k, v, row["step"])

    def account(step, metrics):
        """Host side of step `step` (fetched after the next step was dispatched)."""
        row = {k: float(v) for k, v in jax.device_get(runner.single_copy(metrics)).items()}
        if row["nonfinite"]:
            terms = ", ".join(f"{k}={row[k]:.4g}" for k in ("loss", "loss_ir", "loss_vis",
                                                             "loss_fusion", "loss_map", "grad_norm"))
            if cfg_train.nonfinite == "stop":
                raise NonFiniteLossError(
                    f"non-finite loss at step {step}: {terms}; the update was not applied and the "
                    f"last checkpoint (step {mngr.latest_step()}) is kept")
            logging.warning("step %d: non-finite loss (%s), update skipped", step, terms)
        interval.append(row)
        if step % cfg_train.log_every == 0 or step == cfg_train.steps:
            now = time.perf_counter()
            mean = {k: float(np.mean([r[k] for r in interval])) for k in interval[0]}
            mean["nonfinite"] = float(sum(r["nonfinite"] for r in interval))
            mean["steps_per_sec"] = (step - clock["step"]) / max(now - clock["time"], 1e-9)
            mean["images_per_sec"] = mean["steps_per_sec"] * cfg_train.batch_size
            clock.update(time=now, step=step)
            interval.clear()
            write_row({"step": step, **mean})
            return mean
        return None

    def save(step, force=False):
        params = runner.local_copy(state.params)
        metrics = None
        if val is not None:
            metrics = evaluate_loss(fuse, params, *val, config.loss)
            write_row({"step": step, **metrics})
            if is_main:
                write_samples(os.path.join(workdir, "samples", "val"), step, fuse, params,
                              val[0][: cfg_train.num_samples], val[1][: cfg_train.num_samples])
        checkpoint.save(mngr, step, runner.single_copy(state), config, data_iter,
                        metrics=metrics, force=force)

    pending = None  # (step, metrics) read after the next step is dispatched
    bar = tqdm(range(start, cfg_train.steps), initial=start, total=cfg_train.steps,
               desc="train", dynamic_ncols=True, disable=not is_main)
    preempted = False
    with _StopRequest() as stop:
        try:
            for step in bar:
                if stop.requested or (step > start and mngr.reached_preemption(step)):
                    preempted = True
                    break
                state, metrics = runner.step(state, runner.place_batch(next(data_iter)))
                if pending is not None:
                    mean = account(*pending)
                    if mean is not None:
                        bar.set_postfix(loss=f"{mean['loss']:.4f}", steps_s=f"{mean['steps_per_sec']:.1f}")
                pending = (step + 1, metrics)
                if (step + 1) % cfg_train.checkpoint_every == 0:
                    save(step + 1)
                if is_main and (step + 1) % cfg_train.sample_every == 0:
                    write_samples(os.path.join(workdir, "samples"), step + 1, fuse,
                                  runner.local_copy(state.params), samples_ir, samples_vis)
            if pending is not None:
                account(*pending)
        except NonFiniteLossError:
            mngr.wait_until_finished()
            mngr.close()
            data_iter.close()
            raise
    bar.close()

    final = int(runner.single_copy(state).step)
    if mngr.latest_step() != final:
        save(final, force=True)
    mngr.wait_until_finished()
    mngr.close()
    data_iter.close()
    if preempted:
        print(f"stopped at step {final} (SIGTERM / preemption): checkpoint saved in {workdir}/checkpoints")
    if is_main:
        params = runner.local_copy(state.params)
        write_samples(os.path.join(workdir, "samples"), final, fuse, params, samples_ir, samples_vis)
        for i in range(len(samples_ir)):
            write_png(os.path.join(workdir, "samples", f"pair{i}_ir.png"), samples_ir[i])
            write_png(os.path.join(workdir, "samples", f"pair{i}_vis.png"), samples_vis[i])
        plot_loss_curve(metrics_path, os.path.join(workdir, "loss_curve.png"))
        writer.close()
    return runner.single_copy(state)
