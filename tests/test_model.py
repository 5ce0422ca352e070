"""IFESNet (paper §III.B–C): shapes of every variant, parameter count, translation equivariance."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
