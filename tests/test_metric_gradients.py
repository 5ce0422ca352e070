"""The metrics' gradients: `jax.grad` against central finite differences in float64 on a real
training-crop-sized (64 x 64) TNO crop, and finite gradients on flat, constant, saturated and
small images — every metric that is differentiable almost everywhere, in each profile's
conventions where they differ.

The points are moved off the metrics' kinks: each image is a real 8-bit crop shifted by half a
gray level plus uniform noise of ±0.3 levels, so no pixel is within 0.2 of a gray level (the
soft histograms' kinks, and no histogram bin is nearly empty, where -p log p curves without
bound) and neighbours, edge strengths and gains are almost surely unequal. A finite difference
steps 1e-4 gray levels along a random direction; for the metrics with kinks in the pixels'
differences (`KINKED`: |·|, max/min, Qabf's orientation branch and ties, VIFF's choice of the
source with the smaller gain) 1e-6, too little to cross one with any likelihood.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifes_jax import metrics, profiles
from ifes_jax.data import pairs

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
_p = lambda fn, **kw: (lambda f, a, b: fn(f, a, b, **kw))  # noqa: E731
_f = lambda fn, **kw: (lambda f, a, b: fn(f, **kw))  # noqa: E731

GRADIENT_METRICS = {
    "SD": _f(metrics.standard_deviation),
    "SF": _f(metrics.spatial_frequency),
    "SF cddfuse": profiles.CDDFUSE.metrics["SF"].fn,
    "AG": _f(metrics.average_gradient),
    "AG vifb": profiles.VIFB.metrics["AG"].fn,
    "AG cddfuse": profiles.CDDFUSE.metrics["AG"].fn,
    "GLD": _f(metrics.gray_level_difference),
    "EI vifb": profiles.VIFB.metrics["EI"].fn,
    "VIFF": metrics.viff,
    "VIF cddfuse": metrics.vif_pixel,
    "Qabf": metrics.qabf,
    "Qabf vifb": profiles.VIFB.metrics["Qabf"].fn,
    "Qabf cddfuse": profiles.CDDFUSE.metrics["Qabf"].fn,
    "SCD": metrics.scd,
    "CC cddfuse": metrics.correlation_coefficient,
    "SSIM": metrics.ssim_fusion,
    "SSIM vifb": profiles.VIFB.metrics["SSIM"].fn,
    "SSIM cddfuse": profiles.CDDFUSE.metrics["SSIM"].fn,
    "PSNR": metrics.psnr,
    "PSNR vifb": profiles.VIFB.metrics["PSNR"].fn,
    "PSNR cddfuse": profiles.CDDFUSE.metrics["PSNR"].fn,
    "RMSE vifb": profiles.VIFB.metrics["RMSE"].fn,
    "MSE cddfuse": profiles.CDDFUSE.metrics["MSE"].fn,
    "decomposition score": metrics.decomposition_score,
    "soft EN": _f(metrics.soft_entropy),
    "soft MI": metrics.soft_mutual_information,
}
KINKED = {"GLD", "Qabf", "Qabf vifb", "Qabf cddfuse", "VIFF", "VIF cddfuse", "PSNR cddfuse"}
# each program here runs a few times on 64 x 64 images: compiled unoptimised, it compiles
# faster and still runs in milliseconds
_jit = lambda fn: jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})  # noqa: E731


def _step(name):
    """The finite-difference step, in the 0–1 units of the images: 1e-4 or 1e-6 gray levels."""
    return (1e-6 if name in KINKED else 1e-4) / 255


def _tno_crop(size=64):
    """A 64 x 64 crop of a real TNO pair (float64, 0–1) and a fused image between the
    sources, each moved to half a gray level ± 0.3."""
    found = pairs.find_pairs(os.path.join(DATA, "tno-infv20"))
    (ir, _, _), (vis, _, _) = pairs.read_pair(found[4])
    ir, vis = (x[100:100 + size, 120:120 + size].astype(np.float64) for x in (ir, vis))
    rng = np.random.default_rng(0)
    levels = [np.clip(np.round(x), 1, 253) for x in (0.6 * ir + 0.4 * vis, ir, vis)]
    return [(x + 0.5 + rng.uniform(-0.3, 0.3, x.shape)) / 255.0 for x in levels]


@pytest.mark.skipif(not os.path.isdir(DATA), reason="real pairs live in ../shared/data")
@pytest.mark.parametrize("name", sorted(GRADIENT_METRICS))
def test_gradient_equals_central_finite_differences_in_float64(name):
    fn, step = GRADIENT_METRICS[name], _step(name)
    with jax.enable_x64(True):
        fused, ir, vis = (jnp.asarray(x) for x in _tno_crop())
        value_and_grad = _jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))
        value, grads = value_and_grad(fused, ir, vis)
        value_of = _jit(jax.vmap(fn))
        rng = np.random.default_rng(1)
        for argnum in range(3):
            for _ in range(2):
                direction = rng.standard_normal(fused.shape)
                points = [[fused, ir, vis] for _ in range(2)]
                for sign, point in zip((1, -1), points):
                    point[argnum] = point[argnum] + sign * step * direction
                stacked = [jnp.stack([p[i] for p in points]) for i in range(3)]
                plus, minus = np.asarray(value_of(*stacked))
                finite_difference = (plus - minus) / (2 * step)
                analytic = float(jnp.sum(grads[argnum] * direction))
                # relative 1e-5, plus the rounding of the two values the difference divides
                rounding = 100 * np.finfo(np.float64).eps * (abs(float(value)) + 1) / step
                assert abs(finite_difference - analytic) <= 1e-5 * abs(analytic) + rounding, (
                    name, argnum, finite_difference, analytic)


def _hard_cases():
    rng = np.random.default_rng(2)
    texture = rng.uniform(size=(64, 64)).astype(np.float32)
    flat = np.full((64, 64), 0.5, np.float32)
    half = flat.copy()
    half[:, 32:] = 0.8
    zeros, ones = np.zeros_like(flat), np.ones_like(flat)
    return {"constant": (flat, flat, flat), "constant fused": (flat, texture, texture[::-1]),
            "flat halves": (half, flat, half), "saturated 0": (zeros, texture, zeros),
            "saturated 1": (ones, ones, texture), "all saturated": (zeros, ones, zeros)}


@pytest.mark.parametrize("name", sorted(GRADIENT_METRICS))
def test_gradients_are_finite_on_flat_constant_saturated_64x64_images(name):
    grad = _jit(jax.grad(GRADIENT_METRICS[name], argnums=(0, 1, 2)))
    for case, images in _hard_cases().items():
        for g in grad(*images):
            assert g.shape == (64, 64) and bool(jnp.all(jnp.isfinite(g))), (name, case)
