"""The XLA compiler options of the train step: its own compilation's, not the process's.

jaxlib 0.10 lowers every CPU convolution to YNNPACK. For a training step — forward, input- and
weight-gradient convolutions together — XLA's own (Eigen) convolutions are faster on the CPUs
we measured: +20 % steps/s for the quickstart model, 2.4–2.7× for the full-width model at
batch 4 and 8 (YNNPACK falls off a cliff there), see docs/benchmarks.md. Inference keeps
YNNPACK, which is 4–25 % faster for the forward pass alone. The train step is compiled with
`jax.jit(..., compiler_options=training_compiler_options())`, so one process trains on one
convolution path and fuses on the other, whatever XLA_FLAGS it started with. Where the model's
convolutions are oneDNN's (`model.conv_backend`, the CPU default where it builds), the step has
no XLA convolution left and the options change nothing.
"""
from __future__ import annotations

import importlib.metadata
import os

import jax

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# jaxlib 0.10's default YNNPACK fusion types less individual convolutions: what the flag
# `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` leaves
TRAINING_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def training_options_apply() -> bool:
    """Whether this jaxlib knows the options (they are experimental: an unknown one is an error)."""
    try:
        return importlib.metadata.version("jaxlib").startswith("0.10.")
    except importlib.metadata.PackageNotFoundError:
        return False


def training_compiler_options(environ=os.environ, platform: str | None = None) -> dict:
    """`TRAINING_CPU_OPTIONS` for a train step compiled for the CPU, or {} where they do not
    apply: another backend, another jaxlib, a user who chose the convolution path in XLA_FLAGS,
    or IFES_JAX_DEFAULT_XLA=1 (XLA's defaults throughout)."""
    platform = platform or jax.default_backend()
    if (platform != "cpu" or environ.get("IFES_JAX_DEFAULT_XLA") == "1"
            or YNN_FLAG in environ.get("XLA_FLAGS", "") or not training_options_apply()):
        return {}
    return dict(TRAINING_CPU_OPTIONS)
