"""Fusion metrics as terms of the training loss (`config.loss.metric_terms`).

    --config.loss.metric_terms='{"viff": -0.1, "soft_entropy": -0.02}'

adds Σ weight · metric to the loss of eq. 6, each metric computed on the fused image against the
two sources and averaged over the batch; a negative weight maximises the metric. A name is a
metric function of `ifes_jax.metrics` with its default conventions (`METRICS`), or
`PROFILE:NAME`, a metric of a profile with that profile's conventions (e.g. "vifb:Qabf"; without
the rounding to 8-bit levels the toolbox profiles score with). Each term is logged as
`metric_<name>` (the metric's value, unweighted). Metrics of histograms of gray levels, or of
images stretched and rounded to gray levels, have no gradient and are refused.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from ifes_jax import metrics, profiles
from ifes_jax.errors import ConfigError

# the metric functions of `metrics`: of the fused image alone, or of (fused, ir, vis)
FUSED_ONLY = ("standard_deviation", "spatial_frequency", "average_gradient",
              "gray_level_difference", "edge_intensity", "entropy", "soft_entropy")
WITH_SOURCES = ("psnr", "source_error", "correlation_coefficient", "scd", "ssim_fusion",
                "decomposition_score", "qabf", "viff", "vif_pixel", "mutual_information",
                "soft_mutual_information", "cross_entropy", "mutual_information_paper")
METRICS = FUSED_ONLY + WITH_SOURCES

# piecewise constant in the pixels (zero gradient almost everywhere): name -> what to use instead
NO_GRADIENT = {
    "entropy": "soft_entropy",
    "mutual_information": "soft_mutual_information",
    "mutual_information_paper": "soft_entropy (the paper's MI column is 2 × EN)",
    "cross_entropy": None,
    "qcb": None,
    "qcv": None,
}


def _base_function(fn) -> str:
    """The name of the `metrics` function under partials and `profiles.fused_only`."""
    while isinstance(fn, functools.partial) or hasattr(fn, "__wrapped__"):
        fn = fn.func if isinstance(fn, functools.partial) else fn.__wrapped__
    return fn.__name__


def _lookup(name: str) -> tuple[Callable, str]:
    """(fn(fused, ir, vis) -> scalar, the underlying function's name) for a term's name."""
    if ":" in name:
        profile, metric = name.split(":", 1)
        if profile not in profiles.PROFILES:
            raise ConfigError(f"loss.metric_terms: unknown profile {profile!r} in {name!r}; "
                              f"profiles: {', '.join(profiles.PROFILES)}")
        table = profiles.PROFILES[profile].metrics
        if metric not in table:
            raise ConfigError(f"loss.metric_terms: profile {profile} has no metric {metric!r}; "
                              f"it has {', '.join(table)}")
        return table[metric].fn, _base_function(table[metric].fn)
    if name not in METRICS:
        usable = [m for m in METRICS if m not in NO_GRADIENT]
        raise ConfigError(f"loss.metric_terms: unknown metric {name!r}; use one of "
                          f"{', '.join(usable)}, or PROFILE:NAME (e.g. vifb:Qabf)")
    fn = getattr(metrics, name)
    return (profiles.fused_only(fn) if name in FUSED_ONLY else fn), name


def metric_fn(name: str) -> Callable:
    """The differentiable fn(fused, ir, vis) -> scalar, on (H, W) images in [0, 1], that the
    term `name` adds; a one-line ConfigError when it is unknown or has no gradient."""
    fn, base = _lookup(name)
    if base in NO_GRADIENT:
        instead = NO_GRADIENT[base]
        hint = f": use {instead}" if instead else ""
        raise ConfigError(f"loss.metric_terms: {name!r} has no gradient (its value moves in steps "
                          f"of rounded gray levels){hint}")
    return fn


def column(name: str) -> str:
    """The metrics.jsonl / TensorBoard column of the term `name`."""
    return "metric_" + name.replace(":", "_")


def check(metric_terms, crop_size: int, val_size: int | None = None) -> None:
    """Raise a one-line ConfigError for the first term that cannot join the loss: an unknown
    name, a metric without a gradient, a weight that is not a number, or a metric that needs
    larger images than the training crops (`data.crop_size`) or, when given, the validation
    crops (`data.val_size`)."""
    for name, weight in dict(metric_terms).items():
        fn = metric_fn(name)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"loss.metric_terms: the weight of {name!r} must be a number; "
                              f"got {weight!r}")
        sizes = [(crop_size, "training crops (data.crop_size)")]
        if val_size is not None:
            sizes.append((val_size, "validation crops (data.val_size)"))
        for size, what in sizes:
            crop = jax.ShapeDtypeStruct((size, size), jnp.float32)
            try:
                jax.eval_shape(fn, crop, crop, crop)
            except ValueError as exc:
                raise ConfigError(f"loss.metric_terms: {name!r} on the {size}x{size} {what}: "
                                  f"{exc}") from None


def make_terms(metric_terms) -> dict[str, tuple[float, Callable]]:
    """{column: (weight, fn(fused_BHW1, ir_BHW1, vis_BHW1) -> batch mean)} of `metric_terms`
    (a mapping name -> weight), for `losses.ifesnet_loss`."""
    terms = {}
    for name, weight in dict(metric_terms).items():
        per_image = jax.vmap(metric_fn(name))

        def batch_mean(fused, ir, vis, per_image=per_image):
            return jnp.mean(per_image(fused[..., 0], ir[..., 0], vis[..., 0]))
        terms[column(name)] = (float(weight), batch_mean)
    return terms
