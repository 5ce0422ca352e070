"""Everything that exists only to make a CPU fast, behind one seam.

* `conv_for(requested)`: the convolution `IFESNet` runs — oneDNN's (`onednn_conv`, through the
  XLA FFI, built by `native`) on a CPU where it builds, XLA's (`model.conv3x3`) everywhere
  else (GPU, TPU) and as the fallback.
* `compiler_options()`: the XLA options of a train step compiled for the CPU (`xla_flags`).
* `configure_process()`: process-wide settings for a CPU training process
  (`host_memory`); called by the command-line entry points, never by the library.
"""
from __future__ import annotations

import functools
import logging

import jax

from ifes_jax.errors import ConfigError

CONV_BACKENDS = ("auto", "xla", "onednn")


def conv_name(requested: str, platform: str | None = None) -> str:
    """"onednn" where asked for or, for "auto", on a CPU where it can be built; else "xla"."""
    from ifes_jax.cpu import native
    if requested not in CONV_BACKENDS:
        raise ConfigError(f"model.conv_backend must be one of {CONV_BACKENDS}, got {requested!r}")
    on_cpu = (platform or jax.default_backend()) == "cpu"
    if requested == "onednn":
        if not on_cpu:
            raise ConfigError("model.conv_backend='onednn' runs on the CPU only")
        if (reason := native.unavailable()) is not None:
            raise ConfigError(f"model.conv_backend='onednn': {reason}")
    if requested == "auto":
        if not on_cpu:
            return "xla"
        if (reason := native.unavailable()) is not None:
            _warn_once(f"oneDNN convolutions unavailable ({reason}); using XLA's")
            return "xla"
        return "onednn"
    return requested


def conv_for(requested: str = "auto", platform: str | None = None):
    """The `conv3x3(x, kernel, bias, activation)` for `model.conv_backend = requested`."""
    if conv_name(requested, platform) == "onednn":
        from ifes_jax.cpu import onednn_conv
        return onednn_conv.conv3x3
    from ifes_jax import model
    return model.conv3x3


def compiler_options(platform: str | None = None) -> dict:
    """XLA options for a train step compiled on this platform ({} off the CPU)."""
    from ifes_jax.cpu import xla_flags
    return xla_flags.training_compiler_options(platform=platform)


def configure_process() -> None:
    """Process-wide settings that make CPU training faster, for a process that can only run
    on the CPU (JAX_PLATFORMS says so, or no accelerator plugin is installed); for entry points
    only, before JAX starts: glibc's setting pays most when made before JAX's CPU client
    starts (a 128² x8 train step is 3.5 % faster than with it made just after,
    docs/benchmarks.md), and no backend may start before `jax.distributed.initialize`."""
    if _cpu_only():
        from ifes_jax.cpu import host_memory
        host_memory.keep_freed_memory()


def _cpu_only() -> bool:
    """Whether JAX can only pick the CPU here, decided without starting a backend."""
    import importlib.util
    import os
    requested = os.environ.get("JAX_PLATFORMS", "").strip()
    if requested:
        return requested.split(",")[0].strip() == "cpu"
    return all(importlib.util.find_spec(name) is None for name in ("jax_plugins", "libtpu"))


@functools.cache
def _warn_once(message: str):
    logging.warning(message)
