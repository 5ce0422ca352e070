"""Training: the optimizer, the pure train step and `train_and_evaluate(config, workdir)`."""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from ifes_jax import checkpoint, config_check, configured, cpu, losses, metric_terms, parallel
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
    net = configured.from_config(config.model, half_precision=config.get("half_precision", False))
    params = configured.init_params(net, rng, image_size)
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
        return objective(outputs, batch["ir"], batch["vis"], loss_config)

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


def objective(outputs, ir, vis, loss_config):
    """(total, terms): the loss of eq. 6 plus the config's metric terms (`loss.metric_terms`)."""
    extra = metric_terms.make_terms(loss_config.get("metric_terms", {}))
    return losses.ifesnet_loss(outputs, ir, vis, loss_config, extra)


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


def read_metrics(path, complete_only=False):
    """The rows of metrics.jsonl; with `complete_only`, lines that are not whole JSON objects
    (a write cut short) are dropped."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if line.strip() and not complete_only:
                    raise
    return rows


def plot_loss_curve(metrics_path, png_path):
    """Every logged loss term against step from metrics.jsonl (log scale while all are
    positive; metric terms of negative weight can take the total below 0), and the metric terms
    (`loss.metric_terms`, their unweighted values) in a panel of their own."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "loss" in r] if os.path.exists(metrics_path) else []
    if not rows:
        return
    panels = [("loss", [k for k in rows[-1] if k.startswith("loss")], "log"),
              ("metric term", [k for k in rows[-1] if k.startswith("metric_")], "linear")]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, (label, keys, scale) in zip(axes[0], panels):
        values = {key: np.array([r.get(key, np.nan) for r in rows], float) for key in keys}
        for key, ys in values.items():
            ax.plot(steps, ys, label=key)
        positive = all(np.all(ys[np.isfinite(ys)] > 0) for ys in values.values())
        ax.set_yscale(scale if positive else "linear")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


def _truncate_metrics(path, last_step):
    """Drop log lines after the checkpoint a run resumes from (those steps run again), and a
    last line cut short by a kill; rewritten atomically."""
    if not os.path.exists(path):
        return
    kept = [r for r in read_metrics(path, complete_only=True) if r["step"] <= last_step]
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(path + ".tmp", path)


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
        train_fraction=data.train_fraction, mismatch=data.mismatch, split_seed=data.split_seed,
        ir_subdir=data.ir_subdir, vis_subdir=data.vis_subdir, workers=data.decode_workers,
        compression=data.cache_compression, tile=data.cache_tile)
    return pipeline.tfds_source(builder, data.split if split is None else split)


def make_dataset(config, local_batch: int):
    """The training batches: of `data.dir` (or the synthetic pairs), or of the `data.dirs`
    mixture."""
    data = config.data
    if data.dirs is None:
        sources, weights = make_source(config), None
    else:
        mixture = pipeline.parse_mixture(data.dirs)
        sources = [make_source(config, folder=path) for path, _ in mixture]
        weights = [weight for _, weight in mixture]
    return pipeline.training_dataset(
        sources, weights=weights, seed=config.seed, batch_size=local_batch, crop=data.crop_size,
        flips=data.flips, rotations=data.rotations, small_images=data.small_images,
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
        _, terms = objective(fuse(params, ir, vis), ir, vis, loss_config)
        rows.append(jax.device_get(terms))
    return {f"val_{k}": float(np.mean([r[k] for r in rows])) for k in rows[0]}


class StopRequest:
    """Set by SIGTERM (preemption) from the moment it is installed: the loop then saves a
    checkpoint and returns. Entry points install one first thing, so that a SIGTERM during
    start-up is honoured too."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def uninstall(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


@dataclasses.dataclass
class Run:
    """Everything one training run holds between its named parts."""

    config: ml_collections.ConfigDict
    workdir: str
    stop: StopRequest
    is_main: bool = dataclasses.field(default_factory=lambda: jax.process_index() == 0)
    runner: Any = None
    state: Any = None
    data_iter: Any = None
    mngr: Any = None
    writer: Any = None
    fuse: Any = None
    val: Any = None
    samples: Any = None
    interval: list = dataclasses.field(default_factory=list)  # step rows since the last log line
    clock: tuple = (0.0, 0)  # (time, step) of the last log line

    @property
    def metrics_path(self):
        return os.path.join(self.workdir, "metrics.jsonl")

    @property
    def step(self) -> int:
        return int(self.runner.single_copy(self.state).step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, stop: StopRequest | None = None):
    """Train IFESNet as `config` says over every device (and host), writing everything into
    `workdir`; resumes from the latest checkpoint there. Returns the final TrainState (a single
    copy). Only process 0 writes logs and images; every process takes part in checkpoints.
    However the loop ends, a checkpoint in flight completes and every file is closed."""
    config_check.check(config)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"{workdir}: the workdir exists and is not a folder")
    run = Run(config, workdir, stop or StopRequest().install())
    try:
        setup(run)
        restore(run)
        preempted = loop(run)
        finish(run, preempted)
        return run.runner.single_copy(run.state)
    finally:
        teardown(run)


def setup(run: Run):
    """Data (a bad folder stops the run here, before anything is written), the model, the
    sharded state, the checkpoint manager."""
    config, cfg_train = run.config, run.config.train
    local_batch = parallel.check_batch_size(cfg_train.batch_size, cfg_train.parallel)
    dataset = make_dataset(config, local_batch)
    run.val = validation_pairs(config)
    run.samples = sample_pairs(config)
    run.runner = parallel.make_runner(cfg_train.parallel, per_device_step(config))
    run.state = run.runner.place_state(create_train_state(config, jax.random.key(config.seed),
                                                          config.data.crop_size))
    single_host_mesh = cfg_train.parallel == "shard_map" and jax.process_count() == 1
    run.data_iter = pipeline.iterator(dataset, device=run.runner.batch_sharding if single_host_mesh else None,
                                      prefetch=config.data.prefetch,
                                      workers=config.data.workers,
                                      read_threads=config.data.read_threads)
    run.mngr = checkpoint.manager(os.path.join(run.workdir, "checkpoints"),
                                  keep=cfg_train.keep_checkpoints, keep_best=cfg_train.keep_best)
    run.fuse = fuse_fn(run.state.apply_fn)


def restore(run: Run):
    """Resume from the latest checkpoint, if any; only then is the workdir written to (the
    config, the log truncated to the resumed step, TensorBoard)."""
    if (latest := run.mngr.latest_step()) is not None:
        template = run.runner.single_copy(run.state)
        restored = checkpoint.guarded(f"{run.workdir}/checkpoints/{latest}", "state",
                                      lambda: checkpoint.restore(run.mngr, template, run.data_iter))
        run.state = run.runner.place_state(restored)
    if run.is_main:
        try:
            with open(os.path.join(run.workdir, "config.json"), "w") as f:
                f.write(run.config.to_json_best_effort(indent=2))
        except OSError as exc:
            raise ConfigError(f"{run.workdir}: cannot be written ({exc.strerror or exc})") from None
        if run.mngr.latest_step() is not None:
            _truncate_metrics(run.metrics_path, run.step)
            print(f"resumed from {run.workdir}/checkpoints at step {run.step}")
        from tensorboardX import SummaryWriter
        run.writer = SummaryWriter(os.path.join(run.workdir, "tensorboard"))
    run.clock = (time.perf_counter(), run.step)


def loop(run: Run) -> bool:
    """The train steps; returns whether a stop request (SIGTERM, preemption) ended them. The
    metrics of step t are read after step t+1 has been dispatched."""
    from tqdm import tqdm
    cfg_train, start = run.config.train, run.step
    pending = None
    bar = tqdm(range(start, cfg_train.steps), initial=start, total=cfg_train.steps,
               desc="train", dynamic_ncols=True, disable=not run.is_main)
    with bar:
        for step in bar:
            if run.stop.requested or (step > start and run.mngr.reached_preemption(step)):
                return True
            run.state, metrics = run.runner.step(run.state, run.runner.place_batch(next(run.data_iter)))
            if pending is not None and (mean := log(run, *pending)) is not None:
                bar.set_postfix(loss=f"{mean['loss']:.4f}", steps_s=f"{mean['steps_per_sec']:.1f}")
            pending = (step + 1, metrics)
            if (step + 1) % cfg_train.checkpoint_every == 0:
                save(run, step + 1)
            if run.is_main and (step + 1) % cfg_train.sample_every == 0:
                write_samples(os.path.join(run.workdir, "samples"), step + 1, run.fuse,
                              run.runner.local_copy(run.state.params), *run.samples)
        if pending is not None:
            log(run, *pending)
    return run.stop.requested


def log(run: Run, step: int, metrics):
    """Host side of step `step`: stop on a non-finite loss (or count it), and every
    `log_every` steps write the interval's means; returns them on those steps."""
    cfg_train = run.config.train
    row = {k: float(v) for k, v in jax.device_get(run.runner.single_copy(metrics)).items()}
    if row["nonfinite"]:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                          if k.startswith(("loss", "metric_")) or k == "grad_norm")
        if cfg_train.nonfinite == "stop":
            raise NonFiniteLossError(
                f"non-finite loss at step {step}: {terms}; the update was not applied and the "
                f"last checkpoint (step {run.mngr.latest_step()}) is kept")
        logging.warning("step %d: non-finite loss (%s), update skipped", step, terms)
    run.interval.append(row)
    if step % cfg_train.log_every and step != cfg_train.steps:
        return None
    now, (then, then_step) = time.perf_counter(), run.clock
    mean = {k: float(np.mean([r[k] for r in run.interval])) for k in run.interval[0]}
    mean["nonfinite"] = float(sum(r["nonfinite"] for r in run.interval))
    mean["steps_per_sec"] = (step - then_step) / max(now - then, 1e-9)
    mean["images_per_sec"] = mean["steps_per_sec"] * cfg_train.batch_size
    run.clock = (now, step)
    run.interval.clear()
    write_row(run, {"step": step, **mean})
    return mean


def write_row(run: Run, row):
    """One line of metrics.jsonl and the same scalars in TensorBoard (process 0)."""
    if not run.is_main:
        return
    with open(run.metrics_path, "a") as f:
        f.write(json.dumps(row) + "\n")
    for k, v in row.items():
        if k != "step":
            run.writer.add_scalar(k, v, row["step"])


def save(run: Run, step: int, force: bool = False):
    """Validate (loss terms and sample fusions of the held-out pairs) and checkpoint."""
    params = run.runner.local_copy(run.state.params)
    metrics = None
    if run.val is not None:
        metrics = evaluate_loss(run.fuse, params, *run.val, run.config.loss)
        write_row(run, {"step": step, **metrics})
        if run.is_main:
            n = run.config.train.num_samples
            write_samples(os.path.join(run.workdir, "samples", "val"), step, run.fuse, params,
                          run.val[0][:n], run.val[1][:n])
    checkpoint.save(run.mngr, step, run.runner.single_copy(run.state), run.config, run.data_iter,
                    metrics=metrics, force=force)


def finish(run: Run, preempted: bool):
    """The final checkpoint, sample images and loss curve."""
    final = run.step
    if run.mngr.latest_step() != final:
        save(run, final, force=True)
    if preempted:
        print(f"stopped at step {final} (SIGTERM / preemption): checkpoint saved in "
              f"{run.workdir}/checkpoints")
    if run.is_main:
        folder = os.path.join(run.workdir, "samples")
        write_samples(folder, final, run.fuse, run.runner.local_copy(run.state.params), *run.samples)
        for i, (ir, vis) in enumerate(zip(*run.samples)):
            write_png(os.path.join(folder, f"pair{i}_ir.png"), ir)
            write_png(os.path.join(folder, f"pair{i}_vis.png"), vis)
        plot_loss_curve(run.metrics_path, os.path.join(run.workdir, "loss_curve.png"))


def teardown(run: Run):
    """However the run ends: a checkpoint in flight completes, files and threads are closed."""
    try:
        if run.mngr is not None:
            run.mngr.wait_until_finished()
            run.mngr.close()
    finally:
        if run.data_iter is not None:
            run.data_iter.close()
        if run.writer is not None:
            run.writer.close()
        run.stop.uninstall()
