"""Classical fusion baselines in `jnp`, the references every table carries. Images are float
(H, W) in [0, 1]; each baseline returns the fused image, same shape."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ifes_jax import losses

_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0  # Burt & Adelson's 5-tap generating kernel


def average(ir, vis):
    """(ir + vis) / 2."""
    return (jnp.asarray(ir) + jnp.asarray(vis)) / 2.0


def maximum(ir, vis):
    """Element-wise max."""
    return jnp.maximum(jnp.asarray(ir), jnp.asarray(vis))


def _blur(x):
    """The 5 x 5 binomial filter with symmetric (reflect) borders, same size."""
    return losses.separable_filter_valid(jnp.pad(x, 2, mode="reflect"), _BINOMIAL)


def _reduce(x):
    return _blur(x)[::2, ::2]


def _expand(x, shape):
    """Upsample by 2 (zeros between samples, then 4 x the blur) to `shape`."""
    up = jnp.zeros((2 * x.shape[0], 2 * x.shape[1]), x.dtype).at[::2, ::2].set(x)
    return 4.0 * _blur(up)[: shape[0], : shape[1]]


def laplacian_pyramid(x, levels: int):
    """[L_0, ..., L_{levels-2}, G_{levels-1}]: band-pass levels and the low-pass top
    (Burt & Adelson 1983). `reconstruct` inverts it exactly."""
    x = jnp.asarray(x, jnp.float32)
    pyramid = []
    for _ in range(levels - 1):
        low = _reduce(x)
        pyramid.append(x - _expand(low, x.shape))
        x = low
    return pyramid + [x]


def reconstruct(pyramid):
    x = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        x = band + _expand(x, band.shape)
    return x


def pyramid_levels(shape, levels: int = 5, min_size: int = 8) -> int:
    """`levels`, or fewer so that the top level keeps at least `min_size` pixels a side."""
    return max(1, min(levels, int(np.floor(np.log2(min(shape) / min_size))) + 1))


def laplacian(ir, vis, levels: int = 5):
    """Laplacian-pyramid fusion: each band-pass coefficient from the source with the larger
    magnitude (max-abs), the low-pass tops averaged; then the pyramid is collapsed."""
    levels = pyramid_levels(jnp.shape(ir), levels)
    pa, pb = laplacian_pyramid(ir, levels), laplacian_pyramid(vis, levels)
    fused = [jnp.where(jnp.abs(a) >= jnp.abs(b), a, b) for a, b in zip(pa[:-1], pb[:-1])]
    return reconstruct(fused + [(pa[-1] + pb[-1]) / 2.0])


def target(ir, vis, xi: float = 1.7):
    """The loss's own expected image as an oracle: Ī = ξ·C̄·S̄ (eq. 8–10, global decomposition)
    plus the sources' mean luminance (μ_ir + μ_vis)/2, clipped to [0, 1]."""
    ir, vis = jnp.asarray(ir, jnp.float32), jnp.asarray(vis, jnp.float32)
    luminance = (jnp.mean(ir) + jnp.mean(vis)) / 2.0
    return jnp.clip(losses.expected_image(ir, vis, xi=xi) + luminance, 0.0, 1.0)


BASELINES = {"average": average, "max": maximum, "laplacian": laplacian, "target": target}
