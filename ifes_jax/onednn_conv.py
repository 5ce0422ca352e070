"""The network's 3×3 convolutions on the CPU by oneDNN, called from XLA through the FFI.

XLA CPU's own convolutions (Eigen or YNNPACK) run IFESNet's layers 1.2–2.2× slower than
oneDNN forward, 1.6–3.5× slower for the kernel gradient, and compute bfloat16 in float32;
oneDNN (the library PyTorch's CPU convolutions use) runs bfloat16 at twice its float32 rate
(docs/benchmarks.md). `conv3x3` is a stride-1, SAME, NHWC × HWIO convolution whose forward
pass, input gradient and kernel gradient are oneDNN primitives (`onednn_conv.cc`), each an XLA
custom call inside the same compiled program. The bias and a ReLU are applied by the forward
primitive as it writes its output, and the bias gradient comes with the kernel gradient;
everything else (other activations, concatenations, the loss) stays XLA's. For wide float32
layers the kernel gradient is computed as nine oneDNN matrix products over padded, shifted
image rows instead (`GEMM_KERNEL_GRAD_MIN`), which oneDNN 3.2 runs faster than its
kernel-gradient convolution.

The handlers are compiled on first use with the C++ compiler (`$CXX`, default g++) against
the headers of `onednn-devel-cpu-gomp` and jaxlib's FFI headers, and cached by source and
versions in ~/.cache/ifes_jax/onednn (or $IFES_JAX_ONEDNN_CACHE); building takes a few
seconds once. `unavailable()` says why oneDNN cannot be used here (not x86-64 Linux, packages
or compiler missing, the build failed); the model then uses XLA's convolutions.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
TARGETS = ("IfesConvForward", "IfesConvInputGrad", "IfesConvKernelGrad")
LIBRARY_PACKAGE, HEADER_PACKAGE = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"


class Unavailable(RuntimeError):
    """oneDNN convolutions cannot be built or loaded on this machine."""


def _package_file(package: str, suffix: str) -> pathlib.Path:
    try:
        files = importlib.metadata.distribution(package).files or []
    except importlib.metadata.PackageNotFoundError:
        raise Unavailable(f"the {package} package is not installed") from None
    for f in files:
        if str(f).endswith(suffix):
            return pathlib.Path(f.locate()).resolve()
    raise Unavailable(f"the {package} package has no {suffix}")


def _cache_dir() -> pathlib.Path:
    return pathlib.Path(os.path.expanduser(
        os.environ.get("IFES_JAX_ONEDNN_CACHE", "~/.cache/ifes_jax/onednn")))


def build() -> pathlib.Path:
    """The compiled handler library, built into the cache unless it is there already."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise Unavailable(f"oneDNN's pip packages are for x86-64 Linux, not "
                          f"{sys.platform} {platform.machine()}")
    header = _package_file(HEADER_PACKAGE, "oneapi/dnnl/dnnl.hpp")
    library = _package_file(LIBRARY_PACKAGE, "libdnnl.so.3")
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise Unavailable(f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH")
    command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
               f"-I{jax.ffi.include_dir()}", f"-I{header.parents[2]}", str(SOURCE),
               f"-L{library.parent}", f"-l:{library.name}", f"-Wl,-rpath,{library.parent}"]
    key = hashlib.sha256("\0".join(
        [SOURCE.read_text(), *command, importlib.metadata.version("jaxlib"),
         importlib.metadata.version(LIBRARY_PACKAGE)]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"libifes_onednn_conv-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = pathlib.Path(tmp) / target.name
        run = subprocess.run(command + ["-o", str(out)], capture_output=True, text=True)
        if run.returncode != 0:
            lines = run.stderr.strip().splitlines() or ["(no output)"]
            first_error = next((line for line in lines if "error" in line), lines[-1])
            raise Unavailable(f"building {SOURCE.name} failed: {first_error}")
        os.replace(out, target)  # atomic: concurrent builders each write a whole file
    return target


@functools.cache
def _load() -> str | None:
    """Builds, loads and registers the handlers once; the reason they are unusable, or None."""
    try:
        lib = ctypes.cdll.LoadLibrary(str(build()))
    except (Unavailable, OSError) as e:
        return str(e)
    for name in TARGETS:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return None


def unavailable() -> str | None:
    """Why oneDNN convolutions cannot run here, or None when they can."""
    return _load()


def _call(target, results, *operands, **attributes):
    if (reason := _load()) is not None:
        raise Unavailable(reason)
    return jax.ffi.ffi_call(target, results, vmap_method="sequential")(*operands, **attributes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv3x3(x, kernel, bias, relu=False):
    """ReLU (if `relu`) of the stride-1, SAME convolution (cross-correlation) of NHWC `x` with a
    (3, 3, C_in, C_out) `kernel`, plus `bias` (C_out), all of one dtype (float32 or bfloat16),
    by oneDNN: one pass over the output for all three."""
    if (kernel.shape[:2] != (3, 3) or x.shape[3] != kernel.shape[2]
            or bias.shape != kernel.shape[3:] or not x.dtype == kernel.dtype == bias.dtype):
        raise ValueError(f"oneDNN conv3x3: image {x.shape} {x.dtype}, kernel {kernel.shape} "
                         f"{kernel.dtype} and bias {bias.shape} {bias.dtype} do not match")
    out = jax.ShapeDtypeStruct((*x.shape[:3], kernel.shape[3]), x.dtype)
    return _call("IfesConvForward", out, x, kernel, bias, relu=relu)


def _forward(x, kernel, bias, relu):
    y = conv3x3(x, kernel, bias, relu)
    return y, (x, kernel, y if relu else None)


# C_in · C_out from which a float32 kernel gradient is computed as nine matrix products
# (`onednn_conv.cc`, ExecuteGemm) rather than by oneDNN's kernel-gradient convolution. Measured
# at 128² x1, per layer: 256→256 69 → 53 ms, 512→256 143 → 96 ms, 128→128 12 ms both ways;
# train step 1.42 → 1.29 s with this threshold, 1.32 s from 256 · 256 (docs/benchmarks.md).
# bfloat16 keeps the convolution, which runs at twice the products' rate.
GEMM_KERNEL_GRAD_MIN = 128 * 256
# the products run over bands of image rows whose padded copies take about this many bytes
GEMM_BAND_BYTES = 64 << 20


def kernel_grad_by_products(kernel) -> bool:
    """Whether `conv3x3`'s kernel gradient for this kernel is computed as matrix products."""
    return kernel.dtype == jnp.float32 and kernel.shape[2] * kernel.shape[3] >= GEMM_KERNEL_GRAD_MIN


def _backward(relu, saved, cotangent):
    x, kernel, y = saved
    if relu:  # ReLU's gradient: the cotangent where the output is positive
        cotangent = jnp.where(y > 0, cotangent, jnp.zeros_like(cotangent))
    dx = _call("IfesConvInputGrad", jax.ShapeDtypeStruct(x.shape, x.dtype), cotangent, kernel)
    dk, db = _call("IfesConvKernelGrad", (jax.ShapeDtypeStruct(kernel.shape, kernel.dtype),
                                          jax.ShapeDtypeStruct(kernel.shape[3:], kernel.dtype)),
                   x, cotangent,
                   band_bytes=np.int64(GEMM_BAND_BYTES if kernel_grad_by_products(kernel) else 0))
    return dx, dk, db


conv3x3.defvjp(_forward, _backward)
