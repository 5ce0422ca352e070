"""The training config is checked before anything runs: one line naming the field."""
import os
import subprocess
import sys

import pytest

from configs import quickstart
from ifes_jax import config_check
from ifes_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_shipped_configs_pass():
    from configs import default, fidelity, tno_cpu, tno_cpu_fidelity, tno_gpu
    for module in (default, quickstart, tno_cpu, tno_gpu, fidelity, tno_cpu_fidelity):
        config_check.check(module.get_config())


@pytest.mark.parametrize("path", sorted(config_check.CHOICES))
def test_every_choice_field_is_checked(path):
    config = quickstart.get_config()
    block, field = path.split(".")
    config[block][field] = "nonsense"
    with pytest.raises(ConfigError, match=rf"^{path} must be one of .*; got 'nonsense'$"):
        config_check.check(config)


@pytest.mark.parametrize("path,value", [
    ("train.batch_size", 0), ("data.crop_size", 0), ("train.steps", -5), ("train.log_every", 0),
    ("train.checkpoint_every", 0), ("train.sample_every", 0), ("loss.window_size", 0),
    ("model.width_multiplier", 0.0), ("optim.learning_rate", -1.0), ("optim.b1", 1.0),
    ("model.num_stages", 5), ("data.train_fraction", 1.5)])
def test_sizes_counts_and_intervals_are_checked(path, value):
    config = quickstart.get_config()
    block, field = path.split(".")
    if field == "train_fraction":
        config.data.train_fraction = value
    else:
        config[block][field] = value
    with pytest.raises(ConfigError, match=rf"^{path} must be"):
        config_check.check(config)


def test_the_cli_reports_a_bad_field_in_one_line_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config",
         os.path.join(ROOT, "configs", "quickstart.py"), f"--workdir={workdir}",
         "--config.train.checkpoint_every=0"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "error: train.checkpoint_every must be a positive integer; got 0")
    assert "Traceback" not in result.stderr and not workdir.exists()
