"""oneDNN convolutions through the XLA FFI (`ifes_jax.cpu.onednn_conv`): the forward pass and
both gradients against NumPy references, every JAX transform of the model built by
`from_config` against the same model on XLA's convolutions, the backend choice and the build."""
import os
import platform
import re
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from ifes_jax import configured, cpu, model
from ifes_jax.cpu import native, onednn_conv
from ifes_jax.errors import ConfigError
from ifes_jax.model import IFESNet

ON_X86_LINUX = sys.platform == "linux" and platform.machine() == "x86_64"


def _np_conv(x, k):
    """3×3 SAME cross-correlation as nine shifted matrix products (float64)."""
    h, w = x.shape[1:3]
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(padded[:, i:i + h, j:j + w] @ k.astype(np.float64)[i, j]
               for i in range(3) for j in range(3))


def _np_input_gradient(g, k):
    """∂L/∂x of the same convolution: the cotangent correlated with the flipped, transposed
    kernel (float64)."""
    flipped = k[::-1, ::-1].transpose(0, 1, 3, 2)
    return _np_conv(g, flipped)


def _np_kernel_gradient(x, g):
    """∂L/∂kernel: Σ over pixels of the shifted input times the cotangent (float64)."""
    h, w = x.shape[1:3]
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    return np.array([[np.einsum("bhwc,bhwo->co", padded[:, i:i + h, j:j + w], g)
                      for j in range(3)] for i in range(3)])


def test_onednn_builds_on_x86_linux_with_a_compiler():
    # requirements.txt installs oneDNN there; a broken build must fail here, not fall back
    if not ON_X86_LINUX:
        assert "x86-64 Linux" in onednn_conv.unavailable()
    elif shutil.which(os.environ.get("CXX", "g++")) is None:
        assert "compiler" in onednn_conv.unavailable()
    else:
        assert onednn_conv.unavailable() is None


# where oneDNN should build and does not, the test above fails
needs_onednn = pytest.mark.skipif(onednn_conv.unavailable() is not None,
                                  reason="oneDNN cannot be built here")


@needs_onednn
@pytest.mark.parametrize("by_products", [False, True, "two rows per band"],
                         ids=["kernel_grad_conv", "kernel_grad_products", "kernel_grad_products_banded"])
@pytest.mark.parametrize("shape,cin,cout,relu", [((1, 9, 7), 2, 16, True), ((2, 16, 16), 16, 1, False),
                                                 ((3, 5, 12), 24, 40, True), ((1, 1, 1), 3, 5, False)])
def test_forward_and_gradients_match_numpy(shape, cin, cout, relu, by_products, monkeypatch):
    # the kernel gradient both ways: oneDNN's convolution, and nine matrix products over bands of
    # padded, shifted image rows (chosen for wide float32 layers; here forced for every width),
    # one band per image at these sizes, or two rows per band (and one left over where H is odd)
    monkeypatch.setattr(onednn_conv, "GEMM_KERNEL_GRAD_MIN", 0 if by_products else 10 ** 9)
    if by_products == "two rows per band":
        padded_row_bytes = (shape[2] + 2) * (cin + cout) * 4
        monkeypatch.setattr(onednn_conv, "GEMM_BAND_BYTES", 4 * padded_row_bytes)  # 2 + 2 halo rows
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape + (cin,)).astype(np.float32)
    k = (rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    g = rng.standard_normal(shape + (cout,)).astype(np.float32)
    conv = jax.jit(lambda x, k, b: onednn_conv.conv3x3(x, k, b, jax.nn.relu if relu else None))
    y, vjp = jax.vjp(conv, jnp.asarray(x), jnp.asarray(k), jnp.asarray(b))
    dx, dk, db = vjp(jnp.asarray(g))
    pre = _np_conv(x, k) + b
    g_pre = g * (pre > 0) if relu else g  # ReLU passes the cotangent where its input is positive
    np.testing.assert_allclose(y, np.maximum(pre, 0) if relu else pre, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, _np_input_gradient(g_pre, k), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk, _np_kernel_gradient(x, g_pre), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(db, g_pre.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-4)


def test_kernel_gradient_by_products_for_wide_float32_layers_only():
    wide, narrow = jnp.zeros((3, 3, 256, 128)), jnp.zeros((3, 3, 128, 128))
    assert onednn_conv.kernel_grad_by_products(wide)
    assert not onednn_conv.kernel_grad_by_products(narrow)
    assert not onednn_conv.kernel_grad_by_products(wide.astype(jnp.bfloat16))  # oneDNN's conv is faster


@needs_onednn
def test_bfloat16_matches_numpy_to_bfloat16_precision():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 12, 10, 32)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((3, 3, 32, 16)) / 17, jnp.bfloat16)
    b = jnp.asarray(rng.standard_normal(16), jnp.bfloat16)
    g = jnp.asarray(rng.standard_normal((2, 12, 10, 16)), jnp.bfloat16)
    y, vjp = jax.vjp(onednn_conv.conv3x3, x, k, b)
    dx, dk, db = vjp(g)
    assert y.dtype == dx.dtype == dk.dtype == db.dtype == jnp.bfloat16
    f64 = lambda a: np.asarray(a.astype(jnp.float32), np.float64)  # noqa: E731
    # inputs are exact in bfloat16; accumulation is float32, the output rounded to 8 bits
    for got, want in [(y, _np_conv(f64(x), f64(k)) + f64(b)),
                      (dx, _np_input_gradient(f64(g), f64(k))),
                      (dk, _np_kernel_gradient(f64(x), f64(g))), (db, f64(g).sum(axis=(0, 1, 2)))]:
        np.testing.assert_allclose(f64(got), want, rtol=1e-2, atol=1e-2 * np.abs(want).max())


@needs_onednn
@pytest.mark.parametrize("interactive", [True, False])
def test_model_gradients_equal_those_of_xla_convolutions(interactive):
    rng = np.random.default_rng(2)
    ir = jnp.asarray(rng.uniform(size=(2, 19, 23, 1)), jnp.float32)
    vis = jnp.asarray(rng.uniform(size=(2, 19, 23, 1)), jnp.float32)
    kw = dict(width_multiplier=0.125, interactive=interactive, hierarchical_connection=True)
    params = _jit(IFESNet(**kw).init)(jax.random.key(0), ir, vis)["params"]

    def grads(backend):
        net = IFESNet(conv=cpu.conv_for(backend), **kw)
        def loss(p):
            out = net.apply({"params": p}, ir, vis)
            return jnp.mean(jnp.square(out["fused"]) + out["recon_ir"])
        return _jit(jax.grad(loss))(params)

    xla, onednn = grads("xla"), grads("onednn")
    for a, b in zip(jax.tree.leaves(xla), jax.tree.leaves(onednn)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


@needs_onednn
def test_vmap_over_an_extra_batch_axis():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((3, 2, 8, 8, 4)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 4, 6)), jnp.float32)
    b = jnp.asarray(rng.standard_normal(6), jnp.float32)
    got = jax.vmap(onednn_conv.conv3x3, in_axes=(0, None, None))(x, k, b)
    for i in range(3):
        np.testing.assert_allclose(got[i], _np_conv(np.asarray(x[i]), np.asarray(k)) + np.asarray(b),
                                   rtol=1e-5, atol=1e-5)


def test_mismatched_operands_are_an_error():
    with pytest.raises(ValueError, match="do not match"):
        onednn_conv.conv3x3(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 2, 5)), jnp.zeros(5))


def test_backend_choice():
    assert cpu.conv_name("xla") == "xla"
    assert cpu.conv_name("auto", platform="gpu") == "xla"
    assert cpu.conv_for("auto", platform="gpu") is model.conv3x3
    with pytest.raises(ConfigError, match="CPU only"):
        cpu.conv_name("onednn", platform="gpu")
    with pytest.raises(ConfigError, match="conv_backend must be one of"):
        cpu.conv_name("mkl")
    expected = "onednn" if onednn_conv.unavailable() is None else "xla"
    assert cpu.conv_name("auto", platform="cpu") == expected


def test_a_failed_build_names_its_cause(monkeypatch, tmp_path):
    monkeypatch.setenv("IFES_JAX_ONEDNN_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(onednn_conv.Unavailable, match="no C.. compiler|x86-64 Linux|package"):
        native.build()
    assert not any(tmp_path.iterdir())  # nothing half-written


@needs_onednn
def test_a_cached_library_that_no_longer_matches_its_digest_is_rebuilt(monkeypatch, tmp_path):
    built = native.build()  # the suite's cached library, copied with its digest (one g++ run less)
    for path in (built, native._digest_path(built)):
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setenv("IFES_JAX_ONEDNN_CACHE", str(tmp_path))
    library = native.build()
    assert library == tmp_path / built.name
    good = library.read_bytes()
    library.write_bytes(good[:1000] + bytes(64) + good[1064:])  # bytes flipped on disk
    assert native.build() == library and library.read_bytes() == good
    library.with_name(library.name + ".sha256").unlink()  # no recorded digest: not trusted either
    assert not native._intact(library)


# ------------------------------------- every transform through the model built by from_config

def _jit(fn):
    """`fn` compiled unoptimised: these programs run once on images of 14 x 12, where compiling
    is the cost (run eagerly, every primitive would be compiled on its own)."""
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})


def _models():
    """The quickstart-width model on the default CPU path and on XLA's, with parameters."""
    config = quickstart.get_config().model
    config.width_multiplier = 0.0625
    default = configured.from_config(config)
    config.conv_backend = "xla"
    reference = configured.from_config(config)
    rng = np.random.default_rng(4)
    ir = jnp.asarray(rng.uniform(size=(2, 14, 12, 1)), jnp.float32)
    vis = jnp.asarray(rng.uniform(size=(2, 14, 12, 1)), jnp.float32)
    params = _jit(default.init)(jax.random.key(0), ir, vis)["params"]
    return default, reference, params, ir, vis


def _objective(net, ir, vis):
    def f(params):
        out = net.apply({"params": params}, ir, vis)
        return jnp.mean(out["fused"] ** 2) + jnp.mean(out["recon_ir"] * out["recon_vis"])
    return f


def _close(a, b, rtol=2e-4):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * float(np.abs(np.asarray(y)).max()))


@needs_onednn
def test_from_config_picks_onednn_on_the_cpu():
    default, reference, *_ = _models()
    assert default.conv is onednn_conv.conv3x3 and reference.conv is model.conv3x3


@needs_onednn
def test_grad_and_jvp_of_the_default_cpu_model_equal_the_xla_path():
    default, reference, params, ir, vis = _models()
    _close(_jit(jax.grad(_objective(default, ir, vis)))(params),
           _jit(jax.grad(_objective(reference, ir, vis)))(params))
    tangent = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
    jvp = lambda net: lambda p, t: jax.jvp(_objective(net, ir, vis), (p,), (t,))  # noqa: E731
    _close(_jit(jvp(default))(params, tangent), _jit(jvp(reference))(params, tangent))
    # the image too: forward mode through the inputs (a Jacobian column of the fused image)
    column = lambda net: _jit(lambda x: jax.jvp(  # noqa: E731
        lambda y: net.apply({"params": params}, y, vis)["fused"], (x,), (jnp.ones_like(x),))[1])
    _close(column(default)(ir), column(reference)(ir))


@needs_onednn
def test_hessian_vector_products_of_the_default_cpu_model_equal_the_xla_path():
    default, reference, params, ir, vis = _models()
    tangent = jax.tree.map(lambda p: jnp.full_like(p, 0.05), params)

    def forward_over_reverse(net):
        return lambda p: jax.jvp(jax.grad(_objective(net, ir, vis)), (p,), (tangent,))[1]

    def reverse_over_reverse(net):
        grad = jax.grad(_objective(net, ir, vis))
        return jax.grad(lambda p: sum(jnp.vdot(g, t) for g, t in zip(
            jax.tree.leaves(grad(p)), jax.tree.leaves(tangent))))

    for hvp in (forward_over_reverse, reverse_over_reverse):
        _close(_jit(hvp(default))(params), _jit(hvp(reference))(params), rtol=1e-3)


@needs_onednn
def test_vmap_of_the_default_cpu_model_is_batched_not_sequential():
    default, reference, params, ir, vis = _models()
    stacked = jnp.stack([ir, vis, 0.5 * ir])  # (3, 2, H, W, 1): a batch of batches
    fuse = lambda net: jax.vmap(lambda x: net.apply({"params": params}, x, vis)["fused"])  # noqa: E731
    _close(_jit(fuse(default))(stacked), _jit(fuse(reference))(stacked))
    jaxpr = str(jax.make_jaxpr(fuse(default))(stacked))
    assert "while" not in jaxpr and "scan" not in jaxpr  # one call per layer, all 6 images
    assert re.search(r"f32\[6,14,12,\d+\] = ifes_onednn_conv\[", jaxpr)
    # per-example gradients: vmap of grad (kernel gradients batched over the examples)
    per_example = lambda net: jax.vmap(  # noqa: E731
        lambda i, v: jax.grad(_objective(net, i[None], v[None]))(params))
    _close(_jit(per_example(default))(ir, vis), _jit(per_example(reference))(ir, vis))
