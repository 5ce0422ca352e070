"""The network's 3×3 convolutions on the CPU by oneDNN, as JAX primitives over XLA FFI calls.

XLA CPU's own convolutions (Eigen or YNNPACK) run IFESNet's layers 1.2–2.2× slower than
oneDNN forward, 1.6–3.5× slower for the kernel gradient, and compute bfloat16 in float32;
oneDNN (the library PyTorch's CPU convolutions use) runs bfloat16 at twice its float32 rate
(docs/benchmarks.md). `conv3x3(x, kernel, bias, activation)` is a stride-1, SAME, NHWC × HWIO
convolution built from three primitives, each lowered to one oneDNN custom call
(`onednn_conv.cc`, built by `native`):

    conv_p(x, k[, b])        y  = x ⋆ k (+ b), with an optional ReLU applied as it is written
    input_grad_p(g, k)       dx = the transpose of x ↦ x ⋆ k, applied to g
    kernel_grad_p(x, g)      dk = the transpose of k ↦ x ⋆ k, applied to g (and db = Σ g)

All three are one trilinear form ⟨x ⋆ k, g⟩ read three ways, so each is bilinear and its JVP and
transposes are the other two: forward mode (jvp, jacfwd, Hessian-vector products), reverse mode
of any order and batching (`vmap` merges a batched image axis into the images' own batch; only
batched kernels, or a batched kernel gradient, loop) all run on oneDNN, inside one compiled XLA
program. The ReLU's JVP masks the tangent with the output's sign, so a training step's backward
pass is the masked cotangent, one input gradient and one kernel gradient that also returns the
bias gradient. For wide float32 layers the kernel gradient is computed as nine oneDNN matrix
products over padded, shifted image rows (`GEMM_KERNEL_GRAD_MIN`), which oneDNN 3.2 runs
faster than its kernel-gradient convolution.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from ifes_jax.cpu import native
from ifes_jax.cpu.native import Unavailable, unavailable  # noqa: F401  (the public surface)

# C_in · C_out from which a float32 kernel gradient is computed as nine matrix products
# (`onednn_conv.cc`, ExecuteGemm) rather than by oneDNN's kernel-gradient convolution
# (measured per layer in docs/benchmarks.md). bfloat16 keeps the convolution, which runs at
# twice the products' rate.
GEMM_KERNEL_GRAD_MIN = 128 * 256
# the products run over bands of image rows whose padded copies take about this many bytes
GEMM_BAND_BYTES = 64 << 20


def kernel_grad_by_products(kernel) -> bool:
    """Whether the kernel gradient for this kernel is computed as matrix products."""
    return kernel.dtype == jnp.float32 and kernel.shape[2] * kernel.shape[3] >= GEMM_KERNEL_GRAD_MIN


def conv3x3(x, kernel, bias, activation=None):
    """`activation(x ⋆ kernel + bias)`: the stride-1, SAME convolution (cross-correlation) of
    NHWC `x` with a (3, 3, C_in, C_out) `kernel`, all of one dtype (float32 or bfloat16), by
    oneDNN. A ReLU is applied by the convolution as it writes its output; any other activation
    (a callable) by XLA afterwards."""
    if (reason := native.unavailable()) is not None:
        raise Unavailable(reason)
    if (x.ndim != 4 or kernel.shape[:2] != (3, 3) or x.shape[3] != kernel.shape[2]
            or bias.shape != kernel.shape[3:] or not x.dtype == kernel.dtype == bias.dtype):
        raise ValueError(f"oneDNN conv3x3: image {x.shape} {x.dtype}, kernel {kernel.shape} "
                         f"{kernel.dtype} and bias {bias.shape} {bias.dtype} do not match")
    relu = activation is jax.nn.relu
    y = conv_p.bind(x, kernel, bias, relu=relu)
    return y if relu or activation is None else activation(y)


# ---------------------------------------------------------------------- the three primitives
# (and the ReLU's tangent map, t ↦ t where y > 0: linear in t, its own transpose. As a
# primitive the mask is computed from the saved output y where the tangent or cotangent is,
# fused into that pass, rather than as a separate pass and a saved mask in the forward.)

conv_p = Primitive("ifes_onednn_conv")
input_grad_p = Primitive("ifes_onednn_conv_input_grad")
kernel_grad_p = Primitive("ifes_onednn_conv_kernel_grad")
kernel_grad_p.multiple_results = True  # [dk] or [dk, db]
relu_tangent_p = Primitive("ifes_relu_tangent")


def _conv(x, k, b=None):
    return conv_p.bind(x, k, b, relu=False) if b is not None else conv_p.bind(x, k, relu=False)


def _input_grad(g, k):
    return input_grad_p.bind(g, k)


def _kernel_grad(x, g, bias):
    return kernel_grad_p.bind(x, g, bias=bias)


def _aval(shape, dtype):
    return jax.core.ShapedArray(tuple(shape), dtype)


conv_p.def_abstract_eval(lambda x, k, *b, relu: _aval((*x.shape[:3], k.shape[3]), x.dtype))
input_grad_p.def_abstract_eval(lambda g, k: _aval((*g.shape[:3], k.shape[2]), g.dtype))
kernel_grad_p.def_abstract_eval(lambda x, g, *, bias: [_aval((3, 3, x.shape[3], g.shape[3]), x.dtype)]
                                + ([_aval(g.shape[3:], x.dtype)] if bias else []))


# ------------------------------------------------------------------------- the FFI calls

def _ffi(target, results, *operands, **attributes):
    return jax.ffi.ffi_call(target, results)(*operands, **attributes)


def _conv_impl(x, k, b=None, *, relu):
    b = jnp.zeros(k.shape[3:], k.dtype) if b is None else b
    return _ffi("IfesConvForward", _aval((*x.shape[:3], k.shape[3]), x.dtype), x, k, b, relu=relu)


def _input_grad_impl(g, k):
    return _ffi("IfesConvInputGrad", _aval((*g.shape[:3], k.shape[2]), g.dtype), g, k)


def _kernel_grad_impl(x, g, *, bias):
    shape = (3, 3, x.shape[3], g.shape[3])
    band = GEMM_BAND_BYTES if kernel_grad_by_products(jax.ShapeDtypeStruct(shape, x.dtype)) else 0
    dk, db = _ffi("IfesConvKernelGrad", (_aval(shape, x.dtype), _aval(shape[3:], x.dtype)),
                  x, g, band_bytes=np.int64(band))
    return [dk, db] if bias else [dk]


for _p, _impl, _multiple in ((conv_p, _conv_impl, False), (input_grad_p, _input_grad_impl, False),
                             (kernel_grad_p, _kernel_grad_impl, True)):
    _p.def_impl(_impl)
    mlir.register_lowering(_p, mlir.lower_fun(_impl, multiple_results=_multiple), platform="cpu")


def _relu_tangent_impl(t, y):
    return jnp.where(y > 0, t, jnp.zeros_like(t))


relu_tangent_p.def_impl(_relu_tangent_impl)
relu_tangent_p.def_abstract_eval(lambda t, y: _aval(t.shape, t.dtype))
mlir.register_lowering(relu_tangent_p, mlir.lower_fun(_relu_tangent_impl, multiple_results=False))
ad.primitive_jvps[relu_tangent_p] = lambda primals, tangents: (
    relu_tangent_p.bind(*primals),
    relu_tangent_p.bind(tangents[0], primals[1]) if _nonzero(tangents[0]) else ad.Zero(primals[0].aval))
ad.primitive_transposes[relu_tangent_p] = lambda ct, t, y: [
    None if type(ct) is ad.Zero else relu_tangent_p.bind(ct, y), None]


# ---------------------------------------------------------- forward mode, by bilinearity

def _nonzero(t):
    return type(t) is not ad.Zero


def _sum_terms(terms, aval):
    terms = [t for t in terms if t is not None]
    return functools.reduce(jnp.add, terms) if terms else ad.Zero(aval)


def _conv_jvp(primals, tangents, *, relu):
    x, k, *b = primals
    dx, dk, *db = tangents
    y = conv_p.bind(*primals, relu=relu)
    bias_t = db[0] if db and _nonzero(db[0]) else None
    terms = [_conv(dx, k) if _nonzero(dx) else None]
    if _nonzero(dk):
        terms.append(_conv(x, dk, bias_t))
    elif bias_t is not None:
        terms.append(jnp.broadcast_to(bias_t, y.shape))
    t = _sum_terms(terms, y.aval)
    if relu and _nonzero(t):  # ReLU's derivative: 1 where the output is positive
        t = relu_tangent_p.bind(t, y)
    return y, t


def _input_grad_jvp(primals, tangents):
    (g, k), (dg, dk) = primals, tangents
    dx = input_grad_p.bind(g, k)
    terms = [_input_grad(dg, k) if _nonzero(dg) else None,
             _input_grad(g, dk) if _nonzero(dk) else None]
    return dx, _sum_terms(terms, dx.aval)


def _kernel_grad_jvp(primals, tangents, *, bias):
    (x, g), (dx, dg) = primals, tangents
    out = kernel_grad_p.bind(x, g, bias=bias)
    from_dg = _kernel_grad(x, dg, bias) if _nonzero(dg) else None  # with Σ dg when bias
    from_dx = _kernel_grad(dx, g, False)[0] if _nonzero(dx) else None
    dk = _sum_terms([from_dg[0] if from_dg else None, from_dx], out[0].aval)
    if not bias:
        return out, [dk]
    return out, [dk, from_dg[1] if from_dg else ad.Zero(out[1].aval)]


ad.primitive_jvps[conv_p] = _conv_jvp
ad.primitive_jvps[input_grad_p] = _input_grad_jvp
ad.primitive_jvps[kernel_grad_p] = _kernel_grad_jvp


# ------------------------------------------------- reverse mode: each one's transposes

def _undefined(v):
    return ad.is_undefined_primal(v)


def _instantiate(ct, aval):
    return jnp.zeros(aval.shape, aval.dtype) if type(ct) is ad.Zero else ct


def _conv_transpose(ct, x, k, *b, relu):
    if relu:
        raise ValueError("a ReLU convolution is not linear: it has no transpose")
    if _undefined(x):  # x ↦ x ⋆ k (no bias: an affine map has no transpose)
        if b or _undefined(k):
            raise ValueError("oneDNN conv: transposed in the image with a bias or kernel unknown")
        return [_input_grad(_instantiate(ct, _aval((*x.aval.shape[:3], k.shape[3]), k.dtype)), k), None]
    ct = _instantiate(ct, _aval((*x.shape[:3], k.aval.shape[3]), x.dtype))
    grads = _kernel_grad(x, ct, bool(b))  # (k, b) ↦ x ⋆ k + b
    return [None, *grads]


def _input_grad_transpose(ct, g, k):
    if _undefined(g):  # <G(g, k), c> = <g, c ⋆ k>
        return [_conv(_instantiate(ct, _aval((*g.aval.shape[:3], k.shape[2]), k.dtype)), k), None]
    ct = _instantiate(ct, _aval((*g.shape[:3], k.aval.shape[2]), g.dtype))
    return [None, _kernel_grad(ct, g, False)[0]]  # <G(g, k), c> = <k, K(c, g)>


def _kernel_grad_transpose(cts, x, g, *, bias):
    ct_k = cts[0]
    ct_b = cts[1] if bias and _nonzero(cts[1]) else None
    if _undefined(g):  # <K(x, g), c_k> + <Σ g, c_b> = <g, x ⋆ c_k + c_b>
        shape = (*x.shape[:3], g.aval.shape[3])
        if type(ct_k) is ad.Zero:
            return [None, jnp.zeros(shape, x.dtype) if ct_b is None else jnp.broadcast_to(ct_b, shape)]
        return [None, _conv(x, ct_k, ct_b)]
    if ct_b is not None:  # Σ g does not depend on x: not linear in x
        raise ValueError("oneDNN conv: the bias gradient transposed in the image")
    ct_k = _instantiate(ct_k, _aval((3, 3, x.aval.shape[3], g.shape[3]), g.dtype))
    return [_input_grad(g, ct_k), None]  # <K(x, g), c> = <x, G(g, c)>


ad.primitive_transposes[conv_p] = _conv_transpose
ad.primitive_transposes[input_grad_p] = _input_grad_transpose
ad.primitive_transposes[kernel_grad_p] = _kernel_grad_transpose


# ------------------------------------------------------------------------------ batching

def _merge_batch(prim, image, dim, others, params):
    """A batched image axis folded into the images' own batch axis: one call."""
    image = jnp.moveaxis(image, dim, 0)
    v, n = image.shape[:2]
    out = prim.bind(image.reshape(v * n, *image.shape[2:]), *others, **params)
    return out.reshape(v, n, *out.shape[1:]), 0


def _loop(prim, args, dims, params):
    """Batched kernels (or a batched kernel gradient): one call per batch element."""
    batched = [jnp.moveaxis(a, d, 0) if d is not None else None for a, d in zip(args, dims)]

    def one(sliced):
        parts = iter(sliced)
        return prim.bind(*[next(parts) if d is not None else a for a, d in zip(args, dims)], **params)

    out = jax.lax.map(one, [a for a in batched if a is not None])
    return out, ([0] * len(out) if prim.multiple_results else 0)


def _conv_batch(args, dims, **params):
    if all(d is None for d in dims[1:]):
        return _merge_batch(conv_p, args[0], dims[0], args[1:], params)
    return _loop(conv_p, args, dims, params)


def _input_grad_batch(args, dims):
    if dims[1] is None:
        return _merge_batch(input_grad_p, args[0], dims[0], args[1:], {})
    return _loop(input_grad_p, args, dims, {})


def _relu_tangent_batch(args, dims):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    t, y = [jnp.moveaxis(a, d, 0) if d is not None else jnp.broadcast_to(a, (size, *a.shape))
            for a, d in zip(args, dims)]
    return relu_tangent_p.bind(t, y), 0


batching.primitive_batchers[relu_tangent_p] = _relu_tangent_batch
batching.primitive_batchers[conv_p] = _conv_batch
batching.primitive_batchers[input_grad_p] = _input_grad_batch
batching.primitive_batchers[kernel_grad_p] = lambda args, dims, **p: _loop(kernel_grad_p, args, dims, p)
