"""ifes-jax: IFESNet (interactive feature embedding for infrared and visible image fusion) in JAX.

The inference API, imported lazily so that `import ifes_jax` stays cheap:

    model = ifes_jax.load_model("runs/quickstart")      # a workdir or checkpoint folder
    out = model(ir, vis)                                  # gray (H, W) / (B, H, W) / (B, H, W, 1)
    out = ifes_jax.fuse_color(model, ir, vis_rgb)         # colour visible image, fused on Y
    out["fused"], out["weights"]
"""
__all__ = ["Fuser", "fuse_color", "load_model"]


def __getattr__(name):
    if name in ("Fuser", "fuse_color"):
        from ifes_jax import fuse
        return getattr(fuse, name)
    if name == "load_model":
        from ifes_jax.fuse import load
        return load
    raise AttributeError(f"module 'ifes_jax' has no attribute {name!r}")
