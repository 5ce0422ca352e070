"""XLA flags that the training entry points set before JAX starts its CPU backend.

jaxlib 0.10 lowers every CPU convolution to YNNPACK. For a training step — forward, input- and
weight-gradient convolutions together — XLA's own (Eigen) convolutions are faster on the CPUs
we measured: +20 % steps/s for the quickstart model, 2.4–2.5× for the full-width model at
batch 4 and 8 (YNNPACK falls off a cliff there), see docs/benchmarks.md. Inference keeps
YNNPACK, which is 4–25 % faster for the forward pass alone. Flags are process-wide, so only
processes that train set them.
"""
from __future__ import annotations

import importlib.metadata
import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
TRAINING_CPU_FLAGS = (f"{YNN_FLAG}=-individual_convolution",)


def training_flags_apply() -> bool:
    """Whether this jaxlib knows the flags (they are experimental: an unknown flag aborts XLA)."""
    try:
        return importlib.metadata.version("jaxlib").startswith("0.10.")
    except importlib.metadata.PackageNotFoundError:
        return False


def use_training_flags(environ=os.environ) -> None:
    """Add `TRAINING_CPU_FLAGS` to XLA_FLAGS, unless the user already chose the convolution
    path or sets IFES_JAX_DEFAULT_XLA=1. Call before JAX initialises a backend."""
    flags = environ.get("XLA_FLAGS", "")
    if environ.get("IFES_JAX_DEFAULT_XLA") == "1" or YNN_FLAG in flags or not training_flags_apply():
        return
    environ["XLA_FLAGS"] = " ".join([flags, *TRAINING_CPU_FLAGS]).strip()
