"""A training config checked before anything runs: every field with a fixed set of choices, and
every size, count and interval, with a one-line `ConfigError` naming the field."""
from __future__ import annotations

import numbers

from ifes_jax import cpu, losses, metric_terms, model, parallel
from ifes_jax.data import pairs, pipeline
from ifes_jax.errors import ConfigError

CHOICES = {
    "model.activation": tuple(model.ACTIVATIONS),
    "model.weight_activation": model.WEIGHT_ACTIVATIONS,
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.conv_backend": cpu.CONV_BACKENDS,
    "loss.recon": ("mse", "mae"),
    "loss.ssim_mode": ("window", "global"),
    "loss.window": ("uniform", "gaussian"),
    "loss.map_reduction": losses.MAP_REDUCTIONS,
    "optim.schedule": ("constant", "warmup_constant", "warmup_cosine"),
    "optim.weight_decay_mode": ("l2", "decoupled"),
    "data.mismatch": pairs.MISMATCH_POLICIES,
    "data.cache_compression": ("zstd", "none"),
    "data.small_images": pipeline.SMALL_IMAGE_POLICIES,
    "train.parallel": parallel.KINDS,
    "train.nonfinite": ("stop", "skip"),
}
BOOLEANS = ("model.hierarchical_connection", "model.interactive", "model.remat", "data.flips",
            "data.rotations", "half_precision")
POSITIVE_INTEGERS = ("data.crop_size", "data.synthetic_pairs", "data.synthetic_size",
                     "data.val_size", "data.val_pairs", "loss.window_size", "train.batch_size",
                     "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                     "train.sample_every", "train.num_samples", "train.sample_size",
                     "data.decode_workers", "data.cache_tile", "data.read_threads")
NON_NEGATIVE_INTEGERS = ("train.steps", "train.keep_best", "optim.warmup_steps", "data.prefetch",
                         "data.workers",
                         "data.split_seed", "seed")
POSITIVE_NUMBERS = ("model.width_multiplier", "optim.learning_rate", "loss.window_sigma",
                    "loss.xi", "loss.eps")
NON_NEGATIVE_NUMBERS = ("optim.weight_decay", "optim.grad_clip_norm", "loss.ssim_c", "loss.tau")
NUMBERS = ("loss.weight_ir", "loss.weight_vis", "loss.weight_fusion", "loss.weight_map")
OPEN_UNIT_INTERVAL = ("optim.b1", "optim.b2")


def _get(config, path):
    node = config
    for part in path.split("."):
        if part not in node:
            raise ConfigError(f"config field {path} is missing")
        node = node[part]
    return node


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check(config) -> None:
    """Raise a one-line ConfigError for the first field of `config` that cannot work."""
    for path, choices in CHOICES.items():
        if (value := _get(config, path)) not in choices:
            raise ConfigError(f"{path} must be one of {', '.join(choices)}; got {value!r}")
    rules = [(BOOLEANS, lambda v: isinstance(v, bool), "True or False"),
             (POSITIVE_INTEGERS, lambda v: _is_int(v) and v > 0, "a positive integer"),
             (NON_NEGATIVE_INTEGERS, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
             (POSITIVE_NUMBERS, lambda v: _is_number(v) and v > 0, "a number > 0"),
             (NON_NEGATIVE_NUMBERS, lambda v: _is_number(v) and v >= 0, "a number >= 0"),
             (NUMBERS, _is_number, "a number"),
             (OPEN_UNIT_INTERVAL, lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")]
    for paths, ok, what in rules:
        for path in paths:
            if not ok(value := _get(config, path)):
                raise ConfigError(f"{path} must be {what}; got {value!r}")
    _check_model(config.model)
    _check_data(config.data)
    val_size = config.data.val_size if config.data.get("val_dir") is not None else None
    metric_terms.check(config.loss.get("metric_terms", {}), config.data.crop_size, val_size)


def _check_model(model):
    if not (_is_int(model.num_stages) and 1 <= model.num_stages <= 4):
        raise ConfigError(f"model.num_stages must be 1, 2, 3 or 4; got {model.num_stages!r}")


def _check_data(data):
    if data.get("train_fraction") is not None and not 0 < data.train_fraction <= 1:
        raise ConfigError(f"data.train_fraction must be in (0, 1]; got {data.train_fraction!r}")
    if data.get("train_fraction") is not None and data.get("train_list") is not None:
        raise ConfigError("data.train_list and data.train_fraction: give one, not both")
    if data.dirs is not None:
        if data.dir is not None:
            raise ConfigError("data.dir and data.dirs: give one folder or a mixture, not both")
        if data.get("train_list") is not None:
            raise ConfigError("data.train_list names the pairs of one folder; with data.dirs, "
                              "use folders split as released (train/, test/) or data.train_fraction")
        pipeline.parse_mixture(data.dirs)
