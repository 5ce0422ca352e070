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

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

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
    """

    num_stages: int = 3
    hierarchical_connection: bool = False
    interactive: bool = True
    width_multiplier: float = 1.0
    activation: str = "relu"
    weight_activation: str = "sigmoid"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _conv(self, features, activation="default", name=None):
        """A 3×3, stride-1, SAME conv named `name`, then the activation (none if None)."""
        act = ACTIVATIONS[self.activation] if activation == "default" else activation
        # He init keeps the signal's scale through 16 ReLU layers; the output convs use LeCun.
        init = nn.initializers.kaiming_normal() if act else nn.initializers.lecun_normal()
        conv = nn.Conv(features, (3, 3), padding="SAME", kernel_init=init, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=name)
        return (lambda x: act(conv(x))) if act else conv

    def _widths(self) -> Sequence[int]:
        return [scaled(c, self.width_multiplier) for c in STAGE_CHANNELS[: self.num_stages]]

    @nn.compact
    def __call__(self, ir_BHW1, vis_BHW1):
        if not 1 <= self.num_stages <= len(STAGE_CHANNELS):
            raise ConfigError(f"num_stages must be in 1..{len(STAGE_CHANNELS)}, got {self.num_stages}")
        if self.weight_activation not in WEIGHT_ACTIVATIONS:
            raise ConfigError(f"weight_activation must be one of {WEIGHT_ACTIVATIONS}, "
                              f"got {self.weight_activation!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        ir_BHW1 = jnp.asarray(ir_BHW1, jnp.float32)
        vis_BHW1 = jnp.asarray(vis_BHW1, jnp.float32)
        widths = self._widths()

        x = jnp.concatenate([ir_BHW1, vis_BHW1], axis=-1).astype(self.dtype)
        fused = self._conv(widths[0], name="ivif_1")(x)
        fused = self._conv(widths[0], name="ivif_2")(fused)  # F_1
        ir_feat, vis_feat = ir_BHW1.astype(self.dtype), vis_BHW1.astype(self.dtype)
        delivered = []  # what each stage hands to IVIFNet: [F'_n, F''_n] (or their sum with F_n)
        for n, width in enumerate(widths, start=1):
            ir_in, vis_in = (fused, fused) if self.interactive else (ir_feat, vis_feat)
            ir_feat = self._conv(width, name=f"shfe_ir_{n}")(ir_in)
            vis_feat = self._conv(width, name=f"shfe_vis_{n}")(vis_in)
            if self.interactive:
                delivered.append([ir_feat, vis_feat])
            else:
                delivered.append([fused + ir_feat, fused + vis_feat])
            stage_input = self._stage_input(delivered)
            if n < len(widths):
                layer = 2 * n + 1  # IVIFNet layer index of the pair that follows stage n
                fused = self._conv(widths[n], name=f"ivif_{layer}")(stage_input)
                fused = self._conv(widths[n], name=f"ivif_{layer + 1}")(fused)  # F_{n+1}

        weights = stage_input
        for i, c in enumerate(FUSION_HEAD_CHANNELS):
            weights = self._conv(scaled(c, self.width_multiplier), name=f"head_{i + 1}")(weights)
        weights = self._conv(2, activation=None, name="head_weights")(weights).astype(jnp.float32)
        weights = self._weight_activation(weights)

        recon = {}
        for source, feat in (("ir", ir_feat), ("vis", vis_feat)):
            for i, c in enumerate(RECON_HEAD_CHANNELS):
                feat = self._conv(scaled(c, self.width_multiplier), name=f"recon_{source}_{i + 1}")(feat)
            out = self._conv(1, activation=None, name=f"recon_{source}_out")(feat)
            recon[source] = nn.sigmoid(out.astype(jnp.float32))

        fused_image = weights[..., :1] * ir_BHW1 + weights[..., 1:] * vis_BHW1
        return {"fused": fused_image, "weights": weights,
                "recon_ir": recon["ir"], "recon_vis": recon["vis"]}

    def _stage_input(self, delivered):
        """cat of this stage's delivered features, plus the previous stage's with HC (Fig. 10)."""
        parts = list(delivered[-1])
        if self.hierarchical_connection and len(delivered) > 1:
            parts += delivered[-2]
        return jnp.concatenate(parts, axis=-1)

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
    )
