"""Fault injection through the command-line tools: bad inputs, outputs that would overwrite an
input, corrupted weights and checkpoints, hostile images and signals. Every case must end
with one line naming the thing and a non-zero exit (or, for --skip-bad, the bad pairs listed
while the good ones complete), with nothing half-written and no input touched.

Most cases call the CLIs' `main` in this process (the same code as the scripts, without a
process start each); the signal and device cases run them as subprocesses."""
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from ifes_jax import compilation_cache, fuse, train
from ifes_jax.cli import evaluate as evaluate_cli, fuse as fuse_cli
from ifes_jax.data.synthetic import synthetic_pair
from tests.helpers.tiny_config import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _no_process_state(monkeypatch):
    monkeypatch.setattr(compilation_cache, "enable", lambda *a: None)
    with warnings.catch_warnings():
        yield


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train.train_and_evaluate(tiny_config(steps=2, checkpoint_every=2), str(path))
    return str(path)


def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)
    return str(path)


def _pair(root, name="a", size=(72, 80)):
    ir, vis = synthetic_pair(0, *size)
    return (_png(os.path.join(root, "ir", f"{name}.png"), np.rint(ir * 255).astype(np.uint8)),
            _png(os.path.join(root, "vis", f"{name}.png"), np.rint(vis * 255).astype(np.uint8)))


def _run(cli, capsys, *args):
    """(exit code, stderr) of a CLI's main in this process."""
    try:
        cli.main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    return code, capsys.readouterr().err


def _one_line(code, err, *needles):
    assert code != 0 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _digest(paths):
    return {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}


def _fuse(capsys, *args):
    return _run(fuse_cli, capsys, *args)


# ------------------------------------------------------------------- outputs and inputs

def test_no_output_may_replace_an_input(tmp_path, capsys):
    ir, vis = _pair(tmp_path / "in")
    before = _digest([ir, vis])
    weight_named = str(tmp_path / "f_weight_vis.png")
    shutil.copy(vis, weight_named)
    before[weight_named] = _digest([weight_named])[weight_named]
    for args, needle in [
            (["--ir", ir, "--vis", weight_named, "--out", str(tmp_path / "f.png"),
              "--save-weights", "--overwrite"], "overwrite the input"),
            (["--ir", ir, "--vis", vis, "--out", ir, "--overwrite"], "overwrite the input"),
            (["--ir", ir, "--vis", vis, "--out", os.path.join(tmp_path, "in", "ir", "..", "ir", "a.png"),
              "--overwrite"], "overwrite the input")]:
        _one_line(*_fuse(capsys, *args), needle)
    assert _digest(list(before)) == before and not (tmp_path / "f.png").exists()


def test_output_paths_that_cannot_be_written(tmp_path, capsys):
    ir, vis = _pair(tmp_path / "in")
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "adir.png").mkdir()
    cases = [(str(afile / "f.png"), "which is a file"), (str(tmp_path / "adir.png"), "is a folder"),
             ("/proc/ifes_fused.png", "cannot be written")]
    for out, needle in cases:
        _one_line(*_fuse(capsys, "--ir", ir, "--vis", vis, "--out", out), needle)
    _one_line(*_fuse(capsys, "--ir-dir", str(tmp_path / "in" / "ir"), "--vis-dir",
                     str(tmp_path / "in" / "vis"), "--out-dir", str(afile)), "not a folder")
    assert not list(tmp_path.glob("**/.tmp-*"))


def test_written_images_follow_the_umask(tmp_path, capsys):
    ir, vis = _pair(tmp_path / "in")
    old = os.umask(0o022)
    try:
        code, err = _fuse(capsys, "--ir", ir, "--vis", vis, "--out", str(tmp_path / "f.png"),
                          "--save-weights")
    finally:
        os.umask(old)
    assert code == 0, err
    for name in ("f.png", "f_weight_ir.png", "f_weight_vis.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------- wrong images

@pytest.mark.parametrize("tile", ["10", "-1", "68"])
def test_a_tile_too_small_for_its_margins_is_refused(tmp_path, capsys, tile):
    ir, vis = _pair(tmp_path / "in")
    _one_line(*_fuse(capsys, "--ir", ir, "--vis", vis, "--out", str(tmp_path / "f.png"),
                     "--tile", tile), "tile must be")
    assert not (tmp_path / "f.png").exists()


def _exported(tmp_path, change=None):
    folder = tmp_path / "weights"
    shutil.copytree(fuse.SHIPPED_WEIGHTS, folder)
    if change:
        change(folder)
    return str(folder)


def _nan_weights(folder):
    from flax import serialization
    raw = serialization.msgpack_restore((folder / "params.msgpack").read_bytes())
    raw["head_weights"]["bias"] = np.full_like(raw["head_weights"]["bias"], np.nan)
    (folder / "params.msgpack").write_bytes(serialization.msgpack_serialize(raw))
    record = json.loads((folder / "checksum.json").read_text())
    record["params_sha256"] = hashlib.sha256((folder / "params.msgpack").read_bytes()).hexdigest()
    (folder / "checksum.json").write_text(json.dumps(record))


def _flip_bits(path, offset_fraction=0.5, count=4):
    """A few bits flipped from `offset_fraction` of the file on; with `count` < 0, one bit in
    every 1/|count| of the file (so that every array stored in it is hit)."""
    data = bytearray(open(path, "rb").read())
    if count < 0:
        offsets = [int(len(data) * (i + 0.5) / -count) for i in range(-count)]
    else:
        offsets = [int(len(data) * offset_fraction) + 8 * i for i in range(count)]
    for at in offsets:
        data[at] ^= 0x10
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("change,needle", [
    (_nan_weights, "not all finite"),
    (lambda f: _flip_bits(f / "params.msgpack"), "differs from checksum.json"),
    (lambda f: (f / "checksum.json").unlink(), "cannot be verified"),
    (lambda f: (f / "config.json").write_text("{not json"), "not a JSON config")])
def test_bad_exported_weights_are_refused(tmp_path, capsys, change, needle):
    ir, vis = _pair(tmp_path / "in")
    folder = _exported(tmp_path, change)
    _one_line(*_fuse(capsys, "--checkpoint", folder, "--ir", ir, "--vis", vis,
                     "--out", str(tmp_path / "f.png")), needle)
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("damage,needle", [
    ("flip", "checkpoints/2"), ("config", "unreadable config"), ("cut", "checkpoints/2")])
def test_a_damaged_checkpoint_is_refused_by_name(tmp_path, capsys, workdir, damage, needle):
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    step = run / "checkpoints" / "2"
    data_files = [os.path.join(d, name) for d, _, names in os.walk(step / "state") for name in names
                  if os.path.getsize(os.path.join(d, name)) > 4096]  # the arrays' data
    if damage == "flip":
        for path in data_files:
            _flip_bits(path, count=-64)
    elif damage == "config":
        (step / "config" / "metadata").write_text("{cut sho")
    else:
        for path in data_files:
            open(path, "r+b").truncate(os.path.getsize(path) // 2)
    ir, vis = _pair(tmp_path / "in")
    _one_line(*_fuse(capsys, "--checkpoint", str(run), "--ir", ir, "--vis", vis,
                     "--out", str(tmp_path / "f.png")), needle)
    assert not (tmp_path / "f.png").exists()


def test_exif_orientation_is_applied(tmp_path, capsys):
    """A visible JPEG stored sideways with an EXIF rotation is fused as a viewer shows it."""
    ir, vis = synthetic_pair(3, 48, 64)
    ir_path = _png(tmp_path / "ir.png", np.rint(ir * 255).astype(np.uint8))
    upright = tmp_path / "vis_upright.png"
    _png(upright, np.rint(vis * 255).astype(np.uint8))
    # stored sideways; orientation 6 tells a viewer to turn it 90° clockwise back upright
    stored = Image.fromarray(np.rint(vis * 255).astype(np.uint8)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    stored.save(tmp_path / "vis.jpg", exif=exif, quality=100, subsampling=0)
    for vis_path, out in ((str(tmp_path / "vis.jpg"), "rotated.png"), (str(upright), "upright.png")):
        code, err = _fuse(capsys, "--ir", ir_path, "--vis", vis_path, "--out", str(tmp_path / out))
        assert code == 0, err
    a = np.asarray(Image.open(tmp_path / "rotated.png"), np.float64)
    b = np.asarray(Image.open(tmp_path / "upright.png"), np.float64)
    assert a.shape == b.shape == (48, 64)
    assert np.abs(a - b).mean() < 2.0  # JPEG's rounding only


# -------------------------------------------------------------- hostile files in folders

def _bomb_png(path, width=10_000, height=10_000):
    """A valid PNG header claiming 10^8 pixels (under Pillow's own refusal at 1.8·10^8, over
    our default limit), with almost no data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").write(png)


def _hostile_folder(root):
    for name in ("good1", "good2", "empty", "link", "bomb"):
        _pair(root, name)
    open(os.path.join(root, "ir", "empty.png"), "wb").close()
    os.remove(os.path.join(root, "ir", "link.png"))
    (root / "notes.txt").write_text("not an image")
    os.symlink(root / "notes.txt", os.path.join(root, "ir", "link.png"))
    _bomb_png(os.path.join(root, "vis", "bomb.png"))
    return root


def test_fuse_skip_bad_lists_each_bad_pair_and_completes_the_good_ones(tmp_path, capsys):
    root = _hostile_folder(tmp_path / "in")
    out = tmp_path / "out"
    code, err = _fuse(capsys, "--ir-dir", str(root / "ir"), "--vis-dir", str(root / "vis"),
                      "--out-dir", str(out), "--skip-bad")
    assert code == 1 and "Traceback" not in err, err
    assert sorted(os.listdir(out)) == ["good1.png", "good2.png"]
    failed = {line.split(":")[1].strip(): line for line in err.splitlines() if line.startswith("failed:")}
    assert sorted(failed) == ["bomb", "empty", "link"]
    assert "empty file" in failed["empty"] and "not a readable image" in failed["link"]
    assert "megapixels, over the limit" in failed["bomb"]
    # without --skip-bad the first bad pair stops the run with one line
    _one_line(*_fuse(capsys, "--ir-dir", str(root / "ir"), "--vis-dir", str(root / "vis"),
                     "--out-dir", str(tmp_path / "out2")), "pair empty", "empty file")


def test_evaluate_skip_bad_lists_the_bad_pairs(tmp_path, capsys):
    root = _hostile_folder(tmp_path / "in")
    code, err = _run(evaluate_cli, capsys, "--data", str(root), "--methods", "average",
                     "--out", str(tmp_path / "eval"), "--skip-bad", "--figure-pairs", "0")
    assert code == 1 and "Traceback" not in err, err
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["meta"]["pairs"] == 2
    assert sorted(n for n, _ in results["meta"]["skipped"]) == ["bomb", "empty", "link"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    _one_line(*_run(evaluate_cli, capsys, "--data", str(root), "--methods", "average",
                    "--out", str(afile / "eval"), "--skip-bad"), "cannot be created")


def test_a_large_legal_image_is_refused_from_its_header_unless_allowed(tmp_path, capsys):
    ir, vis = _pair(tmp_path / "in", size=(300, 400))
    _one_line(*_fuse(capsys, "--ir", ir, "--vis", vis, "--out", str(tmp_path / "f.png"),
                     "--max-pixels", "100000"), "over the limit of")
    code, err = _fuse(capsys, "--ir", ir, "--vis", vis, "--out", str(tmp_path / "f.png"),
                      "--max-pixels", "200000")
    assert code == 0, err


# ------------------------------------------------------------------ subprocesses: signals

def _train_cmd(workdir, *overrides):
    return [sys.executable, os.path.join(ROOT, "scripts", "train.py"),
            "--config", os.path.join(ROOT, "tests", "helpers", "tiny_config.py"),
            f"--workdir={workdir}", *overrides]


def test_sigterm_during_start_up_exits_0_with_a_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(workdir), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # still importing
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "stopped at step 0" in out
    resumed = subprocess.run(_train_cmd(workdir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "resumed" in resumed.stdout, resumed.stderr[-2000:]


def test_cli_faults_without_tracebacks(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [(_train_cmd(afile), "not a folder"),
             (_train_cmd(tmp_path / "r", "--config.train.no_such_field=3"), "names no config field"),
             (_train_cmd(tmp_path / "r", "--config.train.batch_size=0"), "train.batch_size"),
             ([sys.executable, os.path.join(ROOT, "scripts", "fuse.py"), "--device", "tpu",
               "--ir", "a.png", "--vis", "b.png", "--out", str(tmp_path / "f.png")], "--device tpu")]
    for cmd, needle in cases:
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        _one_line(result.returncode, result.stderr, needle)
    assert not (tmp_path / "r").exists()


def test_a_failed_resume_changes_nothing_in_the_workdir(tmp_path, workdir):
    from ifes_jax.errors import InputError
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    files = [os.path.join(d, f) for d, _, fs in os.walk(run) for f in fs]
    before = _digest(files)
    config = tiny_config(steps=4, checkpoint_every=2)
    config.model.width_multiplier = 0.25  # another architecture
    with pytest.raises(InputError, match="does not fit the architecture of this config"):
        train.train_and_evaluate(config, str(run))
    assert _digest(files) == before
    assert sorted(os.path.join(d, f) for d, _, fs in os.walk(run) for f in fs) == sorted(files)


def test_a_compilation_cache_entry_that_fails_its_digest_is_dropped(tmp_path):
    good, bad, unrecorded = (tmp_path / f"jit_f-{k}-cache" for k in ("a", "b", "c"))
    good.write_bytes(b"program a")
    bad.write_bytes(b"program b")
    compilation_cache.record_digests(str(tmp_path))
    unrecorded.write_bytes(b"program c")  # written by a run that did not exit cleanly
    bad.write_bytes(b"program B")  # bytes changed on disk
    dropped = compilation_cache.drop_unverified(str(tmp_path))
    assert sorted(os.path.basename(p) for p in dropped) == [bad.name, unrecorded.name]
    assert sorted(os.listdir(tmp_path)) == [good.name, good.name + ".sha256"]
