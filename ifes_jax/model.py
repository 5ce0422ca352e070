"""IFESNet: interactive feature embedding in a self-supervised network (paper §III.B–C, Fig. 3).

Three interleaved branches of 3×3, stride-1, SAME convolutions at full resolution:

* IVIFNet, the fusion branch:   F1 = C²(cat(I1, I2)),  F(n+1) = C²(cat(F'n, F''n))   (eq. 3)
* SHFENet-ir / SHFENet-vis:     F'n = C(Fn),  F''n = C(Fn)                           (eq. 1, "Bi")
* heads:                        W = C⁴(cat(F'N, F''N)) → 2 weight maps                  (eq. 4)
                                Ir1 = C³(F'N),  Ir2 = C³(F''N)                          (eq. 2)
* fused image:                  If = W1·I1 + W2·I2                                      (eq. 4)

Every ablation of the paper is a field of `IFESNet`, not a copy of the code:
`num_stages` (S1–S4, Table V), `hierarchical_connection` (HC, Fig. 10), `interactive=False`
("w/o IFEM", Fig. 9b, Tables III–IV).

The convolution itself is a field too (`conv`): XLA's `conv3x3` below by default, or any
function of the same signature (`ifes_jax.configured.from_config` picks the platform's).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ifes_jax.errors import ConfigError

STAGE_CHANNELS = (64, 128, 256, 256)  # F_n / F'_n / F''_n widths of stages 1..4 (§III.B)
FUSION_HEAD_CHANNELS = (256, 128, 64)  # IVIFNet layers 7-9, then the 2-channel weight layer
RECON_HEAD_CHANNELS = (128, 64)  # SHFENet layers 4-5, then the 1-channel output layer

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
}
WEIGHT_ACTIVATIONS = ("sigmoid", "linear", "softmax")
OUTPUT_LAYERS = ("head_weights", "recon_ir_out", "recon_vis_out")


def scaled(channels: int, width_multiplier: float) -> int:
    """Hidden width after `width_multiplier` (never below 1)."""
    return max(1, int(round(channels * width_multiplier)))


def convolve(x, kernel, padding="SAME"):
    """Stride-1 convolution (cross-correlation) of NHWC `x` with an HWIO `kernel`."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv3x3(x, kernel, bias, activation=None):
    """`activation(x ⋆ kernel + bias)`: the network's one layer type, a 3×3, stride-1, SAME
    convolution of NHWC `x` with a (3, 3, C_in, C_out) kernel (XLA's convolution)."""
    y = convolve(x, kernel) + bias
    return y if activation is None else activation(y)


def remat(fn):
    """`fn(*inputs)` that keeps only its inputs (and the arrays it closes over) for the
    backward pass and recomputes the rest there. Unlike `jax.checkpoint`, whose optimisation
    barriers XLA CPU drops (it then merges the recomputation back into the forward pass and
    saves nothing), the recomputation reads the incoming cotangent, so no compiler can
    schedule it before it is needed. Reverse mode only (a custom VJP)."""
    def wrapped(*inputs):
        closed, consts = jax.closure_convert(fn, *inputs)
        return _remat_call(closed, consts, inputs)
    return wrapped


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _remat_call(fn, consts, inputs):
    return fn(*inputs, *consts)


def _remat_forward(fn, consts, inputs):
    return fn(*inputs, *consts), (consts, inputs)


def _remat_backward(fn, saved, cotangent):
    consts, inputs = saved
    first = jax.tree.leaves(cotangent)[0].reshape(-1)[0]
    # 0 · c is not folded away for floats (NaN semantics): a real data dependence
    inputs = jax.tree.map(lambda x: x + (0 * first).astype(x.dtype), inputs)
    _, vjp = jax.vjp(lambda c, i: fn(*i, *c), consts, inputs)
    return vjp(cotangent)


_remat_call.defvjp(_remat_forward, _remat_backward)


def _no_remat(fn):
    return fn


class IFESNet(nn.Module):
    """IFESNet (Fig. 3). Call with `ir_BHW1`, `vis_BHW1` in [0, 1]; returns a dict of float32
    arrays: `fused` (B,H,W,1), `weights` (B,H,W,2: W1 for IR, W2 for VIS), `recon_ir`,
    `recon_vis` (B,H,W,1).

    interactive=True (IFEM, eq. 5): SHFENet layer n reads IVIFNet's F_n, and IVIFNet's next
    layers read cat(F'_n, F''_n): features cross both ways at every stage.
    interactive=False ("w/o IFEM", Fig. 9b): the SHFENet branches run on their own
    (F'_n = C(F'_{n-1}), F'_0 = I1) and only deliver one way into IVIFNet, which adds them to
    its own stream: F_{n+1} = C²(cat(F_n + F'_n, F_n + F''_n)). IVIFNet and the heads keep
    their exact shapes; only the input widths of the SHFENet stage layers differ.
    hierarchical_connection (Fig. 10): the features delivered by stage n-1 are also
    concatenated into the input of stage n+1 (and of the fusion head after the last stage).
    remat: each segment (the stem, every stage, each head) keeps only its inputs for the
    backward pass and recomputes its activations there (`remat`): the same gradients in less
    memory, for about one more forward pass; reverse-mode differentiation only.
    conv: the layer, `conv3x3(x, kernel, bias, activation)`.

    Every conv's parameters are one entry {"kernel", "bias"} named as in §III.B (ivif_n,
    shfe_ir_n, shfe_vis_n, head_n, recon_*), declared as the network first runs at `init`.
    """

    num_stages: int = 3
    hierarchical_connection: bool = False
    interactive: bool = True
    width_multiplier: float = 1.0
    activation: str = "relu"
    weight_activation: str = "sigmoid"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False
    conv: Callable = conv3x3

    @nn.compact
    def __call__(self, ir_BHW1, vis_BHW1):
        self._check()
        ir, vis = jnp.asarray(ir_BHW1, jnp.float32), jnp.asarray(vis_BHW1, jnp.float32)
        if self.is_initializing():  # parameters are declared as the convs are first reached
            return self.network(self._declare_and_conv, _no_remat, ir, vis)
        conv = functools.partial(self._conv, self.variables["params"])
        return self.network(conv, remat if self.remat else _no_remat, ir, vis)

    # -------------------------------------------------------------- the network, once

    def network(self, conv, segment, ir, vis):
        """Fig. 3 (eqs. 1–5) given `conv(names, x, features, hidden=True)`, one conv (or
        several of the same input, side by side) by layer name, and `segment`, a wrapper for
        the stem, each stage and each head (`remat` or none)."""
        widths = [scaled(c, self.width_multiplier) for c in STAGE_CHANNELS[: self.num_stages]]
        fused = segment(functools.partial(self.stem, conv, widths[0]))(ir, vis)
        ir_feat, vis_feat = ir.astype(self.dtype), vis.astype(self.dtype)
        previous = []
        for n in range(1, self.num_stages + 1):
            stage = segment(functools.partial(self.stage, conv, n, widths))
            fused, ir_feat, vis_feat, previous = stage(fused, ir_feat, vis_feat, previous)
        weights = segment(functools.partial(self.fusion_head, conv))(fused)
        recon_ir = segment(functools.partial(self.recon_head, conv, "ir"))(ir_feat)
        recon_vis = segment(functools.partial(self.recon_head, conv, "vis"))(vis_feat)
        fused_image = weights[..., :1] * ir + weights[..., 1:] * vis  # eq. 4
        return {"fused": fused_image, "weights": weights, "recon_ir": recon_ir, "recon_vis": recon_vis}

    def stem(self, conv, width, ir, vis):
        """IVIFNet's first two layers: F_1 = C²(cat(I1, I2)) (eq. 3)."""
        return conv("ivif_2", conv("ivif_1", jnp.concatenate([ir, vis], -1), width), width)

    def stage(self, conv, n, widths, fused, ir_feat, vis_feat, previous):
        """IFEM stage n (eqs. 1, 3, 5): SHFENet's two layers, then IVIFNet's next pair."""
        if self.interactive:  # both SHFENet layers read F_n: one conv with both kernels
            both = conv((f"shfe_ir_{n}", f"shfe_vis_{n}"), fused, widths[n - 1])  # cat(F'_n, F''_n)
            ir_feat, vis_feat = jnp.split(both, 2, axis=-1)
            delivered = [both]
        else:  # F'_n = C(F'_{n-1}); IVIFNet adds them to its own stream
            ir_feat = conv(f"shfe_ir_{n}", ir_feat, widths[n - 1])
            vis_feat = conv(f"shfe_vis_{n}", vis_feat, widths[n - 1])
            delivered = [fused + ir_feat, fused + vis_feat]
        x = jnp.concatenate(delivered + (previous if self.hierarchical_connection else []), -1)
        if n < self.num_stages:  # F_{n+1} = C²(...)
            x = conv(f"ivif_{2 * n + 2}", conv(f"ivif_{2 * n + 1}", x, widths[n]), widths[n])
        return x, ir_feat, vis_feat, delivered

    def fusion_head(self, conv, x):
        """IVIFNet's last layers: W = C⁴(·), two weight maps (eq. 4)."""
        for i, channels in enumerate(FUSION_HEAD_CHANNELS, start=1):
            x = conv(f"head_{i}", x, scaled(channels, self.width_multiplier))
        logits = conv("head_weights", x, 2, False).astype(jnp.float32)
        if self.weight_activation == "sigmoid":
            return nn.sigmoid(logits)  # two independent maps: W1 + W2 is free (eq. 13)
        if self.weight_activation == "softmax":
            return jax.nn.softmax(logits, axis=-1)
        return logits

    def recon_head(self, conv, source, x):
        """SHFENet's last layers: the reconstructed source, C³(F'_N) (eq. 2)."""
        for i, channels in enumerate(RECON_HEAD_CHANNELS, start=1):
            x = conv(f"recon_{source}_{i}", x, scaled(channels, self.width_multiplier))
        return nn.sigmoid(conv(f"recon_{source}_out", x, 1, False).astype(jnp.float32))

    # ------------------------------------------------------------------ the layers

    def _conv(self, params, names, x, features, hidden=True):
        """One conv, or several of the same input as one (kernels stacked on the output
        axis), in `dtype`, then the activation unless it is an output layer."""
        names = (names,) if isinstance(names, str) else names
        p = [params[name] for name in names]
        kernel = jnp.concatenate([q["kernel"] for q in p], -1).astype(self.dtype)
        bias = jnp.concatenate([q["bias"] for q in p], -1).astype(self.dtype)
        return self.conv(x.astype(self.dtype), kernel, bias,
                         ACTIVATIONS[self.activation] if hidden else None)

    def _declare_and_conv(self, names, x, features, hidden=True):
        names = (names,) if isinstance(names, str) else names
        params = {name: self.param(name, self._conv_init(name), (x.shape[-1], features))
                  for name in names}
        return self._conv(params, names, x, features, hidden)

    def _conv_init(self, name):
        # He init keeps the signal's scale through 16 ReLU layers; the output convs use LeCun.
        kernel_init = nn.initializers.lecun_normal() if name in OUTPUT_LAYERS else nn.initializers.kaiming_normal()

        def init(rng, shape):
            cin, cout = shape
            return {"kernel": kernel_init(rng, (3, 3, cin, cout), self.param_dtype),
                    "bias": jnp.zeros((cout,), self.param_dtype)}
        return init

    def _check(self):
        if not 1 <= self.num_stages <= len(STAGE_CHANNELS):
            raise ConfigError(f"num_stages must be in 1..{len(STAGE_CHANNELS)}, got {self.num_stages}")
        if self.weight_activation not in WEIGHT_ACTIVATIONS:
            raise ConfigError(f"weight_activation must be one of {WEIGHT_ACTIVATIONS}, "
                              f"got {self.weight_activation!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")

    def layers(self) -> dict[str, tuple[int, int]]:
        """(C_in, C_out) of every conv, by name: read from the
        parameters' shapes (no computation)."""
        x = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
        shapes = jax.eval_shape(self.init, jax.random.key(0), x, x)["params"]
        return {name: p["kernel"].shape[2:] for name, p in shapes.items()}

