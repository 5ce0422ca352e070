"""IFESNet (paper §III.B–C): shapes of every variant, parameter count, translation equivariance."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifes_jax import cpu
from ifes_jax.cpu import native
from ifes_jax.model import IFESNet


def _init_apply(net, ir, vis, seed=0):
    params = net.init(jax.random.key(seed), ir, vis)["params"]
    return params, net.apply({"params": params}, ir, vis)


def _n_params(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _conv_params(cin, cout):
    return 3 * 3 * cin * cout + cout


@pytest.mark.parametrize("num_stages,hc,interactive",
                         list(itertools.product([1, 2, 3, 4], [False, True], [True, False])))
def test_every_variant_runs_on_odd_sizes(num_stages, hc, interactive):
    net = IFESNet(num_stages=num_stages, hierarchical_connection=hc, interactive=interactive,
                  width_multiplier=0.0625)
    rng = np.random.default_rng(0)
    ir = jnp.asarray(rng.uniform(size=(2, 37, 53, 1)), jnp.float32)
    vis = jnp.asarray(rng.uniform(size=(2, 37, 53, 1)), jnp.float32)
    _, out = _init_apply(net, ir, vis)
    assert out["fused"].shape == (2, 37, 53, 1)
    assert out["weights"].shape == (2, 37, 53, 2)
    assert out["recon_ir"].shape == out["recon_vis"].shape == (2, 37, 53, 1)
    for v in out.values():
        assert v.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(v)))


def _np_conv(x, p):
    """A 3×3 SAME cross-correlation plus bias, as nine shifted matrix products (float64)."""
    height, width = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = sum(padded[:, i:i + height, j:j + width] @ np.asarray(p["kernel"], np.float64)[i, j]
              for i in range(3) for j in range(3))
    return out + np.asarray(p["bias"], np.float64)


def _np_ifesnet(params, ir, vis, num_stages, hc, interactive):
    """IFESNet written out conv by conv from eqs. 1–5 (NumPy, float64), one SHFENet conv per
    stream and stage: the reference for the model, which runs both streams' convs as one."""
    relu = lambda x: np.maximum(x, 0.0)  # noqa: E731
    sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    conv = lambda name, x: relu(_np_conv(x, params[name]))  # noqa: E731
    cat = lambda *xs: np.concatenate(xs, axis=-1)  # noqa: E731
    f = conv("ivif_2", conv("ivif_1", cat(ir, vis)))  # F_1
    a, b, previous = ir, vis, []
    for n in range(1, num_stages + 1):
        if interactive:  # F'_n = C(F_n), F''_n = C(F_n)
            a, b = conv(f"shfe_ir_{n}", f), conv(f"shfe_vis_{n}", f)
            delivered = [a, b]
        else:  # F'_n = C(F'_{n-1}); IVIFNet adds them to its own stream
            a, b = conv(f"shfe_ir_{n}", a), conv(f"shfe_vis_{n}", b)
            delivered = [f + a, f + b]
        x = cat(*delivered, *(previous if hc else []))
        previous = delivered
        f = conv(f"ivif_{2 * n + 2}", conv(f"ivif_{2 * n + 1}", x)) if n < num_stages else x
    w = sigmoid(_np_conv(conv("head_3", conv("head_2", conv("head_1", f))), params["head_weights"]))
    recon = {s: sigmoid(_np_conv(conv(f"recon_{s}_2", conv(f"recon_{s}_1", x)), params[f"recon_{s}_out"]))
             for s, x in (("ir", a), ("vis", b))}
    return {"fused": w[..., :1] * ir + w[..., 1:] * vis, "weights": w,
            "recon_ir": recon["ir"], "recon_vis": recon["vis"]}


ONEDNN = pytest.param("onednn", marks=pytest.mark.skipif(  # test_onednn_conv checks it builds
    native.unavailable() is not None, reason="oneDNN cannot be built here"))


@pytest.mark.parametrize("backend", ["xla", ONEDNN])
@pytest.mark.parametrize("num_stages,hc,interactive",
                         [(3, False, True), (2, True, True), (3, False, False), (4, True, False)])
def test_forward_matches_a_numpy_reference(num_stages, hc, interactive, backend):
    net = IFESNet(num_stages=num_stages, hierarchical_connection=hc, interactive=interactive,
                  width_multiplier=0.0625, conv=cpu.conv_for(backend))
    rng = np.random.default_rng(5)
    ir = rng.uniform(size=(2, 11, 9, 1)).astype(np.float32)
    vis = rng.uniform(size=(2, 11, 9, 1)).astype(np.float32)
    params, out = _init_apply(net, ir, vis)
    expected = _np_ifesnet(jax.device_get(params), ir.astype(np.float64), vis.astype(np.float64),
                           num_stages, hc, interactive)
    for key, value in expected.items():
        np.testing.assert_allclose(out[key], value, rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("activation", ["sigmoid", "linear", "softmax"])
def test_fused_image_is_weighted_sum_of_sources(activation):
    net = IFESNet(width_multiplier=0.0625, weight_activation=activation)
    rng = np.random.default_rng(1)
    ir = rng.uniform(size=(1, 16, 20, 1)).astype(np.float32)
    vis = rng.uniform(size=(1, 16, 20, 1)).astype(np.float32)
    _, out = _init_apply(net, ir, vis)
    w = np.asarray(out["weights"])
    np.testing.assert_allclose(out["fused"][..., 0], w[..., 0] * ir[..., 0] + w[..., 1] * vis[..., 0],
                               rtol=1e-6, atol=1e-6)
    if activation == "sigmoid":
        assert np.all((w > 0) & (w < 1))
    if activation == "softmax":
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)


def test_paper_default_parameter_count_matches_layer_list():
    # §III.B: IVIFNet 64,64,128,128,256,256,256,128,64,(2); SHFENet 64,128,256,128,64,1 (x2)
    ivif = [(2, 64), (64, 64), (128, 128), (128, 128), (256, 256), (256, 256),  # F1, F2, F3
            (512, 256), (256, 128), (128, 64), (64, 2)]                          # fusion head
    shfe = [(64, 64), (128, 128), (256, 256), (256, 128), (128, 64), (64, 1)]
    expected = sum(_conv_params(*c) for c in ivif) + 2 * sum(_conv_params(*c) for c in shfe)
    x = jnp.zeros((1, 8, 8, 1))
    params = jax.eval_shape(IFESNet().init, jax.random.key(0), x, x)["params"]
    assert _n_params(params) == expected
    assert len(params) == 10 + 2 * 6  # 22 conv layers


def test_without_ifem_keeps_fusion_layers_and_differs_only_in_shfenet_inputs():
    x = jnp.zeros((1, 8, 8, 1))
    shapes = lambda net: jax.tree.map(lambda a: a.shape,
                                      jax.eval_shape(net.init, jax.random.key(0), x, x)["params"])
    ifem, plain = shapes(IFESNet()), shapes(IFESNet(interactive=False))
    assert ifem.keys() == plain.keys()
    for name in ifem:
        if name.startswith("shfe_"):
            # SHFENet stage n reads F'_{n-1} (the image for n = 1) instead of F_n
            cin = {"1": 1, "2": 64, "3": 128}[name[-1]]
            assert plain[name]["kernel"] == (3, 3, cin, ifem[name]["kernel"][-1])
        else:
            assert plain[name] == ifem[name], name


def test_hierarchical_connection_adds_previous_stage_to_later_inputs():
    x = jnp.zeros((1, 8, 8, 1))
    params = jax.eval_shape(IFESNet(num_stages=4, hierarchical_connection=True).init,
                            jax.random.key(0), x, x)["params"]
    # stage-3 input (after stage 2) = cat(stage 2: 128+128, stage 1: 64+64)
    assert params["ivif_5"]["kernel"].shape[2] == 2 * 128 + 2 * 64
    assert params["ivif_3"]["kernel"].shape[2] == 2 * 64  # nothing before stage 1
    assert params["head_1"]["kernel"].shape[2] == 2 * 256 + 2 * 256


def test_network_is_fully_convolutional():
    """Shifting the inputs shifts the outputs, away from the zero-padded border."""
    net = IFESNet(width_multiplier=0.0625)
    rng = np.random.default_rng(2)
    ir = rng.uniform(size=(1, 96, 96, 1)).astype(np.float32)
    vis = rng.uniform(size=(1, 96, 96, 1)).astype(np.float32)
    params, out = _init_apply(net, ir, vis)
    dy, dx = 5, -7
    shift = lambda a: np.roll(a, (dy, dx), axis=(1, 2))
    out_shifted = net.apply({"params": params}, shift(ir), shift(vis))
    margin = 16 + 7  # receptive radius of the deepest path (16 convs) plus the shift
    inner = (slice(None), slice(margin, -margin), slice(margin, -margin))
    for key in out:
        np.testing.assert_allclose(np.asarray(out_shifted[key])[inner], shift(np.asarray(out[key]))[inner],
                                   rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    net = IFESNet(width_multiplier=0.0625, dtype=jnp.bfloat16)
    x = jnp.full((1, 12, 12, 1), 0.5)
    params, out = _init_apply(net, x, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert out["fused"].dtype == jnp.float32


def test_invalid_variant_is_a_clear_error():
    x = jnp.zeros((1, 8, 8, 1))
    with pytest.raises(ValueError, match="num_stages"):
        IFESNet(num_stages=5).init(jax.random.key(0), x, x)
    with pytest.raises(ValueError, match="weight_activation"):
        IFESNet(weight_activation="tanh").init(jax.random.key(0), x, x)


def _grad_fn(net, ir, vis):
    def loss(params):
        out = net.apply({"params": params}, ir, vis)
        return jnp.mean((out["fused"] - vis) ** 2) + jnp.mean(out["recon_ir"] * out["recon_vis"])
    return jax.jit(jax.grad(loss))


@pytest.mark.parametrize("hc,interactive", [(False, True), (True, False)])
def test_remat_gives_the_same_gradients(hc, interactive):
    rng = np.random.default_rng(3)
    ir = jnp.asarray(rng.uniform(size=(2, 20, 24, 1)), jnp.float32)
    vis = jnp.asarray(rng.uniform(size=(2, 20, 24, 1)), jnp.float32)
    kw = dict(num_stages=3, hierarchical_connection=hc, interactive=interactive, width_multiplier=0.125)
    params = IFESNet(**kw).init(jax.random.key(0), ir, vis)["params"]
    plain = _grad_fn(IFESNet(**kw), ir, vis)(params)
    remat = _grad_fn(IFESNet(remat=True, **kw), ir, vis)(params)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_remat_keeps_less_for_the_backward_pass():
    """XLA's own accounting of the compiled gradient: remat must really lower the temporary
    memory (jax.checkpoint alone does not on XLA CPU, which drops its barriers)."""
    x = jnp.zeros((1, 128, 128, 1))
    temp = {}
    for remat in (False, True):
        net = IFESNet(width_multiplier=0.25, remat=remat)
        params = jax.eval_shape(net.init, jax.random.key(0), x, x)["params"]
        compiled = _grad_fn(net, x, x).lower(params).compile()
        temp[remat] = compiled.memory_analysis().temp_size_in_bytes
    assert temp[True] < 0.75 * temp[False], temp
