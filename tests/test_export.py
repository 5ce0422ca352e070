"""scripts/export.py: a StableHLO program that a process without flax or ifes_jax runs, and an
ONNX model that onnxruntime runs, both giving the package's fusion (its default CPU path, the
oneDNN convolutions, is the reference) on real pairs of two sizes."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from ifes_jax import export, fuse
from ifes_jax.data.images import luma
from ifes_jax.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
PAIRS = [("tno-infv20", "001.png"), ("roadscene", "FLIR_00006.jpg")]  # 360x270 and 500x329
TOLERANCE = 1e-4  # on [0, 1] images


@pytest.fixture(scope="module")
def shipped():
    return fuse.load_exported()


@pytest.fixture(scope="module")
def pairs(shipped):
    """[(ir, vis, the package's output)] of two real pairs: (1, H, W, 1) float32 inputs."""
    found = []
    for folder, name in PAIRS:
        paths = [os.path.join(DATA, folder, sub, name) for sub in ("ir", "vis")]
        if not all(os.path.isfile(p) for p in paths):
            pytest.skip(f"{paths[0]} is absent (the shared data lives beside the project)")
        ir, vis, _ = fuse.read_pair_files(*paths)
        ir, vis = luma(ir), luma(vis)
        found.append((ir[None, ..., None], vis[None, ..., None], shipped(ir, vis)))
    return found


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export.py"), "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 2 and not result.stderr.strip(), result.stderr[-2000:]
    return out


STANDALONE = """
import json, sys, zipfile
import numpy as np, jax
with zipfile.ZipFile(sys.argv[1]) as z:
    metadata = json.loads(z.read("metadata.json"))
    program = jax.export.deserialize(bytearray(z.read("program.bin")))
inputs = np.load(sys.argv[2])
outputs = {}
for i in range(len(inputs.files) // 2):
    out = program.call(inputs[f"ir{i}"], inputs[f"vis{i}"])
    outputs |= {f"{name}{i}": np.asarray(value) for name, value in out.items()}
np.savez(sys.argv[3], **outputs)
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"flax", "ifes_jax", "optax", "orbax", "grain"})
print(json.dumps({"loaded": loaded, "params_sha256": metadata["params_sha256"]}))
"""


def test_the_stablehlo_program_runs_with_jax_and_numpy_alone(artefacts, pairs, tmp_path):
    inputs = {f"{k}{i}": x for i, (ir, vis, _) in enumerate(pairs) for k, x in (("ir", ir), ("vis", vis))}
    np.savez(tmp_path / "in.npz", **inputs)
    result = subprocess.run([sys.executable, "-c", STANDALONE, str(artefacts / "ifesnet.stablehlo.zip"),
                             str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []  # neither this package nor flax, optax, orbax or grain
    with open(os.path.join(fuse.SHIPPED_WEIGHTS, "checksum.json")) as f:
        assert report["params_sha256"] == json.load(f)["params_sha256"]
    out = np.load(tmp_path / "out.npz")
    for i, (ir, _, want) in enumerate(pairs):
        assert out[f"fused{i}"].shape == ir.shape and out[f"weights{i}"].shape == ir.shape[:3] + (2,)
        np.testing.assert_allclose(out[f"fused{i}"][0, ..., 0], want["fused"], atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(out[f"weights{i}"][0], want["weights"], atol=TOLERANCE, rtol=0)


def test_onnxruntime_reproduces_the_package_on_two_sizes(artefacts, pairs):
    import onnx
    import onnxruntime
    model = onnx.load(str(artefacts / "ifesnet.onnx"))
    meta = export.onnx_metadata(model)
    assert meta["format"] == export.FORMAT and meta["opset"] == export.ONNX_OPSET
    assert meta["config"]["model"]["width_multiplier"] == fuse.load_exported().config.model.width_multiplier
    assert meta["params_sha256"] == fuse.params_sha256(fuse.load_exported().params)
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert dims == [["B", "H", "W", 1]] * 2  # dynamic batch, height and width
    session = onnxruntime.InferenceSession(str(artefacts / "ifesnet.onnx"),
                                           providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["fused", "weights"]
    for ir, vis, want in pairs:
        fused, weights = session.run(None, {"ir": ir, "vis": vis})
        assert np.abs(fused[0, ..., 0] - want["fused"]).max() <= TOLERANCE
        assert np.abs(weights[0] - want["weights"]).max() <= TOLERANCE


def test_bfloat16_and_fused_only_exports(shipped, pairs, tmp_path):
    path = tmp_path / "bf16.zip"
    meta = export.export_stablehlo(shipped, path, dtype="bfloat16", with_weights=False,
                                   platforms=("cpu",))
    assert meta["dtype"] == "bfloat16" and list(meta["outputs"]) == ["fused"]
    program, _ = export.load_stablehlo(path)
    assert "bf16" in program.mlir_module()  # the convolutions compute in bfloat16
    ir, vis, want = pairs[0]
    out = program.call(ir, vis)
    assert list(out) == ["fused"] and out["fused"].dtype == np.float32
    half = fuse.load_exported(half_precision=True)(ir[0, ..., 0], vis[0, ..., 0])["fused"]
    np.testing.assert_allclose(np.asarray(out["fused"])[0, ..., 0], half, atol=2e-2)
    assert np.abs(np.asarray(out["fused"])[0, ..., 0] - want["fused"]).mean() < 1e-2


def test_a_damaged_export_is_refused_and_bad_options_are_one_line(shipped, tmp_path):
    path = tmp_path / "m.zip"
    export.export_stablehlo(shipped, path, platforms=("cpu",))
    with zipfile.ZipFile(path) as z:
        meta, blob = z.read("metadata.json"), bytearray(z.read("program.bin"))
    blob[len(blob) // 2] ^= 0xFF
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as z:
        z.writestr("metadata.json", meta)
        z.writestr("program.bin", bytes(blob))
    with pytest.raises(InputError, match="SHA-256 differs"):
        export.load_stablehlo(tmp_path / "bad.zip")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not an ifes-jax StableHLO export"):
        export.load_stablehlo(tmp_path / "junk.zip")
    with pytest.raises(InputError, match="float32 only"):
        export.export_onnx(shipped, tmp_path / "m.onnx", dtype="bfloat16")
    assert not (tmp_path / "m.onnx").exists()
    script = [sys.executable, os.path.join(ROOT, "scripts", "export.py"), "--out", str(tmp_path)]
    (tmp_path / "ifesnet.stablehlo.zip").write_bytes(b"")
    exists = subprocess.run(script + ["--format", "stablehlo"], capture_output=True, text=True,
                            timeout=300)
    assert exists.returncode == 1 and exists.stderr.strip().endswith("(use --overwrite to replace it)")
    assert (tmp_path / "ifesnet.stablehlo.zip").read_bytes() == b""  # nothing replaced
    unknown = subprocess.run(script + ["--format", "tflite"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown tflite" in unknown.stderr
