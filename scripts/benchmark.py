"""Benchmarks: how fast every part of ifes-jax runs, and how close to the hardware.

python scripts/benchmark.py [--out docs/benchmarks.json] [--plot docs/inference_scaling.png]
                            [--tiny] [--repeats N]
                            [--cases train,inference,convs,loss,pipeline,dataset,deploy,eval,matmul]
                            [--conv-backend auto|xla|onednn]

Prints a Markdown table and writes JSON: per case the median of several timed repetitions after
compilation, the compile time, throughput, achieved FLOP/s and its fraction of the reference
rate (on CPU a large float32 matmul timed in the same run; on a GPU the card's dense peak),
and peak memory (host RSS; device memory where the backend reports it). Each train-step case
runs in its own process (so its peak RSS is its own; with --tiny all in one) and runs as
training runs it (the compiler options of ifes_jax/cpu/xla_flags.py, host memory kept by
ifes_jax/cpu/host_memory.py).
On a CPU, `convs` times every convolution of the network alone (forward, input and weight gradient) on XLA's two convolution paths and on
oneDNN's (`model.conv_backend`; the train and inference cases use `--conv-backend`). `--tiny`
runs every case once at toy sizes (the test suite does, so the script cannot rot); `--render
JSON` prints the table of an earlier run.
"""
import argparse
import collections
import functools
import json
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import default, quickstart
from ifes_jax import configured, cpu, losses, model as model_lib, profiles, train
from ifes_jax.data import pipeline, synthetic

# dense tensor-core peaks (FLOP/s) of cards we may be lent, SXM parts: (TF32, bfloat16). XLA runs
# float32 convolutions and matmuls in TF32 on these cards by default (jax_default_matmul_precision)
GPU_PEAKS = {"H100": (494.7e12, 989.4e12), "H200": (494.7e12, 989.4e12), "A100": (156e12, 312e12)}


MIN_SECONDS = 1.0  # short cases repeat until their runs add up to this (0 with --tiny)


def timed(fn, repeats):
    """(compile-and-first-run seconds, median seconds of further runs: `repeats` of them, more
    (up to 50) while they add up to less than MIN_SECONDS; one when the first took over 20 s)."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    runs = []
    while len(runs) < (1 if first > 20 else repeats) or (sum(runs) < MIN_SECONDS and len(runs) < 50):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - t)
    return first, statistics.median(runs)


def memory():
    out = {"host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if stats and "peak_bytes_in_use" in stats:
        out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2 ** 20
    return out


def forward_flops_per_pixel(params) -> float:
    """2 · 9 · C_in · C_out per pixel for every 3x3 conv (multiply-adds counted as 2 FLOPs)."""
    return float(sum(2 * np.prod(p["kernel"].shape) for p in params.values()))


def reference_rate(tiny):
    """(FLOP/s, what it is): the card's dense peak on a GPU, else a float32 matmul timed now."""
    device = jax.devices()[0]
    if device.platform == "gpu":
        for name, (f32, bf16) in GPU_PEAKS.items():
            if name in device.device_kind:
                return {"float32": f32, "bfloat16": bf16}, f"{device.device_kind} dense peak"
    n = 256 if tiny else 4096
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    _, seconds = timed(lambda: f(a), 1 if tiny else 5)
    rate = 2 * n ** 3 / seconds
    return {"float32": rate, "bfloat16": rate}, f"float32 {n}x{n} matmul on {device.device_kind}"


def case_train(name, config, crop, batch, repeats, rates):
    ir, vis = synthetic.synthetic_pairs(0, batch, crop, crop)
    data = {"ir": jnp.asarray(ir[..., None]), "vis": jnp.asarray(vis[..., None])}
    state = train.create_train_state(config, jax.random.key(0), crop)
    step = train.make_train_step(config)
    holder = {"state": state}

    def run():
        holder["state"], metrics_ = step(holder["state"], data)
        return metrics_
    compile_s, seconds = timed(run, repeats)
    flops = 3 * forward_flops_per_pixel(holder["state"].params) * crop * crop * batch
    dtype = "bfloat16" if config.half_precision else "float32"
    return {"case": name, "kind": "train step", "seconds": seconds, "compile_s": compile_s,
            "images_per_s": batch / seconds, "megapixels_per_s": batch * crop * crop / seconds / 1e6,
            "flop_per_s": flops / seconds, "fraction_of_reference": flops / seconds / rates[dtype]}


@functools.lru_cache(maxsize=None)
def inference_pair(height, width):
    """The synthetic pair the inference cases fuse at this size, made once (a 4K pair takes
    30 s of NumPy: its smooth fields are Gaussian filters hundreds of pixels wide)."""
    return synthetic.synthetic_pair(1, height, width)


def case_inference(name, config, height, width, repeats, rates, tile=None, half=False):
    from ifes_jax import fuse
    net = configured.from_config(config.model, half)
    params = configured.init_params(net, jax.random.key(0))
    fuser = fuse.Fuser(config, params, net, tile=tile or max(height, width, fuse.MIN_TILE))
    ir, vis = inference_pair(height, width)
    compile_s, seconds = timed(lambda: fuser(ir, vis)["fused"], repeats)
    flops = forward_flops_per_pixel(params) * height * width
    return {"case": name, "kind": "inference", "pixels": height * width, "seconds": seconds,
            "compile_s": compile_s, "megapixels_per_s": height * width / seconds / 1e6,
            "flop_per_s": flops / seconds,
            "fraction_of_reference": flops / seconds / rates["bfloat16" if half else "float32"]}


# XLA's two CPU paths by compiler options (None: the train step's, ifes_jax/cpu/xla_flags.py),
# and oneDNN through the FFI (ifes_jax/cpu/onednn_conv.py), where it builds
CONV_PATHS = {"YNNPACK": {}, "XLA": None, "oneDNN": "onednn"}


def case_convs(name, config, crop, batch, repeats, rates):
    """Every convolution of the network alone, forward, input gradient and weight gradient, on
    each CPU convolution path (XLA's two compiled with their own options, in this process, and
    oneDNN's): the summed time per kind and path over the network's layers, and each distinct shape's
    rate."""
    from ifes_jax.cpu import onednn_conv, xla_flags
    counts = collections.Counter(configured.from_config(config.model).layers().values())
    rng = np.random.default_rng(0)
    rows = []
    for path, options in CONV_PATHS.items():
        if options == "onednn" and onednn_conv.unavailable():
            continue
        conv = model_lib.convolve
        if options == "onednn":  # with a zero bias (its gradient comes with the kernel's)
            conv = lambda x, w: onednn_conv.conv3x3(x, w, jnp.zeros(w.shape[3:], w.dtype))  # noqa: E731
        kinds = {"forward": lambda x, w, g, conv=conv: conv(x, w),
                 "input grad": lambda x, w, g, conv=conv: jax.vjp(lambda x: conv(x, w), x)[1](g)[0],
                 "weight grad": lambda x, w, g, conv=conv: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]}
        options = {} if options == "onednn" else (
            xla_flags.training_compiler_options() if options is None else options)
        totals, shapes = dict.fromkeys(kinds, 0.0), []
        for (cin, cout), count in counts.items():
            x = jnp.asarray(rng.standard_normal((batch, crop, crop, cin)), jnp.float32)
            w = jnp.asarray(rng.standard_normal((3, 3, cin, cout)), jnp.float32)
            g = jnp.asarray(rng.standard_normal((batch, crop, crop, cout)), jnp.float32)
            flops = 2 * 9 * cin * cout * batch * crop * crop
            shape = {"c_in": cin, "c_out": cout, "count": count}
            for kind, fn in kinds.items():
                compiled = jax.jit(fn).lower(x, w, g).compile(compiler_options=options)
                _, seconds = timed(lambda: compiled(x, w, g), repeats)
                totals[kind] += count * seconds
                shape[kind + " GFLOP/s"] = flops / seconds / 1e9
            shapes.append(shape)
        flops = sum(2 * 9 * cin * cout * n for (cin, cout), n in counts.items()) * batch * crop * crop
        for kind, seconds in totals.items():
            rows.append({"case": f"{name} convs, {kind} ({path})", "kind": "convolutions",
                         "seconds": seconds, "flop_per_s": flops / seconds,
                         "fraction_of_reference": flops / seconds / rates["float32"],
                         "shapes": shapes})
    return rows


def naive_window_loss(fused, ir, vis, k=11, xi=1.7, c=0.03 ** 2, eps=1e-6):
    """The window-mode L_F by unfolding every k x k patch (the definition, O(H·W·k²) memory):
    kept here as the baseline the closed form is measured against."""
    def patches(x):
        h, w = x.shape[0] - k + 1, x.shape[1] - k + 1
        rows = jnp.stack([x[i:i + h] for i in range(k)], -1)
        return jnp.stack([rows[:, j:j + w] for j in range(k)], -1).reshape(h, w, k * k)
    p1, p2, pf = patches(ir), patches(vis), patches(fused)
    centred = [p - p.mean(-1, keepdims=True) for p in (p1, p2, pf)]
    var = [jnp.mean(d * d, -1, keepdims=True) for d in centred]
    r1, r2 = jnp.sqrt(var[0] + eps), jnp.sqrt(var[1] + eps)
    s = centred[0] / r1 + centred[1] / r2
    contrast = jnp.maximum(var[0] / r1, var[1] / r2)
    target = xi * contrast * s / jnp.sqrt(jnp.mean(s * s, -1, keepdims=True) + eps)
    dt = target - target.mean(-1, keepdims=True)
    score = (2 * jnp.mean(dt * centred[2], -1) + c) / (jnp.mean(dt * dt, -1) + var[2][..., 0] + c)
    return 1 - jnp.mean(score)


def case_loss(size, repeats):
    ir, vis = synthetic.synthetic_pair(2, size, size)
    fused = (ir + vis) / 2
    rows = []
    for name, fn in (("closed form", lambda f, a, b: 1 - losses.decomposition_ssim(f, a, b)),
                     ("patch unfolding", naive_window_loss)):
        grad = jax.jit(jax.value_and_grad(fn))
        compile_s, seconds = timed(lambda: grad(fused, ir, vis), repeats)
        analysis = grad.lower(fused, ir, vis).compile().memory_analysis()
        temp = getattr(analysis, "temp_size_in_bytes", None) if analysis is not None else None
        rows.append({"case": f"loss {name} {size}²", "kind": "loss (value + grad)", "seconds": seconds,
                     "compile_s": compile_s, "temp_memory_mb": temp / 2 ** 20 if temp is not None else None})
    return rows


def case_pipeline(crop, batch, repeats_batches):
    source = pipeline.synthetic_source(0, 16, max(2 * crop, 64))
    ds = pipeline.training_dataset(source, seed=0, batch_size=batch, crop=crop)
    it = pipeline.iterator(ds, device=jax.devices()[0])
    next(it)
    t = time.perf_counter()
    for _ in range(repeats_batches):
        b = next(it)
    jax.block_until_ready(b)
    seconds = (time.perf_counter() - t) / repeats_batches
    it.close()
    return {"case": f"pipeline {crop}² x {batch}", "kind": "input pipeline", "seconds": seconds,
            "batches_per_s": 1 / seconds}


def case_eval(height, width, repeats, profile="default"):
    """One pair scored by a whole profile (`profiles.score`: jitted, per channel batched by
    vmap); `vifb` on a colour pair, the others on gray."""
    ir, vis = synthetic.synthetic_pair(3, height, width)
    fused = (ir + vis) / 2
    if profile == "vifb":
        fused, vis = (np.stack([x, x ** 1.1, x ** 0.9], axis=-1) for x in (fused, vis))
    compile_s, seconds = timed(lambda: profiles.score(fused, ir, vis, profile), repeats)
    colour = "colour" if profile == "vifb" else "gray"
    return {"case": f"evaluation {width}x{height} {colour}, {profile} profile",
            "kind": "metrics per pair", "seconds": seconds, "compile_s": compile_s}


def train_cases(tiny, gpu):
    """{name: (config, crop, batch)} of the train-step cases."""
    cases = {"quickstart 64² x4": (quickstart.get_config(), 64, 4)}
    sizes = [(128, 1), (128, 8)] + ([(256, 8)] if gpu else [])  # the accelerator's target: 256² x8
    for crop, batch in sizes:
        for half in (False, True):
            cfg = default.get_config()
            cfg.half_precision = half
            cases[f"default {crop}² x{batch} {'bf16' if half else 'f32'}"] = (cfg, crop, batch)
    for remat in (False, True):  # memory: a 512² crop at full width, with and without remat
        cfg = default.get_config()
        cfg.model.remat = remat
        cases["default 512² x1 f32" + (" remat" if remat else "")] = (cfg, 512, 1)
    if tiny:
        for name, (cfg, crop, batch) in cases.items():
            small = quickstart.get_config()
            small.half_precision, small.model.remat = cfg.half_precision, cfg.model.remat
            cases[name] = (small, 16, 1)  # cases differing only in size share a program
    return cases


def train_in_child_process(names, tiny, repeats, rates, conv_backend):
    """Train-step cases in a fresh process, so that a case's peak RSS is its own (one case per
    process; with --tiny, where no figure means anything, all of them in one)."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--train-case", ",".join(names), "--out", out,
               "--repeats", str(repeats), "--rates", json.dumps(rates),
               "--conv-backend", conv_backend] + (["--tiny"] if tiny else [])
        subprocess.run(cmd, check=True)
        with open(out) as f:
            return json.load(f)


def one_train_case(name, tiny, repeats, rates, conv_backend):
    cpu.configure_process()  # as scripts/train.py does, before JAX starts
    cfg, crop, batch = train_cases(tiny, jax.devices()[0].platform == "gpu")[name]
    cfg.model.conv_backend = conv_backend
    return (case_train(name, cfg, crop, batch, repeats, rates) | memory()
            | {"compiler_options": cpu.compiler_options(),
               "conv_backend": cpu.conv_name(conv_backend)})


class Rows(list):
    """The table's rows; each one added is also written out at once (`on_row`), so a run that
    is stopped keeps what it measured."""

    def __init__(self, on_row):
        super().__init__()
        self.on_row = on_row

    def append(self, row):
        super().append(row)
        self.on_row(self)

    def extend(self, rows):
        for row in rows:
            self.append(row)


def run(cases, tiny, repeats, plot, on_row=lambda rows: None, conv_backend="auto"):
    rates, rate_source = reference_rate(tiny)
    gpu = jax.devices()[0].platform == "gpu"
    head = {"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
            "device_count": jax.device_count(), "reference": rate_source,
            "reference_flop_per_s": rates, "jax": jax.__version__,
            "conv_backend": cpu.conv_name(conv_backend)}
    rows = Rows(lambda rows: on_row(head | {"rows": list(rows)}))
    q, d = quickstart.get_config(), default.get_config()
    q.model.conv_backend = d.model.conv_backend = conv_backend
    if "train" in cases:
        names = list(train_cases(tiny, gpu))
        for group in ([names] if tiny else [[name] for name in names]):
            rows.extend(train_in_child_process(group, tiny, repeats, rates, conv_backend))
    if "inference" in cases:
        sizes = [(480, 640), (1024, 1280), (2160, 3840)]
        scaling = []
        for label, cfg in (("full width", d), ("quickstart width", q)):
            for h, w in sizes:
                big = h * w > 3e6
                if tiny:  # one size: the cases of a width share one compiled program
                    h, w = 12, 16
                elif big and label == "full width" and jax.devices()[0].platform == "cpu":
                    continue  # minutes per 4K image at full width on a CPU: measured on accelerators
                row = case_inference(f"{label} {w}x{h}" + (" (tiled 1024)" if big else ""), cfg, h, w,
                                     repeats, rates, tile=1024 if big and not tiny else None)
                rows.append(row | memory())
                scaling.append((label, row["pixels"], row["seconds"]))
        if gpu or tiny:  # video rate needs bfloat16 on an accelerator
            h, w = (12, 16) if tiny else (480, 640)
            rows.append(case_inference(f"full width {w}x{h} bf16", d, h, w, repeats, rates,
                                       half=True) | memory())
        if plot:
            plot_scaling(scaling, plot)
    if "convs" in cases and jax.devices()[0].platform == "cpu":  # the two CPU paths
        for label, cfg, crop, batch in (("quickstart 64² x4", q, 64, 4), ("default 128² x1", d, 128, 1)):
            if tiny:
                cfg, crop, batch = q, 8, 1
            rows.extend(r | memory() for r in case_convs(label, cfg, crop, batch, repeats, rates))
    if "loss" in cases:
        for size in ((32,) if tiny else (128, 256, 512)):
            rows.extend(r | memory() for r in case_loss(size, repeats))
    if "pipeline" in cases:
        rows.append(case_pipeline(16 if tiny else 128, 1, 3 if tiny else 300) | memory())
        rows.append(case_pipeline(16 if tiny else 64, 4, 3 if tiny else 300) | memory())
    if "dataset" in cases:  # LLVIP-sized folders: build, then read with and without workers
        import benchmark_dataset
        rows.extend(benchmark_dataset.rows(tiny, workers=1 if tiny else 2))
    if "deploy" in cases:  # exports against the package; video fusion end to end
        import benchmark_deploy
        rows.extend(r | memory() for r in benchmark_deploy.rows(tiny))
    if "eval" in cases:
        for profile in ("default", "vifb", "cddfuse"):
            rows.append(case_eval(*((80, 96) if tiny else (480, 640)), repeats, profile) | memory())
    return head | {"rows": list(rows)}


def plot_scaling(points, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4))
    for label in sorted({p[0] for p in points}):
        xs = [p[1] for p in points if p[0] == label]
        ys = [p[2] for p in points if p[0] == label]
        ax.loglog(xs, ys, "o-", label=label)
    ax.set_xlabel("pixels")
    ax.set_ylabel("seconds per image")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(result):
    rates = result["reference_flop_per_s"]
    rate = (f"{rates['float32'] / 1e9:.0f} GFLOP/s" if rates["float32"] == rates["bfloat16"] else
            f"{rates['float32'] / 1e12:.0f} TFLOP/s float32 (TF32), {rates['bfloat16'] / 1e12:.0f} "
            "TFLOP/s bfloat16")
    lines = [f"Device: {result['device']} ({result['platform']}, {result['device_count']} device(s)); "
             f"reference rate: {result['reference']} = {rate}; jax {result['jax']}; "
             f"convolutions: {result.get('conv_backend', 'xla')}.", "",
             "| case | kind | median s | compile s | throughput | GFLOP/s | of reference | peak RSS MB "
             "| device peak MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "frames_per_s" in r:
            throughput = f"{r['frames_per_s']:.2f} frames/s, {r['megapixels_per_s']:.3f} MP/s"
        elif "images_per_s" in r:
            throughput = f"{r['images_per_s']:.2f} img/s, {r['megapixels_per_s']:.3f} MP/s"
        elif "megapixels_per_s" in r:
            throughput = f"{r['megapixels_per_s']:.3f} MP/s"
        elif "seconds_per_1000_pairs" in r:
            throughput = f"{r['seconds_per_1000_pairs']:.0f} s per 1,000 pairs"
            if "disk_mb_per_1000_pairs" in r:
                throughput += f", {r['disk_mb_per_1000_pairs'] / 1024:.2f} GB on disk"
        elif "batches_per_s" in r:
            throughput = f"{r['batches_per_s']:.0f} batches/s"
        elif r.get("temp_memory_mb") is not None:
            throughput = f"temp memory {r['temp_memory_mb']:.1f} MB"
        else:
            throughput = ""
        gflops = f"{r['flop_per_s'] / 1e9:.1f}" if "flop_per_s" in r else ""
        frac = f"{100 * r['fraction_of_reference']:.1f} %" if "fraction_of_reference" in r else ""
        compile_s = f"{r['compile_s']:.2f}" if "compile_s" in r else ""
        device_mb = f"{r['device_peak_mb']:.0f}" if "device_peak_mb" in r else ""
        lines.append(f"| {r['case']} | {r['kind']} | {r['seconds']:.4f} | {compile_s} | {throughput} | "
                     f"{gflops} | {frac} | {r['host_peak_rss_mb']:.0f} | {device_mb} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmark.json", help="JSON output")
    p.add_argument("--plot", default="inference_scaling.png", help="log-log plot of inference time")
    p.add_argument("--tiny", action="store_true", help="every case once at toy sizes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cases", default="matmul,train,inference,convs,loss,pipeline,dataset,deploy,eval")
    p.add_argument("--conv-backend", default="auto", choices=cpu.CONV_BACKENDS,
                   help="model.conv_backend of the train and inference cases (default: auto)")
    p.add_argument("--render", metavar="JSON", help="print the table of a JSON written before")
    p.add_argument("--train-case", help=argparse.SUPPRESS)  # train cases, in a child process
    p.add_argument("--rates", help=argparse.SUPPRESS)       # the parent's reference rates
    args = p.parse_args(argv)
    if args.tiny:
        global MIN_SECONDS
        MIN_SECONDS = 0.0
    if args.train_case:  # in a child process: these cases, one after the other
        rows = [one_train_case(name, args.tiny, 1 if args.tiny else args.repeats,
                               json.loads(args.rates), args.conv_backend)
                for name in args.train_case.split(",")]
        with open(args.out, "w") as f:
            json.dump(rows, f)
        return
    if args.render:
        with open(args.render) as f:
            print(markdown(json.load(f)))
        return
    repeats = 1 if args.tiny else args.repeats

    def write(result):
        with open(args.out + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(args.out + ".tmp", args.out)

    result = run(set(args.cases.split(",")), args.tiny, repeats, args.plot, on_row=write,
                 conv_backend=args.conv_backend)
    write(result)
    print(markdown(result))


if __name__ == "__main__":
    main()
