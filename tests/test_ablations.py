"""scripts/ablations.py trains each variant with its overrides, exports it, and resumes."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "ablations.py")
TINY = ["--set", "train.steps=4", "--set", "train.checkpoint_every=2", "--set", "train.sample_every=4",
        "--set", "train.log_every=2", "--set", "data.crop_size=32"]


def _run(args):
    return subprocess.run([sys.executable, SCRIPT, "--config", os.path.join(ROOT, "tests", "helpers", "tiny_config.py")]
                          + args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_variants_train_export_and_are_not_retrained(tmp_path):
    work = str(tmp_path / "abl")
    result = _run(["--workdir", work, "--variants", "ifesnet,wo_ifem", "--jobs", "2"] + TINY)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    for name, interactive in (("ifesnet", True), ("wo_ifem", False)):
        with open(os.path.join(work, "exports", name, "config.json")) as f:
            config = json.load(f)
        assert config["model"]["interactive"] is interactive
        assert config["train"]["steps"] == 4 and config["data"]["crop_size"] == 32
        assert os.path.isfile(os.path.join(work, "exports", name, "params.msgpack"))
    again = _run(["--workdir", work, "--variants", "ifesnet,wo_ifem"] + TINY)
    assert again.returncode == 0 and "started" not in again.stdout


def test_unknown_variant_is_a_one_line_error(tmp_path):
    result = _run(["--workdir", str(tmp_path), "--variants", "s9"])
    assert result.returncode != 0 and "unknown variant" in result.stderr and "s9" in result.stderr


def test_unknown_override_is_a_one_line_error(tmp_path):
    result = _run(["--workdir", str(tmp_path), "--set", "train.no_such_field=3"])
    assert result.returncode != 0 and "bad override" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_fidelity_candidate_is_a_valid_config_and_validates_off_the_test_sets():
    from ifes_jax import config_check
    from ifes_jax.cli import ablations
    base = os.path.join(ROOT, "configs", "fidelity.py")
    for name, overrides in ablations.FIDELITY.items():
        config = ablations.load_config(base, overrides)
        config_check.check(config)
        for key, value in overrides.items():
            section, field = key.split(".") if "." in key else (None, key)
            assert (config[section][field] if section else config[field]) == value, (name, key)
    # the 18 validation pairs are training pairs of tno_cpu, none of them in INFV-20/INFV-41
    tno = os.path.join(ROOT, "..", "shared", "data", "tno-full")
    lists = os.path.join(ROOT, "configs", "lists")
    names = {f: set(open(os.path.join(d, f)).read().split()) for d, f in (
        (lists, "tno-fidelity-train.txt"), (lists, "tno-fidelity-val.txt"),
        (tno, "train-pairs.txt"), (tno, "test-overlap-pairs.txt"))}
    train, val = names["tno-fidelity-train.txt"], names["tno-fidelity-val.txt"]
    assert len(val) == 18 and not train & val and train | val == names["train-pairs.txt"]
    assert not val & names["test-overlap-pairs.txt"]
    # the diagnostic adds exactly the 40 test-overlap pairs, still validating off them
    from ifes_jax.data.pairs import read_name_list
    overlap = read_name_list(ablations.FIDELITY["diag_test_overlap"]["data.train_list"])
    assert len(overlap) == len(set(overlap)) == 111
    assert set(overlap) == train | names["test-overlap-pairs.txt"] and not set(overlap) & val
    # the winner at full budget keeps that split, with tno_cpu's budget and the two changes
    from configs import tno_cpu, tno_cpu_fidelity
    winner, shipped = tno_cpu_fidelity.get_config(), tno_cpu.get_config()
    assert winner.data.train_list.endswith("tno-fidelity-train.txt")
    assert winner.data.val_train_list.endswith("tno-fidelity-val.txt") and winner.data.val_split == "train"
    assert winner.train.steps == shipped.train.steps and winner.optim == shipped.optim
    assert (winner.loss.weight_map, winner.model.weight_activation) == (0.1, "linear")
