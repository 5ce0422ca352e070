"""Training: the optimizer, the pure train step and `train_and_evaluate(config, workdir)`."""
from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from ifes_jax import checkpoint, losses, model as model_lib
from ifes_jax.data import pipeline, synthetic, tfds_pairs
from ifes_jax.data.images import write_png

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
    raise ValueError(f"optim.schedule must be constant, warmup_constant or warmup_cosine, "
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
        raise ValueError(f"optim.weight_decay_mode must be l2 or decoupled, "
                         f"got {optim.weight_decay_mode!r}")
    return optax.chain(*parts)


def create_train_state(config, rng, image_size: int = 64) -> train_state.TrainState:
    """A fresh TrainState: parameters from `rng`, the optimizer from `config.optim`."""
    net = model_lib.from_config(config.model)
    dummy = jnp.zeros((1, image_size, image_size, 1), jnp.float32)
    params = jax.jit(net.init)(rng, dummy, dummy)["params"]
    tx = make_optimizer(config.optim, config.train.steps)
    return train_state.TrainState.create(apply_fn=net.apply, params=params, tx=tx)


def train_step(state, batch, *, loss_config, learning_rate_fn=None, axis_name=None):
    """One optimisation step on a batch {"ir", "vis"} of (B, H, W, 1) float32 crops.

    Pure: (state, batch) -> (state, metrics). With `axis_name`, gradients and metrics are
    averaged over that named data axis (pmap / shard_map); without, it is a plain step.
    """
    def loss_fn(params):
        outputs = state.apply_fn({"params": params}, batch["ir"], batch["vis"])
        return losses.ifesnet_loss(outputs, batch["ir"], batch["vis"], loss_config)

    grads, terms = jax.grad(loss_fn, has_aux=True)(state.params)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        terms = jax.lax.pmean(terms, axis_name)
    metrics = dict(terms, grad_norm=optax.tree.norm(grads))
    if learning_rate_fn is not None:
        metrics["learning_rate"] = learning_rate_fn(state.step)
    return state.apply_gradients(grads=grads), metrics


def make_train_step(config):
    """The jit-compiled train step for `config`, donating the old state's buffers."""
    step = functools.partial(
        train_step, loss_config=config.loss,
        learning_rate_fn=learning_rate_schedule(config.optim, config.train.steps))
    return jax.jit(step, donate_argnums=0)


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

    rows = read_metrics(metrics_path)
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

def make_source(config):
    """The training records: a split of the pairs folder `config.data.dir` (built as a tfds
    dataset in `config.data.cache_dir`), or the synthetic pairs when no folder is given."""
    data = config.data
    if data.dir is None:
        return pipeline.synthetic_source(config.seed, data.synthetic_pairs, data.synthetic_size)
    builder = tfds_pairs.prepare(
        data.dir, os.path.expanduser(data.cache_dir), train_list=data.train_list,
        train_fraction=data.train_fraction, mismatch=data.mismatch, split_seed=data.split_seed)
    return pipeline.tfds_source(builder, data.split)


def make_dataset(config, source):
    data = config.data
    return pipeline.training_dataset(
        source, seed=config.seed, batch_size=config.train.batch_size, crop=data.crop_size,
        flips=data.flips, rotations=data.rotations, small_images=data.small_images)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
    """Train IFESNet as `config` says, writing everything into `workdir`; resumes from the
    latest checkpoint there. Returns the final TrainState."""
    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    dataset = make_dataset(config, make_source(config))  # bad data is reported before anything runs
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    samples_ir, samples_vis = sample_pairs(config)

    state = create_train_state(config, jax.random.key(config.seed), config.data.crop_size)
    data_iter = pipeline.iterator(dataset, device=jax.devices()[0], prefetch=config.data.prefetch)
    mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"),
                              max_to_keep=config.train.keep_checkpoints)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if mngr.latest_step() is not None:
        state = checkpoint.restore(mngr, state, data_iter)
        _truncate_metrics(metrics_path, int(state.step))
        print(f"resumed from {workdir}/checkpoints at step {int(state.step)}")
    start = int(state.step)

    step_fn = make_train_step(config)
    fuse = fuse_fn(state.apply_fn)
    writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
    batch_size, log_every = config.train.batch_size, config.train.log_every

    clock = {"time": time.perf_counter(), "step": start}

    def log(step, metrics):
        row = {"step": step, **{k: float(v) for k, v in jax.device_get(metrics).items()}}
        now = time.perf_counter()  # device_get waited for step `step`: time whole steps
        row["steps_per_sec"] = (step - clock["step"]) / max(now - clock["time"], 1e-9)
        row["images_per_sec"] = row["steps_per_sec"] * batch_size
        clock.update(time=now, step=step)
        if not np.isfinite(row["loss"]):
            raise FloatingPointError(f"non-finite loss at step {step}: " + ", ".join(
                f"{k}={row[k]:.4g}" for k in ("loss_ir", "loss_vis", "loss_fusion", "loss_map")))
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k != "step":
                writer.add_scalar(k, v, step)
        return row

    pending = None  # metrics of step t are read after step t+1 is dispatched
    interval_sum, interval_steps = None, 0  # metrics are averaged over each logging interval
    bar = tqdm(range(start, config.train.steps), initial=start, total=config.train.steps,
               desc="train", dynamic_ncols=True)
    for step in bar:
        state, metrics = step_fn(state, next(data_iter))
        done = step + 1
        interval_sum = metrics if interval_sum is None else jax.tree.map(jnp.add, interval_sum, metrics)
        interval_steps += 1
        if pending is not None:
            row = log(*pending)
            bar.set_postfix(loss=f"{row['loss']:.4f}", steps_s=f"{row['steps_per_sec']:.1f}")
            pending = None
        if done % log_every == 0 or done == config.train.steps:
            pending = (done, jax.tree.map(lambda x, n=interval_steps: x / n, interval_sum))
            interval_sum, interval_steps = None, 0
        if done % config.train.checkpoint_every == 0:
            checkpoint.save(mngr, done, state, config, data_iter)
        if done % config.train.sample_every == 0:
            write_samples(os.path.join(workdir, "samples"), done, fuse, state.params,
                          samples_ir, samples_vis)
    if pending is not None:
        log(*pending)
    bar.close()

    final = int(state.step)
    if mngr.latest_step() != final:
        checkpoint.save(mngr, final, state, config, data_iter, force=True)
    mngr.wait_until_finished()
    mngr.close()
    data_iter.close()
    write_samples(os.path.join(workdir, "samples"), final, fuse, state.params, samples_ir, samples_vis)
    for i in range(len(samples_ir)):
        write_png(os.path.join(workdir, "samples", f"pair{i}_ir.png"), samples_ir[i])
        write_png(os.path.join(workdir, "samples", f"pair{i}_vis.png"), samples_vis[i])
    plot_loss_curve(metrics_path, os.path.join(workdir, "loss_curve.png"))
    writer.close()
    return state
