"""Metric terms of the loss (`loss.metric_terms`): by name, in the objective, logged, validated,
plotted, and refused with one line when they cannot work."""
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import quickstart
from ifes_jax import config_check, metric_terms, metrics, train
from ifes_jax.errors import ConfigError
from tests.helpers.tiny_config import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jit(fn):
    """`fn` compiled unoptimised: run once on 24 x 24 images, compiling is its cost (run
    eagerly, every primitive would be compiled on its own)."""
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})


def _outputs(rng, shape=(2, 24, 24, 1)):
    images = [rng.uniform(size=shape).astype(np.float32) for _ in range(5)]
    weights = rng.uniform(size=shape[:3] + (2,)).astype(np.float32)
    return images, {"fused": images[2], "recon_ir": images[3], "recon_vis": images[4],
                    "weights": weights}


def test_the_objective_adds_each_weighted_metric_to_eq_6():
    rng = np.random.default_rng(0)
    (ir, vis, fused, _, _), outputs = _outputs(rng)
    config = quickstart.get_config().loss
    plain, plain_terms = _jit(lambda o: train.objective(o, ir, vis, config))(outputs)
    config.metric_terms = ml_collections.ConfigDict({"scd": -0.1, "cddfuse:AG": 0.02})
    total, terms = _jit(lambda o: train.objective(o, ir, vis, config))(outputs)
    # independent values: each metric image by image, averaged over the batch
    scd = np.mean([float(metrics.scd(fused[i, ..., 0], ir[i, ..., 0], vis[i, ..., 0])) for i in range(2)])
    ag = np.mean([float(metrics.average_gradient(fused[i, ..., 0], differences="central", divisor="MN"))
                  for i in range(2)])
    np.testing.assert_allclose(float(terms["metric_scd"]), scd, rtol=1e-5)
    np.testing.assert_allclose(float(terms["metric_cddfuse_AG"]), ag, rtol=1e-5)
    np.testing.assert_allclose(float(total), float(plain) - 0.1 * scd + 0.02 * ag, rtol=1e-5)
    assert {k: float(v) for k, v in terms.items() if k.startswith("loss_")} == pytest.approx(
        {k: float(v) for k, v in plain_terms.items() if k.startswith("loss_")})


def test_a_metric_term_moves_the_gradient_by_its_own():
    """d(total)/d(fused) = d(eq. 6)/d(fused) + w · d(metric)/d(fused)."""
    rng = np.random.default_rng(1)
    (ir, vis, fused, _, _), outputs = _outputs(rng)
    config = quickstart.get_config().loss

    def total_of(f, cfg):
        return train.objective(dict(outputs, fused=f), ir, vis, cfg)[0]
    plain = _jit(jax.grad(lambda f: total_of(f, config)))(fused)
    config.metric_terms = ml_collections.ConfigDict({"ssim_fusion": -0.5})
    with_term = _jit(jax.grad(lambda f: total_of(f, config)))(fused)
    ssim_grad = _jit(jax.grad(lambda f: sum(metrics.ssim_fusion(f[i, ..., 0], ir[i, ..., 0], vis[i, ..., 0])
                                            for i in range(2)) / 2))(fused)
    np.testing.assert_allclose(with_term - plain, -0.5 * ssim_grad, atol=1e-7, rtol=1e-4)


def test_profile_names_carry_the_profiles_conventions():
    f = np.random.default_rng(2).uniform(size=(48, 48)).astype(np.float32)
    got = metric_terms.metric_fn("vifb:AG")(f, f, f)
    np.testing.assert_allclose(float(got), float(metrics.average_gradient(f, differences="central")),
                               rtol=1e-6)


@pytest.mark.parametrize("terms, message", [
    ({"vif": -0.1}, r"^loss.metric_terms: unknown metric 'vif'; use one of .*viff.*PROFILE:NAME"),
    ({"entropy": -0.1}, r"^loss.metric_terms: 'entropy' has no gradient .*: use soft_entropy$"),
    ({"vifb:MI": 1.0}, r"^loss.metric_terms: 'vifb:MI' has no gradient .*: use soft_mutual_information$"),
    ({"vifb:Qcb": 1.0}, r"^loss.metric_terms: 'vifb:Qcb' has no gradient \(.*\)$"),
    ({"paper:VIF": 1.0}, r"^loss.metric_terms: profile paper has no metric 'VIF'; it has AG, "),
    ({"tno:SSIM": 1.0}, r"^loss.metric_terms: unknown profile 'tno' in 'tno:SSIM'; profiles: paper"),
    ({"viff": "a lot"}, r"^loss.metric_terms: the weight of 'viff' must be a number; got 'a lot'$"),
    ({"viff": -0.1}, r"^loss.metric_terms: 'viff' on the 32x32 training crops \(data.crop_size\): "
                     r"VIFF needs images of at least 41x41"),
])
def test_a_term_that_cannot_work_is_refused_before_anything_runs(terms, message):
    config = tiny_config()
    config.loss.metric_terms = ml_collections.ConfigDict(terms)
    with pytest.raises(ConfigError, match=message):
        config_check.check(config)


def test_a_term_too_large_for_the_validation_crops_is_refused():
    config = tiny_config()
    config.data.update(crop_size=64, val_dir="/nowhere", val_size=32)
    config.loss.metric_terms = ml_collections.ConfigDict({"viff": -0.1})
    with pytest.raises(ConfigError, match=r"^loss.metric_terms: 'viff' on the 32x32 validation "
                                          r"crops \(data.val_size\): VIFF needs"):
        config_check.check(config)


def test_the_train_cli_refuses_an_unknown_term_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config",
                             os.path.join(ROOT, "configs", "quickstart.py"), "--workdir", str(tmp_path / "w"),
                             "--config.loss.metric_terms={\"viff\": -0.1, \"sharpness\": 1}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and not os.path.exists(tmp_path / "w")
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown metric 'sharpness'" in lines[0]


def test_a_run_logs_validates_and_plots_its_metric_terms(tmp_path):
    rng = np.random.default_rng(3)
    for sub in ("ir", "vis"):
        os.makedirs(tmp_path / "val" / sub)
        Image.fromarray(rng.integers(0, 255, (40, 36), dtype=np.uint8)).save(tmp_path / "val" / sub / "a.png")
    config = tiny_config(steps=4, checkpoint_every=2)
    config.data.update(val_dir=str(tmp_path / "val"), val_size=32, cache_dir=str(tmp_path / "cache"))
    config.loss.metric_terms = ml_collections.ConfigDict({"ssim_fusion": -0.2, "soft_entropy": -0.01})
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir))
    with open(workdir / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4]
    for r in train_rows:  # the logged total is eq. 6 plus the weighted terms
        built_in = r["loss_ir"] + r["loss_vis"] + r["loss_fusion"] + r["loss_map"]
        expected = built_in - 0.2 * r["metric_ssim_fusion"] - 0.01 * r["metric_soft_entropy"]
        np.testing.assert_allclose(r["loss"], expected, rtol=1e-5)
    val_rows = [r for r in rows if "val_loss" in r]
    assert val_rows and all(np.isfinite(r["val_metric_ssim_fusion"]) for r in val_rows)
    assert all(np.isfinite(r["val_metric_soft_entropy"]) for r in val_rows)
    assert os.path.getsize(workdir / "loss_curve.png") > 0
    with open(workdir / "config.json") as f:
        assert json.load(f)["loss"]["metric_terms"] == {"ssim_fusion": -0.2, "soft_entropy": -0.01}
