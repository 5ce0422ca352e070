"""Evaluation: a paper-style table (rows: metrics; columns: methods) over a folder of pairs.

Methods are the classical baselines (`average`, `max`, `laplacian`, `target`), a trained model
(`ckpt:PATH`: a workdir, a checkpoint folder or a folder of exported weights; `ckpt-minmax:PATH`:
its output min-max stretched per image, as `fuse.py --normalize minmax` writes it) or fused
images made by any other tool (`dir:PATH`, matched to the pairs by file name). The methods fuse the gray
infrared image with the visible image's BT.601 Y; the profile (`profiles`) decides how the images
are scored: gray (`paper`, `default`), per RGB channel with the fused Y recoloured by the visible
image's chroma (`vifb`), or gray as OpenCV reads it (`cddfuse`). Writes `table.md`,
`per_pair.csv`, `results.json` and `figure.png`.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import time

import jax
import numpy as np

from ifes_jax import baselines, metric_maps, profiles
from ifes_jax.data import layouts, pairs as pairs_lib
from ifes_jax.data.images import (IMAGE_EXTENSIONS, MAX_PIXELS, luma, read_image, rgb_to_ycbcr,
                                  to_float01, ycbcr_to_rgb)
from ifes_jax.errors import ConfigError, DataError, InputError


@dataclasses.dataclass
class Method:
    label: str
    kind: str  # baseline | ckpt | ckpt-minmax | dir
    arg: str = ""


def parse_methods(spec: str) -> list[Method]:
    """'average,max,ckpt:runs/x,dir:other/fused' -> methods; labels are unique."""
    methods = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        kind, _, arg = item.partition(":")
        if not arg:
            if item not in baselines.BASELINES:
                raise ConfigError(f"unknown method {item!r}: use {', '.join(baselines.BASELINES)}, "
                                  "ckpt:PATH, ckpt-minmax:PATH or dir:PATH")
            methods.append(Method(item, "baseline", item))
        elif kind in ("ckpt", "ckpt-minmax", "dir"):
            if not os.path.exists(arg):
                raise InputError(f"{arg}: no such {'folder' if kind == 'dir' else 'checkpoint'} "
                                 f"(method {item})")
            label = os.path.basename(os.path.normpath(arg)) or arg
            labels = {"dir": label, "ckpt": f"ours ({label})", "ckpt-minmax": f"ours ({label}, min-max)"}
            methods.append(Method(labels[kind], kind, arg))
        else:
            raise ConfigError(f"unknown method {item!r}")
    if not methods:
        raise ConfigError("no methods given")
    labels = [m.label for m in methods]
    for m in methods:
        if labels.count(m.label) > 1:
            m.label = f"{m.kind}:{m.arg}"
    return methods


def select_pairs(found, spec: str | None):
    """The pairs named by `spec`: None (all), '@file' (a list file), or a comma list of names
    and inclusive ranges 'first..last' (in name order)."""
    if not spec:
        return found
    names = [p.name for p in found]
    if spec.startswith("@"):
        wanted = pairs_lib.read_name_list(spec[1:])
    else:
        wanted = []
        for item in (s.strip() for s in spec.split(",") if s.strip()):
            if ".." in item:
                lo, hi = item.split("..", 1)
                if lo not in names or hi not in names:
                    raise InputError(f"pair range {item!r}: {lo if lo not in names else hi!r} is not a pair")
                wanted += names[names.index(lo): names.index(hi) + 1]
            else:
                wanted.append(item)
    missing = [n for n in wanted if n not in names]
    if missing:
        raise InputError(f"{len(missing)} requested pair(s) not in the folder: {', '.join(missing[:5])}")
    by_name = {p.name: p for p in found}
    return [by_name[n] for n in dict.fromkeys(wanted)]


@dataclasses.dataclass
class LoadedPair:
    ir: np.ndarray  # the methods' inputs: gray infrared, visible Y, float (H, W) in [0, 1]
    vis: np.ndarray
    vis_mode: str
    scored_ir: np.ndarray  # the images as the profile scores them (`profiles.to_inputs`)
    scored_vis: np.ndarray
    vis_rgb: np.ndarray | None  # the colour visible image, for recolouring a gray fusion


def load_pair(pair, profile: str = "paper", max_pixels: int = MAX_PIXELS) -> LoadedPair:
    (ir, ir_bits, _), (vis, vis_bits, vis_mode) = pairs_lib.read_pair(pair, max_pixels=max_pixels)
    ir01, vis01 = to_float01(ir, ir_bits), to_float01(vis, vis_bits)
    return LoadedPair(luma(ir01), luma(vis01), vis_mode, profiles.to_inputs(ir01, profile),
                      profiles.to_inputs(vis01, profile), vis01 if vis01.ndim == 3 else None)


def scored_fusion(fused, pair: LoadedPair, profile: str):
    """A method's gray fusion as the profile scores it: recoloured with the visible image's
    chroma (BT.601, as `fuse.py` writes it) for a per-channel profile and a colour pair."""
    if profiles.PROFILES[profile].colour == "channels" and pair.vis_rgb is not None:
        ycbcr = rgb_to_ycbcr(pair.vis_rgb)
        ycbcr[..., 0] = fused
        return np.clip(ycbcr_to_rgb(ycbcr), 0.0, 1.0)
    return fused


def _find_fused(folder, name):
    for ext in IMAGE_EXTENSIONS:
        for candidate in (name + ext, name + ext.upper()):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    raise DataError(f"{folder}: no fused image for pair {name!r}")


class Runner:
    """Fuses a pair with each method (models loaded once)."""

    def __init__(self, methods, max_pixels: int = MAX_PIXELS):
        self.methods = methods
        self.max_pixels = max_pixels
        self._models = {}
        self._baselines = {name: jax.jit(fn) for name, fn in baselines.BASELINES.items()}

    def fuse(self, method, name, ir, vis, profile: str = "paper"):
        """(fused float (H, W), weights (H, W, 2) or None); a `dir:` method's image is read as
        `profile` scores it."""
        if method.kind == "baseline":
            return np.asarray(self._baselines[method.arg](ir, vis)), None
        if method.kind in ("ckpt", "ckpt-minmax"):
            from ifes_jax import fuse as fuse_lib
            if method.arg not in self._models:
                self._models[method.arg] = fuse_lib.load(method.arg)
            out = self._models[method.arg](ir, vis)
            if method.kind == "ckpt-minmax":
                return fuse_lib.minmax_stretch(out["fused"]), out["weights"]
            return out["fused"], out["weights"]
        path = _find_fused(method.arg, name)
        pixels, bits, _ = read_image(path, self.max_pixels)
        fused = profiles.to_inputs(to_float01(pixels, bits), profile)
        if fused.shape[:2] != ir.shape:
            raise DataError(f"{path} is {fused.shape[1]}x{fused.shape[0]}, its pair is "
                            f"{ir.shape[1]}x{ir.shape[0]}")
        return fused, None


def _check_finite(array, what):
    if not np.all(np.isfinite(array)):
        raise DataError(f"{what}: non-finite pixel values (NaN or inf)")


def evaluate(data_dir, methods, out_dir, *, profile: str = "paper", quantize: bool = False,
             skip_bad: bool = False, pair_spec: str | None = None, figure_pairs: int = 3,
             max_pixels: int = MAX_PIXELS, maps: bool = False, split: str | None = None,
             ir_subdir: str | None = None, vis_subdir: str | None = None, log=print):
    """Score every method on every pair and write the outputs into `out_dir` (with `maps`,
    also each method's per-pixel metric maps, `metric_maps`, in out_dir/maps/PAIR/).

    `data_dir` is a pairs folder in any layout `layouts` recognises (the one found is logged);
    of a folder released in train/test splits, `split` is scored (default: test).

    Built-in methods are scored on their float fusion (on the 0–255 scale where a metric
    uses it) unless `quantize`, which scores the 8-bit image that would be saved. Returns the
    results dict written to results.json.
    """
    if profile not in profiles.PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: use {', '.join(profiles.PROFILES)}")
    quantize = quantize or profiles.PROFILES[profile].eight_bit
    layout = layouts.find_layout(data_dir, ir_subdir, vis_subdir)
    _, folders, said = layout.chosen(split)
    log(f"layout of {said}")
    selected = select_pairs(pairs_lib.pair_folders(*folders), pair_spec)
    _check_out_dir(out_dir, [data_dir] + [m.arg for m in methods if m.kind == "dir"])
    runner = Runner(methods, max_pixels)
    names = profiles.names(profile)
    per_pair = {m.label: {} for m in methods}
    skipped, colour_pairs, figure_rows = [], 0, []
    start = time.perf_counter()

    def score(pair):
        maps_dir = os.path.join(out_dir, "maps", pair.name) if maps else None
        return _score_pair(runner, methods, pair, profile, quantize, max_pixels, maps_dir)

    for i, (pair, result, error) in enumerate(map(score, selected)):
        if error is not None:
            if not skip_bad:
                raise error
            skipped.append((pair.name, str(error)))
            log(f"skipped {pair.name}: {error}")
            continue
        ir, vis, vis_mode, row, images = result
        colour_pairs += vis_mode == "rgb"
        for label, values in row.items():
            per_pair[label][pair.name] = values
        if len(figure_rows) < figure_pairs:
            figure_rows.append((pair.name, ir, vis, images))
        log(f"[{i + 1}/{len(selected)}] {pair.name}")
    seconds = time.perf_counter() - start
    if not any(per_pair.values()):
        raise DataError(f"{data_dir}: no pair could be evaluated")

    means = {label: {k: float(np.mean([v[k] for v in rows.values()])) for k in names}
             for label, rows in per_pair.items()}
    meta = {"data": os.path.abspath(data_dir), "profile": profile, "pairs": len(per_pair[methods[0].label]),
            "colour_pairs": colour_pairs, "quantize": quantize, "skipped": skipped,
            "seconds": seconds, "conventions": profiles.conventions(profile),
            "lower_is_better": sorted(profiles.lower_is_better(profile)),
            "colour_note": profiles.PROFILES[profile].colour_note}
    results = dict(means, per_pair=per_pair, meta=meta)
    _write_outputs(out_dir, results, names, figure_rows)
    return results


def _score_pair(runner, methods, pair, profile, quantize, max_pixels, maps_dir=None):
    """(pair, (ir, vis, vis_mode, row, images), None), or (pair, None, error); with `maps_dir`,
    each method's metric maps are written there."""
    try:
        loaded = load_pair(pair, profile, max_pixels)
        row, images = {}, {}
        for m in methods:
            fused, weights = runner.fuse(m, pair.name, loaded.ir, loaded.vis, profile)
            _check_finite(fused, f"method {m.label}, pair {pair.name}")
            if m.kind != "dir":
                fused = scored_fusion(fused, loaded, profile)
                if quantize:  # as fuse.py would save it (after any recolouring)
                    fused = np.rint(np.clip(fused, 0, 1) * 255) / 255
            try:
                row[m.label] = profiles.score(fused, loaded.scored_ir, loaded.scored_vis, profile)
            except ValueError as exc:  # an image too small for a metric's windows
                raise DataError(f"pair {pair.name} ({pair.ir_path}): {exc}") from None
            images[m.label] = (fused, weights)
        if maps_dir is not None:  # once every method has scored
            _write_maps(maps_dir, pair.name, images, loaded)
        return pair, (loaded.ir, loaded.vis, loaded.vis_mode, row, images), None
    except InputError as exc:
        return pair, None, exc


def _write_maps(folder, pair_name, images, loaded):
    for label, (fused, _) in images.items():
        try:
            metric_maps.write_maps(folder, label, fused, loaded.ir, loaded.vis)
        except ValueError as exc:  # an image too small for a map's windows
            raise DataError(f"pair {pair_name}: metric maps: {exc}") from None


def _write_outputs(out_dir, results, names, figure_rows):
    """results.json, table.md, per_pair.csv and figure.png, each written whole."""
    means = {k: v for k, v in results.items() if k not in ("per_pair", "meta")}
    _write_atomic(os.path.join(out_dir, "results.json"), json.dumps(results, indent=2))
    _write_atomic(os.path.join(out_dir, "table.md"), markdown_table(means, names, results["meta"]))
    _write_csv(os.path.join(out_dir, "per_pair.csv"), results["per_pair"], names)
    if figure_rows:
        figure_grid(os.path.join(out_dir, "figure.png"), figure_rows)


def markdown_table(means, names, meta) -> str:
    """Rows: metrics; columns: methods; the best of each row in bold."""
    labels = list(means)
    lower = set(meta.get("lower_is_better", ()))
    lines = ["| metric | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name in names:
        values = [means[label][name] for label in labels]
        best = min(values) if name in lower else max(values)
        cells = [(f"**{_fmt(v)}**" if v == best else _fmt(v)) for v in values]
        lines.append(f"| {name}{' ↓' if name in lower else ''} | " + " | ".join(cells) + " |")
    direction = (f"lower is better for {', '.join(sorted(lower))} (↓), larger for the rest"
                 if lower else "larger is better for every metric")
    notes = [
        "",
        f"Mean over {meta['pairs']} pairs of `{meta['data']}`, profile `{meta['profile']}`; "
        f"{direction}; the best of each row is in bold.",
        ("Built-in methods are scored on the 8-bit images they would save (`--quantize`, and "
         "always for the toolbox profiles)." if meta["quantize"] else
         "Built-in methods are scored on their float fusion (0–255 scale where a metric uses it), "
         "not on a saved 8-bit image."),
    ]
    if meta["colour_pairs"]:
        notes.append(f"{meta['colour_pairs']} pair(s) have colour visible images: "
                     f"{meta.get('colour_note', 'they are scored on their BT.601 Y')}.")
    if meta["skipped"]:
        notes.append("Skipped: " + "; ".join(f"{n} ({why})" for n, why in meta["skipped"]))
    notes.append("")
    notes += [f"- {name}: {meta['conventions'][name]}" for name in names]
    return "\n".join(lines + notes) + "\n"


def _fmt(v):
    return f"{v:.4f}" if abs(v) < 1 else f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def _check_out_dir(out_dir, input_dirs):
    """The output folder, made and checked before any work: not an input folder, writable."""
    real = os.path.realpath(out_dir)
    for folder in input_dirs:
        for inside in (folder, os.path.join(folder, "ir"), os.path.join(folder, "vis")):
            if real == os.path.realpath(inside):
                raise InputError(f"{out_dir}: the output folder is the input folder {inside}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"{out_dir}: exists and is not a folder")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot be created ({exc.strerror or exc})") from None
    if not os.access(out_dir, os.W_OK):
        raise InputError(f"{out_dir}: not writable")


def _write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_csv(path, per_pair, names):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["pair", "method"] + names)
        for label, rows in per_pair.items():
            for pair, values in rows.items():
                writer.writerow([pair, label] + [f"{values[n]:.6g}" for n in names])
    os.replace(tmp, path)


def figure_grid(path, rows, height: float = 2.0):
    """A grid: one row per pair; IR, VIS, each method's fusion, and the model's weight maps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(rows[0][3])
    weight_label = next((label for label in labels if rows[0][3][label][1] is not None), None)
    columns = ["IR", "VIS"] + labels + ([f"W_ir ({weight_label})", f"W_vis ({weight_label})"]
                                        if weight_label else [])
    fig, axes = plt.subplots(len(rows), len(columns), squeeze=False,
                             figsize=(height * 1.3 * len(columns), height * len(rows)))
    for r, (name, ir, vis, fused) in enumerate(rows):
        images = [ir, vis] + [fused[label][0] for label in labels]
        if weight_label:
            w = fused[weight_label][1]
            images += [w[..., 0], w[..., 1]]
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
