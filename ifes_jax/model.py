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
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ifes_jax import onednn_conv
from ifes_jax.errors import ConfigError

STAGE_CHANNELS = (64, 128, 256, 256)  # F_n / F'_n / F''_n widths of stages 1..4 (§III.B)
FUSION_HEAD_CHANNELS = (256, 128, 64)  # IVIFNet layers 7-9, then the 2-channel weight layer
RECON_HEAD_CHANNELS = (128, 64)  # SHFENet layers 4-5, then the 1-channel output layer

ACTIVATIONS = {
    "relu": nn.relu,
    "leaky_relu": nn.leaky_relu,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "silu": nn.silu,
}
WEIGHT_ACTIVATIONS = ("sigmoid", "linear", "softmax")


def scaled(channels: int, width_multiplier: float) -> int:
    """Hidden width after `width_multiplier` (never below 1)."""
    return max(1, int(round(channels * width_multiplier)))


class ConvParams(nn.Module):
    """The kernel (3, 3, C_in, C_out) and bias of one 3×3 conv, named as flax's `nn.Conv` names
    them (so checkpoints of either load), applied by `conv3x3`."""

    in_features: int
    features: int
    kernel_init: Callable
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self):
        return {"kernel": self.param("kernel", self.kernel_init,
                                     (3, 3, self.in_features, self.features), self.param_dtype),
                "bias": self.param("bias", nn.initializers.zeros_init(), (self.features,),
                                   self.param_dtype)}


def convolve(x, kernel, padding="SAME"):
    """Stride-1 convolution (cross-correlation) of NHWC `x` with an HWIO `kernel`."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def weight_gradient_by_tiles(x, cotangent, tiles_per_image):
    """∂L/∂kernel of `convolve(x, kernel)` given ∂L/∂output, by XLA's own weight-gradient
    convolution over about `tiles_per_image` tiles of each image (each tile with its 1-pixel
    border) stacked on the batch axis: the same sum over pixels, but XLA CPU runs a weight
    gradient over many small images 1.3–4× faster than over a few large ones
    (docs/benchmarks.md). Images are zero-padded up to whole tiles; zero cotangent there adds
    nothing."""
    b, h, w, cin = x.shape
    cout = cotangent.shape[-1]
    rows = max(1, min(h, round(math.sqrt(tiles_per_image * h / w))))
    cols = max(1, min(w, -(-tiles_per_image // rows)))
    th, tw = -(-h // rows), -(-w // cols)
    x = jnp.pad(x, ((0, 0), (1, 1 + rows * th - h), (1, 1 + cols * tw - w), (0, 0)))
    cotangent = jnp.pad(cotangent, ((0, 0), (0, rows * th - h), (0, cols * tw - w), (0, 0)))
    x_tiles = jnp.stack([x[:, i * th:(i + 1) * th + 2, j * tw:(j + 1) * tw + 2]
                         for i in range(rows) for j in range(cols)], axis=1)
    x_tiles = x_tiles.reshape(b * rows * cols, th + 2, tw + 2, cin)
    g_tiles = cotangent.reshape(b, rows, th, cols, tw, cout).transpose(0, 1, 3, 2, 4, 5)
    g_tiles = g_tiles.reshape(b * rows * cols, th, tw, cout)
    zeros = jnp.zeros((3, 3, cin, cout), x.dtype)
    return jax.vjp(lambda k: convolve(x_tiles, k, "VALID"), zeros)[1](g_tiles)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_tiled_weight_grad(x, kernel, tiles_per_image):
    return convolve(x, kernel)


def _conv_tiled_forward(x, kernel, tiles_per_image):
    return convolve(x, kernel), (x, kernel)


def _conv_tiled_backward(tiles_per_image, saved, cotangent):
    x, kernel = saved
    dx = jax.vjp(lambda x: convolve(x, kernel), x)[1](cotangent)[0]
    return dx, weight_gradient_by_tiles(x, cotangent, tiles_per_image)


_conv_tiled_weight_grad.defvjp(_conv_tiled_forward, _conv_tiled_backward)


MIN_TILES = 4  # fewer tiles per image do not pay for their copies (2 tiles: +3.5 % per step)


def weight_grad_tiles(weight_grad_batch, batch):
    """Tiles per image for `weight_gradient_by_tiles` at this batch size, or 0 (XLA's own)."""
    tiles = -(-weight_grad_batch // batch)
    return tiles if tiles >= MIN_TILES else 0


CONV_BACKENDS = ("auto", "xla", "onednn")


def conv3x3(p, x, dtype, weight_grad_batch=0, backend="xla", relu=False):
    """3×3, stride-1, SAME convolution of NHWC `x` in `dtype`, plus bias, then ReLU if `relu`;
    by XLA, or by oneDNN (`onednn_conv`, which applies bias and ReLU as it writes the output).
    On XLA, with a batch at least `MIN_TILES` times smaller than `weight_grad_batch`, the
    kernel's gradient is computed over about `weight_grad_batch` image tiles
    (`weight_gradient_by_tiles`; the same values)."""
    x, kernel, bias = x.astype(dtype), p["kernel"].astype(dtype), p["bias"].astype(dtype)
    if backend == "onednn":
        return onednn_conv.conv3x3(x, kernel, bias, relu)
    tiles = weight_grad_tiles(weight_grad_batch, x.shape[0])
    y = (_conv_tiled_weight_grad(x, kernel, tiles) if tiles else convolve(x, kernel)) + bias
    return nn.relu(y) if relu else y


def side_by_side(p1, p2):
    """The parameters of one conv that computes two convs of the same input at once: its output
    is cat(conv(x, p1), conv(x, p2)) (kernels stacked on the output axis)."""
    return {k: jnp.concatenate([p1[k], p2[k]], axis=-1) for k in ("kernel", "bias")}


def remat(fn):
    """`fn(params, *inputs)` that keeps only its inputs for the backward pass and recomputes the
    rest there. Unlike `jax.checkpoint`, whose optimisation barriers XLA CPU drops (it then
    merges the recomputation back into the forward pass and saves nothing), the recomputation
    reads the incoming cotangent, so no compiler can schedule it before it is needed."""
    @jax.custom_vjp
    def wrapped(params, *inputs):
        return fn(params, *inputs)

    def forward(params, *inputs):
        return fn(params, *inputs), (params, inputs)

    def backward(saved, cotangent):
        params, inputs = saved
        first = jax.tree.leaves(cotangent)[0].reshape(-1)[0]
        # 0 · c is not folded away for floats (NaN semantics): a real data dependence
        inputs = jax.tree.map(lambda x: x + (0 * first).astype(x.dtype), inputs)
        return jax.vjp(fn, params, *inputs)[1](cotangent)

    wrapped.defvjp(forward, backward)
    return wrapped


class IFESNet(nn.Module):
    """IFESNet (Fig. 3). Call with `ir_BHW1`, `vis_BHW1` in [0, 1]; returns a dict of float32
    arrays: `fused` (B,H,W,1), `weights` (B,H,W,2: W1 for IR, W2 for VIS), `recon_ir`,
    `recon_vis` (B,H,W,1).

    interactive=True (IFEM, eq. 5): SHFENet layer n reads IVIFNet's F_n, and IVIFNet's next
    layers read cat(F'_n, F''_n): features cross both ways at every stage.
    interactive=False ("w/o IFEM", Fig. 9b): the SHFENet branches run on their own
    (F'_n = C(F'_{n-1}), F'_0 = I1) and only deliver one way into IVIFNet, which adds them to
    its own stream: F_{n+1} = C²(cat(F_n + F'_n, F_n + F''_n)). Every conv keeps its output
    width, and IVIFNet and the heads keep their exact shapes; only the input widths of the
    SHFENet stage layers differ (they read the previous SHFENet layer, not F_n).
    hierarchical_connection (Fig. 10): the features delivered by stage n-1 are also
    concatenated into the input of stage n+1 (and of the fusion head after the last stage).
    remat: each segment (the stem, every stage, the fusion head, each reconstruction head)
    keeps only its inputs for the backward pass and recomputes its activations there: the
    same gradients in less memory, for about one more forward pass.
    weight_grad_batch: compute the kernels' gradients over about this many image tiles when
    the batch is small (`conv3x3`): the same gradients, faster on XLA CPU; 0 is XLA's own.
    conv_backend: "xla", or "onednn" (CPU only: `onednn_conv`; 1.3–2.5× faster convolutions
    there, and bfloat16 at twice the float32 rate).

    The parameters are declared per conv (`ConvParams`, the layer names of §III.B); the network
    itself is the pure function of them that `__call__` runs segment by segment.
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
    weight_grad_batch: int = 0
    conv_backend: str = "xla"

    def _widths(self) -> Sequence[int]:
        return [scaled(c, self.width_multiplier) for c in STAGE_CHANNELS[: self.num_stages]]

    def layers(self) -> dict[str, tuple[int, int]]:
        """(C_in, C_out) of every conv, by name, in the order they run."""
        widths = self._widths()
        layers = {"ivif_1": (2, widths[0]), "ivif_2": (widths[0], widths[0])}
        delivered = []
        shfe_in = (widths[0], widths[0]) if self.interactive else (1, 1)
        for n, width in enumerate(widths, start=1):
            layers[f"shfe_ir_{n}"] = (shfe_in[0], width)
            layers[f"shfe_vis_{n}"] = (shfe_in[1], width)
            delivered.append(2 * width)
            stage_in = delivered[-1] + (delivered[-2] if self.hierarchical_connection and n > 1 else 0)
            if n < len(widths):
                layers[f"ivif_{2 * n + 1}"] = (stage_in, widths[n])
                layers[f"ivif_{2 * n + 2}"] = (widths[n], widths[n])
            shfe_in = (widths[n], widths[n]) if self.interactive and n < len(widths) else (width, width)
        cin = stage_in
        for i, c in enumerate(FUSION_HEAD_CHANNELS):
            layers[f"head_{i + 1}"] = (cin, cin := scaled(c, self.width_multiplier))
        layers["head_weights"] = (cin, 2)
        for source in ("ir", "vis"):
            cin = widths[-1]
            for i, c in enumerate(RECON_HEAD_CHANNELS):
                layers[f"recon_{source}_{i + 1}"] = (cin, cin := scaled(c, self.width_multiplier))
            layers[f"recon_{source}_out"] = (cin, 1)
        return layers

    @nn.compact
    def __call__(self, ir_BHW1, vis_BHW1):
        if not 1 <= self.num_stages <= len(STAGE_CHANNELS):
            raise ConfigError(f"num_stages must be in 1..{len(STAGE_CHANNELS)}, got {self.num_stages}")
        if self.weight_activation not in WEIGHT_ACTIVATIONS:
            raise ConfigError(f"weight_activation must be one of {WEIGHT_ACTIVATIONS}, "
                              f"got {self.weight_activation!r}")
        if self.conv_backend not in ("xla", "onednn"):
            raise ConfigError(f"conv_backend must be 'xla' or 'onednn', got {self.conv_backend!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        params = {}
        for name, (cin, cout) in self.layers().items():
            # He init keeps the signal's scale through 16 ReLU layers; the output convs use LeCun.
            output = name in ("head_weights", "recon_ir_out", "recon_vis_out")
            init = nn.initializers.lecun_normal() if output else nn.initializers.kaiming_normal()
            params[name] = ConvParams(cin, cout, init, self.param_dtype, name=name)()
        return self.forward(params, jnp.asarray(ir_BHW1, jnp.float32), jnp.asarray(vis_BHW1, jnp.float32))

    def forward(self, params, ir_BHW1, vis_BHW1):
        """The network as a pure function of its parameters (eqs. 1-5)."""
        act = ACTIVATIONS[self.activation]
        segment = remat if self.remat else (lambda fn: fn)

        def convs(p, x, names, last_linear=False):
            for i, name in enumerate(names):
                linear = last_linear and i == len(names) - 1
                relu = not linear and self.activation == "relu"  # applied by the conv
                x = conv3x3(p[name], x, self.dtype, self.weight_grad_batch, self.conv_backend, relu)
                x = x if linear or relu else act(x)
            return x

        def pick(*names):
            return {n: params[n] for n in names}

        widths = self._widths()
        stem = segment(lambda p, ir, vis: convs(p, jnp.concatenate([ir, vis], -1), ["ivif_1", "ivif_2"]))
        fused = stem(pick("ivif_1", "ivif_2"), ir_BHW1, vis_BHW1)  # F_1

        def stage(n, p, fused, ir_feat, vis_feat, previous):
            if self.interactive:  # both SHFENet layers read F_n: one conv with both kernels
                both = convs({"shfe": side_by_side(p[f"shfe_ir_{n}"], p[f"shfe_vis_{n}"])},
                             fused, ["shfe"])  # cat(F'_n, F''_n)
                ir_feat, vis_feat = jnp.split(both, 2, axis=-1)
                delivered = [both]
            else:
                ir_feat = convs(p, ir_feat, [f"shfe_ir_{n}"])
                vis_feat = convs(p, vis_feat, [f"shfe_vis_{n}"])
                delivered = [fused + ir_feat, fused + vis_feat]
            stage_input = jnp.concatenate(delivered + (previous if self.hierarchical_connection else []), -1)
            if n < len(widths):  # IVIFNet's next pair: F_{n+1}
                stage_input = convs(p, stage_input, [f"ivif_{2 * n + 1}", f"ivif_{2 * n + 2}"])
            return stage_input, ir_feat, vis_feat, delivered

        ir_feat, vis_feat = ir_BHW1.astype(self.dtype), vis_BHW1.astype(self.dtype)
        previous = []
        for n in range(1, len(widths) + 1):
            names = [f"shfe_ir_{n}", f"shfe_vis_{n}"] + (
                [f"ivif_{2 * n + 1}", f"ivif_{2 * n + 2}"] if n < len(widths) else [])
            run = segment(functools.partial(stage, n))
            fused, ir_feat, vis_feat, previous = run(pick(*names), fused, ir_feat, vis_feat, previous)

        head_names = [f"head_{i + 1}" for i in range(len(FUSION_HEAD_CHANNELS))] + ["head_weights"]
        head = segment(lambda p, x: convs(p, x, head_names, last_linear=True))
        weights = self._weight_activation(head(pick(*head_names), fused).astype(jnp.float32))

        recon = {}
        for source, feat in (("ir", ir_feat), ("vis", vis_feat)):
            names = [f"recon_{source}_{i + 1}" for i in range(len(RECON_HEAD_CHANNELS))]
            names.append(f"recon_{source}_out")
            run = segment(functools.partial(convs, names=names, last_linear=True))
            recon[source] = nn.sigmoid(run(pick(*names), feat).astype(jnp.float32))

        fused_image = weights[..., :1] * ir_BHW1 + weights[..., 1:] * vis_BHW1
        return {"fused": fused_image, "weights": weights,
                "recon_ir": recon["ir"], "recon_vis": recon["vis"]}

    def _weight_activation(self, logits):
        if self.weight_activation == "sigmoid":
            return nn.sigmoid(logits)  # two independent maps: W1 + W2 is free (eq. 13)
        if self.weight_activation == "softmax":
            return jax.nn.softmax(logits, axis=-1)
        return logits


def from_config(model_config, half_precision: bool = False) -> IFESNet:
    """An `IFESNet` from the `config.model` block of a config file; `half_precision` computes
    in bfloat16 (parameters stay in `param_dtype`)."""
    return IFESNet(
        num_stages=model_config.num_stages,
        hierarchical_connection=model_config.hierarchical_connection,
        interactive=model_config.interactive,
        width_multiplier=model_config.width_multiplier,
        activation=model_config.activation,
        weight_activation=model_config.weight_activation,
        dtype=jnp.bfloat16 if half_precision else jnp.dtype(model_config.dtype),
        param_dtype=jnp.dtype(model_config.param_dtype),
        remat=model_config.get("remat", False),
        # a CPU lever (XLA CPU's weight-gradient convolution); accelerators keep their own
        weight_grad_batch=(model_config.get("weight_grad_batch", 0)
                           if jax.default_backend() == "cpu" else 0),
        conv_backend=conv_backend(model_config.get("conv_backend", "auto")),
    )


def conv_backend(requested: str, platform: str | None = None) -> str:
    """The convolutions the model runs on: "onednn" where asked for or, for "auto", on a CPU
    where it can be built (`onednn_conv.unavailable`); "xla" otherwise."""
    if requested not in CONV_BACKENDS:
        raise ConfigError(f"model.conv_backend must be one of {CONV_BACKENDS}, got {requested!r}")
    on_cpu = (platform or jax.default_backend()) == "cpu"
    if requested == "onednn":
        if not on_cpu:
            raise ConfigError("model.conv_backend='onednn' runs on the CPU only")
        if (reason := onednn_conv.unavailable()) is not None:
            raise ConfigError(f"model.conv_backend='onednn': {reason}")
    if requested == "auto":
        if not on_cpu:
            return "xla"
        if (reason := onednn_conv.unavailable()) is not None:
            _warn_once(f"oneDNN convolutions unavailable ({reason}); using XLA's")
            return "xla"
        return "onednn"
    return requested


@functools.cache
def _warn_once(message: str):
    logging.warning(message)
