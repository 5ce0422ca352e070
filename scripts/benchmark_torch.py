"""The PyTorch eager reference for scripts/benchmark.py's train-step cases: the same network
(same layer list and parameters), the same loss (eq. 6-13, window mode in closed form with an
11x11 box filter) and Adam with coupled L2, timed the same way (median of repeats after a
first step). Before timing it checks that its forward pass and loss equal the JAX model's on
the same parameters, so the two benchmarks time the same computation.

PyTorch is not a dependency of ifes-jax: pip install torch, then
python scripts/benchmark_torch.py [--out torch.json] [--repeats 3] [--cases quickstart,default,convs]
"""
import argparse
import collections
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from configs import default, quickstart


class TorchIFESNet(torch.nn.Module):
    """IFESNet with the layer names and shapes of `ifes_jax.model.IFESNet.layers()`."""

    def __init__(self, jax_net, params):
        super().__init__()
        self.spec = jax_net
        self.convs = torch.nn.ModuleDict()
        for name, (cin, cout) in jax_net.layers().items():
            conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
            p = params[name]
            conv.weight.data = torch.from_numpy(np.ascontiguousarray(
                np.transpose(np.asarray(p["kernel"]), (3, 2, 0, 1))))
            conv.bias.data = torch.from_numpy(np.asarray(p["bias"]).copy())
            self.convs[name] = conv

    def forward(self, ir, vis):  # NCHW
        c, s = self.convs, self.spec
        n_stages = s.num_stages
        fused = F.relu(c["ivif_2"](F.relu(c["ivif_1"](torch.cat([ir, vis], 1)))))
        ir_feat, vis_feat, previous = ir, vis, []
        for n in range(1, n_stages + 1):
            ir_in, vis_in = (fused, fused) if s.interactive else (ir_feat, vis_feat)
            ir_feat = F.relu(c[f"shfe_ir_{n}"](ir_in))
            vis_feat = F.relu(c[f"shfe_vis_{n}"](vis_in))
            delivered = [ir_feat, vis_feat] if s.interactive else [fused + ir_feat, fused + vis_feat]
            fused = torch.cat(delivered + (previous if s.hierarchical_connection else []), 1)
            previous = delivered
            if n < n_stages:
                fused = F.relu(c[f"ivif_{2 * n + 2}"](F.relu(c[f"ivif_{2 * n + 1}"](fused))))
        w = fused
        for name in ("head_1", "head_2", "head_3"):
            w = F.relu(c[name](w))
        weights = torch.sigmoid(c["head_weights"](w).float())
        recon = {}
        for source, feat in (("ir", ir_feat), ("vis", vis_feat)):
            feat = F.relu(c[f"recon_{source}_2"](F.relu(c[f"recon_{source}_1"](feat))))
            recon[source] = torch.sigmoid(c[f"recon_{source}_out"](feat).float())
        fused_image = weights[:, :1] * ir + weights[:, 1:] * vis
        return fused_image, weights, recon["ir"], recon["vis"]


def decomposition_ssim(fused, ir, vis, k=11, xi=1.7, c=0.03 ** 2, eps=1e-6):
    """Eq. 11 against ξ·C̄·S̄ per 11x11 window (closed form, as ifes_jax.losses)."""
    centre = lambda x: x - x.mean(dim=(2, 3), keepdim=True).detach()
    ir, vis, fused = centre(ir), centre(vis), centre(fused)
    stack = torch.cat([ir, vis, fused, ir * ir, vis * vis, fused * fused, ir * vis, ir * fused,
                       vis * fused], 1)
    m1, m2, mf, m11, m22, mff, m12, m1f, m2f = F.avg_pool2d(stack, k, stride=1).unbind(1)
    var1, var2 = (m11 - m1 * m1).clamp(min=0), (m22 - m2 * m2).clamp(min=0)
    varf = (mff - mf * mf).clamp(min=0)
    cov12, cov1f, cov2f = m12 - m1 * m2, m1f - m1 * mf, m2f - m2 * mf
    s1, s2 = torch.sqrt(var1 + eps), torch.sqrt(var2 + eps)
    cmax = torch.maximum(var1 / s1, var2 / s2)
    norm_sq = (var1 / s1 ** 2 + var2 / s2 ** 2 + 2 * cov12 / (s1 * s2)).clamp(min=0)
    norm = torch.sqrt(norm_sq + eps)
    var_t = (xi * cmax) ** 2 * norm_sq / (norm * norm)
    cov_tf = xi * cmax * (cov1f / s1 + cov2f / s2) / norm
    return ((2 * cov_tf + c) / (var_t + varf + c)).mean(dim=(1, 2))


def total_loss(net, ir, vis, bf16):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        fused, weights, rec_ir, rec_vis = net(ir, vis)
    fused, weights, rec_ir, rec_vis = (t.float() for t in (fused, weights, rec_ir, rec_vis))
    return (((rec_ir - ir) ** 2).mean() + ((rec_vis - vis) ** 2).mean()
            + (1 - decomposition_ssim(fused, ir, vis)).mean()
            + (1 - weights[:, 0] - weights[:, 1]).abs().mean())


def jax_reference(config, crop, batch):
    """(JAX model, its params, inputs, its outputs and loss) for the equivalence check."""
    import jax
    import jax.numpy as jnp
    from ifes_jax import configured, losses
    from ifes_jax.data import synthetic
    net = configured.from_config(config.model)
    ir, vis = synthetic.synthetic_pairs(0, batch, crop, crop)
    ir, vis = jnp.asarray(ir[..., None]), jnp.asarray(vis[..., None])
    params = net.init(jax.random.key(0), ir, vis)["params"]
    out = net.apply({"params": params}, ir, vis)
    loss, _ = losses.ifesnet_loss(out, ir, vis, config.loss)
    return net, jax.device_get(params), np.asarray(ir), np.asarray(vis), np.asarray(out["fused"]), float(loss)


def timed(fn, repeats):
    """(seconds of a first call, median seconds of `repeats` further calls)."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return first, statistics.median(runs)


def case(name, config, crop, batch, bf16, repeats):
    jnet, params, ir, vis, fused_ref, loss_ref = jax_reference(config, crop, batch)
    net = TorchIFESNet(jnet, params)
    ir_t = torch.from_numpy(np.ascontiguousarray(ir.transpose(0, 3, 1, 2)))
    vis_t = torch.from_numpy(np.ascontiguousarray(vis.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        fused = net(ir_t, vis_t)[0].numpy().transpose(0, 2, 3, 1)
        loss = float(total_loss(net, ir_t, vis_t, False))
    np.testing.assert_allclose(fused, fused_ref, atol=1e-4)  # the same network and parameters
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-4)    # and the same loss
    opt = torch.optim.Adam(net.parameters(), lr=config.optim.learning_rate,
                           weight_decay=config.optim.weight_decay)

    def step():
        opt.zero_grad(set_to_none=True)
        total_loss(net, ir_t, vis_t, bf16).backward()
        opt.step()

    first, seconds = timed(step, repeats)
    return {"case": name, "kind": "train step (PyTorch eager)", "seconds": seconds, "first_s": first,
            "images_per_s": batch / seconds}


def case_convs(name, config, crop, batch, repeats):
    """Every convolution of the network alone (NCHW, as a PyTorch model runs them): forward,
    input gradient and weight gradient, summed over the layer list like scripts/benchmark.py's
    `convs` case."""
    from ifes_jax import configured
    counts = collections.Counter(configured.from_config(config.model).layers().values())
    totals = {"forward": 0.0, "input grad": 0.0, "weight grad": 0.0}
    shapes = []
    for (cin, cout), count in counts.items():
        x, w = torch.randn(batch, cin, crop, crop), torch.randn(cout, cin, 3, 3)
        g = torch.randn(batch, cout, crop, crop)
        grad = lambda mask: torch.ops.aten.convolution_backward(  # noqa: E731
            g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
        kinds = {"forward": lambda: F.conv2d(x, w, padding=1),
                 "input grad": lambda: grad([True, False, False]),
                 "weight grad": lambda: grad([False, True, False])}
        flops = 2 * 9 * cin * cout * batch * crop * crop
        shape = {"c_in": cin, "c_out": cout, "count": count}
        with torch.no_grad():
            for kind, fn in kinds.items():
                _, seconds = timed(fn, repeats)
                totals[kind] += count * seconds
                shape[kind + " GFLOP/s"] = flops / seconds / 1e9
        shapes.append(shape)
    flops = sum(2 * 9 * cin * cout * n for (cin, cout), n in counts.items()) * batch * crop * crop
    return [{"case": f"{name} convs, {kind}", "kind": "convolutions (PyTorch eager)",
             "seconds": seconds, "gflop_per_s": flops / seconds / 1e9, "shapes": shapes}
            for kind, seconds in totals.items()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmark_torch.json")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cases", default="quickstart,default,convs")
    args = p.parse_args(argv)
    rows = []
    if "quickstart" in args.cases:
        rows.append(case("quickstart 64² x4", quickstart.get_config(), 64, 4, False, args.repeats))
    if "default" in args.cases:
        for batch in (1, 8):
            for bf16 in (False, True):
                rows.append(case(f"default 128² x{batch} {'bf16' if bf16 else 'f32'}",
                                 default.get_config(), 128, batch, bf16, args.repeats))
    if "convs" in args.cases:
        rows += case_convs("quickstart 64² x4", quickstart.get_config(), 64, 4, 5 * args.repeats)
        rows += case_convs("default 128² x1", default.get_config(), 128, 1, args.repeats)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"PyTorch {torch.__version__} eager, {torch.get_num_threads()} threads\n")
    print("| case | median s | first s | img/s or GFLOP/s |\n|---|---|---|---|")
    for r in rows:
        if "gflop_per_s" in r:
            print(f"| {r['case']} | {r['seconds']:.4f} | | {r['gflop_per_s']:.0f} GFLOP/s |")
        else:
            print(f"| {r['case']} | {r['seconds']:.4f} | {r['first_s']:.2f} | {r['images_per_s']:.2f} img/s |")


if __name__ == "__main__":
    main()
