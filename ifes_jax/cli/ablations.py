"""Train the paper's ablation variants (or another study's) at one budget, then export each
one's best weights.

python scripts/ablations.py --config configs/tno_cpu.py --workdir runs/ablations
    [--study ablations|fidelity] [--variants ifesnet,wo_ifem,s1,s2,s4,hc,mae] [--jobs N]
    [--time-limit SECONDS] [--set data.dir=PATH ...]

Each variant is `scripts/train.py` on the base config with a few overrides (below), in
WORKDIR/VARIANT (its log in WORKDIR/VARIANT.log); running the script again resumes unfinished
variants. `--jobs` trains several at once (on a GPU they share the card). At `--time-limit` the
runs still going are stopped with SIGTERM, which checkpoints them; a later call resumes them.
The best checkpoint of each variant (by validation loss; of an unfinished one too, with a
non-zero exit) is exported to WORKDIR/exports/VARIANT, which `scripts/evaluate.py --methods
ckpt:WORKDIR/exports/VARIANT` and `scripts/fuse.py --checkpoint` read.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

from ifes_jax.cli import export_weights

# the paper's ablations: Tables III-IV (w/o IFEM), Table V (S1-S4, HC), Table VI (MAE)
VARIANTS = {
    "ifesnet": {},
    "wo_ifem": {"model.interactive": False},
    "s1": {"model.num_stages": 1},
    "s2": {"model.num_stages": 2},
    "s4": {"model.num_stages": 4},
    "hc": {"model.hierarchical_connection": True},
    "mae": {"loss.recon": "mae"},
}

# the fidelity study's winner (configs/tno_cpu_fidelity.py): L_M at 0.1 and linear weight maps
WINNER = {"loss.weight_map": 0.1, "model.weight_activation": "linear"}

# issue 20: candidate causes of the gap to the paper's gradient metrics, one change each
# (configs/fidelity.py: ranked on validation pairs that no test set holds)
FIDELITY = {
    "base": {},
    "base_seed1": {"seed": 1},
    "global_ssim": {"loss.ssim_mode": "global"},
    "gaussian_window": {"loss.window": "gaussian"},
    "window_7": {"loss.window_size": 7},
    "no_map_loss": {"loss.weight_map": 0.0},
    "map_loss_0.1": {"loss.weight_map": 0.1},
    "tau_1.7": {"loss.tau": 1.7},
    "linear_maps": {"model.weight_activation": "linear"},
    "softmax_maps": {"model.weight_activation": "softmax"},
    # the paper's batch 1 and constant 1e-4, as many images seen as fidelity.py's 1200 x 4
    "paper_optim": {"train.batch_size": 1, "optim.learning_rate": 1e-4,
                    "optim.schedule": "constant", "optim.warmup_steps": 0,
                    "train.steps": 4800, "train.checkpoint_every": 1200},
    "crop_192": {"data.crop_size": 192},
    # part 2: the one-change winners together
    "map_0.1_linear": WINNER,
    "map_0.1_linear_window_7": WINNER | {"loss.window_size": 7},
    # the L_M weight around 0.1 with linear maps
    "map_0.03_linear": {"loss.weight_map": 0.03, "model.weight_activation": "linear"},
    "map_0.3_linear": {"loss.weight_map": 0.3, "model.weight_activation": "linear"},
    # eq. 13 read per image, |τ − mean(W1 + W2)|: the maps free to sum above τ locally
    "map_image": {"loss.map_reduction": "image"},
    "map_image_linear": {"loss.map_reduction": "image", "model.weight_activation": "linear"},
    # capacity under the winner: half the paper's width instead of a quarter
    "map_0.1_linear_width_0.5": WINNER | {"model.width_multiplier": 0.5},
    # a diagnostic, never a reported model: the winner trained with the 40 TNO pairs that share
    # an image with INFV-20/41 added (111 pairs, like the paper's 110 overlapping groups)
    "diag_test_overlap": WINNER | {"data.train_list": "configs/lists/tno-fidelity-train-overlap.txt"},
}

STUDIES = {"ablations": VARIANTS, "fidelity": FIDELITY}


def train_command(config, workdir, overrides):
    return [sys.executable, "-m", "ifes_jax.cli.train", f"--config={config}",
            f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]


def finished(workdir, steps):
    """Whether the workdir holds a checkpoint of the final step."""
    folder = os.path.join(workdir, "checkpoints")
    return os.path.isdir(os.path.join(folder, str(steps)))


def load_config(path, overrides):
    """The config of a config file (as train.py reads it) with `overrides` applied."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("ablation_base_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in overrides.items():
        apply_override(config, key, value)
    return config


def prepare_data(config):
    """Build the tfds datasets once, before several runs would race to build them."""
    from ifes_jax import train
    if config.data.dir is not None or config.data.dirs is not None:
        train.make_dataset(config, 1)
    train.validation_pairs(config)


def apply_override(config, key, value):
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        node = node[name]
    current = node[leaf]
    if isinstance(current, bool):
        value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    elif current is not None and not isinstance(value, type(current)):
        value = type(current)(value)
    node[leaf] = value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--study", choices=sorted(STUDIES), default="ablations",
                   help="the variants to choose from: the paper's ablations or issue 20's candidates")
    p.add_argument("--variants", default=None, help="comma separated (default: all of the study)")
    p.add_argument("--jobs", type=int, default=1, help="variants trained at once")
    p.add_argument("--time-limit", type=float, default=None, help="seconds before stopping the runs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for every variant (e.g. data.dir=PATH)")
    args = p.parse_args(argv)
    study = STUDIES[args.study]
    names = [v.strip() for v in (args.variants or ",".join(study)).split(",") if v.strip()]
    unknown = [n for n in names if n not in study]
    if unknown:
        sys.exit(f"error: unknown variant(s) {', '.join(unknown)} of --study {args.study}: "
                 f"choose from {', '.join(study)}")
    bad = [item for item in args.set if "=" not in item]
    if bad:
        sys.exit(f"error: --set {bad[0]}: expected KEY=VALUE")
    common = dict(item.split("=", 1) for item in args.set)
    overrides = {name: common | study[name] for name in names}
    try:  # a bad override fails here, not after hours of training
        steps = {name: load_config(args.config, overrides[name]).train.steps for name in names}
        config = load_config(args.config, common)
    except (KeyError, AttributeError, ValueError, TypeError) as exc:
        sys.exit(f"error: {args.config}: bad override ({exc})")
    prepare_data(config)
    os.makedirs(args.workdir, exist_ok=True)
    todo = [n for n in names if not finished(os.path.join(args.workdir, n), steps[n])]
    run_variants(todo, args, overrides)
    summary = export_all(names, args.workdir, steps)
    print(json.dumps(summary, indent=2))
    return 0 if all(v["finished"] for v in summary.values()) else 1


def run_variants(todo, args, overrides):
    """Train the variants `todo`, `args.jobs` at a time, until done or `args.time_limit`
    (then SIGTERM, which checkpoints them)."""
    deadline = None if args.time_limit is None else time.monotonic() + args.time_limit
    running = {}
    while todo or running:
        while todo and len(running) < args.jobs:
            name = todo.pop(0)
            workdir = os.path.join(args.workdir, name)
            log = open(os.path.join(args.workdir, f"{name}.log"), "a")
            cmd = train_command(args.config, workdir, overrides[name])
            # in this process's directory, so relative paths mean the same to every run
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
            print(f"started {name}: {' '.join(cmd[1:])}", flush=True)
        time.sleep(1)
        if deadline is not None and time.monotonic() > deadline:
            todo = []
            for proc, _ in running.values():
                proc.send_signal(signal.SIGTERM)
            deadline = None
        for name in [n for n, (proc, _) in running.items() if proc.poll() is not None]:
            proc, log = running.pop(name)
            log.close()
            print(f"{name}: exit {proc.returncode}", flush=True)


def export_all(names, workdir_root, steps):
    """Export the best checkpoint of every variant that has one: {name: {finished, export}}."""
    summary = {}
    for name in names:
        workdir = os.path.join(workdir_root, name)
        done = finished(workdir, steps[name])
        if not done and not os.path.isdir(os.path.join(workdir, "checkpoints")):
            summary[name] = {"finished": False, "export": None}
            continue
        out = os.path.join(workdir_root, "exports", name)
        export_weights.main(["--workdir", workdir, "--out", out])
        summary[name] = {"finished": done, "export": out}
    return summary


if __name__ == "__main__":
    sys.exit(main())
