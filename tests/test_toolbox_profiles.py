"""The `vifb` and `cddfuse` profiles against the toolboxes' own stored values (../shared/data).

vifb/vifb_metrics.csv: VIFB's MATLAB values, 12 methods x 21 pairs x 13 metrics, 5 significant
digits. cddfuse-test/reference_metrics.csv: CDDFuse's Evaluator on 75 pairs x 3 methods x 12
metrics, full precision. Images are read as `evaluate` reads them for the profile; the methods of
a pair are scored in one batched call.

Every stored value is checked with IFES_JAX_REFERENCES=all (`.ci/run` does, after the suite);
the suite itself checks every metric of every method on every twelfth pair of each set (sorted
by name), which keeps it short.
"""
import collections
import csv
import json
import os

import jax
import numpy as np
import pytest

from ifes_jax import profiles
from ifes_jax.data.images import IMAGE_EXTENSIONS, read_image, to_float01

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
VIFB_NAMES = {"Cross_entropy": "CE", "Entropy": "EN", "Mutinf": "MI", "Psnr": "PSNR",
              "Avg_gradient": "AG", "Edge_intensity": "EI", "Qabf": "Qabf", "Variance": "SD",
              "Spatial_frequency": "SF", "Rmse": "RMSE", "Ssim": "SSIM", "Qcb": "Qcb", "Qcv": "Qcv"}
# scikit-image rounds its filtered moments to float32, and with L = 2 on 0–255 data SSIM's C1 and
# C2 are below that rounding: its flat windows carry float32 noise no other order reproduces
CDDFUSE_RTOL = collections.defaultdict(lambda: 1e-5, SSIM=2e-4)


def _checked_pairs(pairs):
    """Every pair with IFES_JAX_REFERENCES=all; else every twelfth (sorted)."""
    pairs = sorted(pairs)
    return pairs if os.environ.get("IFES_JAX_REFERENCES") == "all" else pairs[::12]


def _need(folder):
    if not os.path.isdir(folder):
        pytest.skip(f"{folder} is absent (the shared data lives beside the project)")


def _read(stem, profile):
    path = next(stem + ext for ext in IMAGE_EXTENSIONS if os.path.isfile(stem + ext))
    pixels, bits, _ = read_image(path)
    return profiles.to_inputs(to_float01(pixels, bits), profile)


_BATCHED = jax.vmap(profiles.compute, in_axes=(0, None, None, None))
# one program per image size: the 59 sizes of CDDFuse's pairs compile faster unoptimised
_PROGRAMS = {"vifb": jax.jit(_BATCHED, static_argnums=3),
             "cddfuse": jax.jit(_BATCHED, static_argnums=3,
                                compiler_options={"xla_backend_optimization_level": 0})}


def _score_methods(fused_list, ir, vis, profile):
    """{metric: array over methods}, one batched float64 call."""
    with jax.enable_x64(True):
        fused, ir, vis = (np.asarray(x, np.float64) for x in (np.stack(fused_list), ir, vis))
        scores = _PROGRAMS[profile](fused, ir, vis, profile)
        return {k: np.asarray(v) for k, v in jax.device_get(scores).items()}


def _references(path, key_fields, name_of=lambda n: n):
    table = collections.defaultdict(lambda: collections.defaultdict(dict))
    with open(path) as f:
        for row in csv.DictReader(f):
            pair_key = tuple(row[k] for k in key_fields)
            table[pair_key][row["method"]][name_of(row["metric"])] = float(row["value"])
    return table


def _vifb_tolerance(value):
    """Half a unit in the 5th significant digit, plus 5 % for the float formatting."""
    return 0.5 * 10.0 ** (np.floor(np.log10(abs(value))) - 4) * 1.05


def _check_pair(folder, vis_name, pair, by_method, profile, tolerance):
    """(values checked, misses) of every method's stored values on one pair."""
    methods = sorted(by_method)
    fused = [_read(os.path.join(folder, "fused", m, pair), profile) for m in methods]
    got = _score_methods(fused, _read(os.path.join(folder, "ir", pair), profile),
                         _read(os.path.join(folder, vis_name, pair), profile), profile)
    checked, misses = 0, []
    for i, method in enumerate(methods):
        for name, want in by_method[method].items():
            checked += 1
            if abs(got[name][i] - want) > tolerance(name, want):
                misses.append((method, pair, name, float(got[name][i]), want))
    return checked, misses


def test_vifb_profile_reproduces_vifbs_stored_values():
    root = os.path.join(DATA, "vifb")
    _need(root)
    table = _references(os.path.join(root, "vifb_metrics.csv"), ("pair",), VIFB_NAMES.get)
    assert len(table) == 21
    checked, misses, pairs = 0, [], _checked_pairs(table)
    for pair in pairs:
        n, bad = _check_pair(root, "vis", pair[0], table[pair], "vifb",
                             lambda name, want: _vifb_tolerance(want))
        checked, misses = checked + n, misses + bad
    assert checked == 12 * len(pairs) * 13
    assert not misses, misses[:10]


@pytest.mark.parametrize("subset, pairs", [("tno", 25), ("roadscene", 50)])
def test_cddfuse_profile_reproduces_the_values_of_cddfuses_evaluator(subset, pairs):
    root = os.path.join(DATA, "cddfuse-test")
    _need(root)
    table = _references(os.path.join(root, "reference_metrics.csv"), ("set", "pair"))
    in_subset = [key for key in table if key[0] == subset]
    assert len(in_subset) == pairs
    checked, misses, chosen = 0, [], _checked_pairs(in_subset)
    for key in chosen:
        n, bad = _check_pair(os.path.join(root, subset), "vi", key[1], table[key], "cddfuse",
                             lambda name, want: CDDFUSE_RTOL[name] * abs(want))
        checked, misses = checked + n, misses + bad
    assert checked == len(chosen) * 3 * 12
    assert not misses, misses[:10]


def test_opencv_gray_is_bt601_rounded_to_integers():
    """0.299 R + 0.587 G + 0.114 B, worked by hand: 18.15 -> 18, 0.299 -> 0, 254.886 -> 255."""
    rgb = np.array([[[10, 20, 30], [255, 255, 255], [0, 0, 0], [1, 0, 0], [255, 255, 254]]],
                   np.float32) / 255
    np.testing.assert_array_equal(profiles.opencv_gray(rgb) * 255, [[18, 255, 0, 0, 255]])


def test_toolbox_profiles_refuse_float32_only_calls():
    x = np.full((80, 80), 0.5, np.float32)
    with pytest.raises(ValueError, match="float64"):
        profiles.compute(x, x, x, "vifb")


def test_evaluate_cli_on_cddfuses_own_layout_gives_its_evaluators_means(tmp_path):
    """scripts/evaluate.py on CDDFuse's ir/ + vi/ folder, a `dir:` method: its results.json
    means equal the means of CDDFuse's own values for those pairs."""
    from ifes_jax.cli import evaluate as cli
    root = os.path.join(DATA, "cddfuse-test", "tno")
    _need(root)
    fused = os.path.join(root, "fused", "ifesnet_jax")
    cli.main(["--data", root, "--methods", f"dir:{fused}", "--profile", "cddfuse",
              "--pairs", "01..03", "--out", str(tmp_path), "--figure-pairs", "0"])
    with open(tmp_path / "results.json") as f:
        means = json.load(f)["ifesnet_jax"]
    table = _references(os.path.join(DATA, "cddfuse-test", "reference_metrics.csv"), ("set", "pair"))
    for name in profiles.names("cddfuse"):
        want = np.mean([table[("tno", p)]["ifesnet_jax"][name] for p in ("01", "02", "03")])
        assert abs(means[name] - want) <= CDDFUSE_RTOL[name] * abs(want), name
