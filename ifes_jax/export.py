"""Deployment artefacts of a trained IFESNet that run without this package.

* `export_stablehlo`: a `jax.export` program (StableHLO) for the CPU and CUDA with symbolic
  batch, height and width, in a zip beside its metadata. Only jax and numpy run it:

      import json, zipfile, jax
      with zipfile.ZipFile("ifesnet.stablehlo.zip") as z:
          metadata = json.loads(z.read("metadata.json"))
          program = jax.export.deserialize(z.read("program.bin"))
      out = program.call(ir, vis)      # (B, H, W, 1) float32 in [0, 1] -> {"fused", "weights"}

* `export_onnx`: an ONNX model (jax2onnx, optional extra `[export]`) with dynamic batch, height
  and width, run by onnxruntime: `session.run(None, {"ir": ir, "vis": vis})`. Opset 21;
  float32 only (ONNX's Conv has no bfloat16).

Both hold the network of eq. 1–5 with XLA's convolution (no oneDNN custom call, which only this
package can run), the parameters as constants, and metadata: the model's config, the SHA-256
of its float32 parameters (`params_sha256`, as in the shipped weights' checksum.json), the
compute dtype and the outputs (the fused image, and the two weight maps of eq. 4 unless left
out). Inputs and outputs are float32 whatever the compute dtype.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import uuid
import zipfile

import jax
import jax.numpy as jnp

from ifes_jax import fuse, model as model_lib
from ifes_jax.errors import InputError

FORMAT = "ifes-jax export 1"
PROGRAM, METADATA = "program.bin", "metadata.json"
DTYPES = ("float32", "bfloat16")
PLATFORMS = ("cpu", "cuda")
ONNX_OPSET = 21  # onnxruntime 1.2x runs every operator the network uses at this opset
INPUT_NAMES = ("ir", "vis")


def output_names(with_weights: bool) -> tuple[str, ...]:
    return ("fused", "weights") if with_weights else ("fused",)


def inference_function(fuser, dtype: str = "float32", with_weights: bool = True):
    """`f(ir, vis) -> (fused, weights)` (or `(fused,)`) on (B, H, W, 1) float32 images, with
    `fuser`'s parameters closed over and XLA's convolution, computing in `dtype`."""
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    net = fuser.net.clone(conv=model_lib.conv3x3, dtype=jnp.dtype(dtype))
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), jax.device_get(fuser.params))

    def fuse_pair(ir, vis):
        out = net.apply({"params": params}, ir, vis)
        return tuple(out[name] for name in output_names(with_weights))
    return fuse_pair


def metadata(fuser, dtype: str, with_weights: bool) -> dict:
    return {"format": FORMAT, "model": "IFESNet",
            "config": json.loads(fuser.config.to_json_best_effort()),
            "params_sha256": fuse.params_sha256(fuser.params), "dtype": dtype,
            "inputs": {name: "(batch, height, width, 1) float32 in [0, 1]" for name in INPUT_NAMES},
            "outputs": {"fused": "(batch, height, width, 1) float32",
                        "weights": "(batch, height, width, 2) float32: W1 (infrared), W2 (visible)"}
            if with_weights else {"fused": "(batch, height, width, 1) float32"},
            "jax": jax.__version__}


def export_stablehlo(fuser, path, *, dtype: str = "float32", with_weights: bool = True,
                     platforms=PLATFORMS) -> dict:
    """Write the `jax.export` program of `fuser` (symbolic batch, height, width) and its
    metadata into the zip `path`; returns the metadata."""
    fuse_pair = inference_function(fuser, dtype, with_weights)
    names = output_names(with_weights)

    def program(ir, vis):
        return dict(zip(names, fuse_pair(ir, vis)))
    batch, height, width = jax.export.symbolic_shape("batch, height, width")
    spec = jax.ShapeDtypeStruct((batch, height, width, 1), jnp.float32)
    exported = jax.export.export(jax.jit(program), platforms=tuple(platforms))(spec, spec)
    blob = exported.serialize()
    meta = metadata(fuser, dtype, with_weights) | {
        "platforms": list(platforms), "program_sha256": hashlib.sha256(blob).hexdigest()}

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(METADATA, json.dumps(meta, indent=2))
            z.writestr(PROGRAM, blob)
    _write_atomic(path, write)
    return meta


def load_stablehlo(path):
    """(the `jax.export.Exported` program, its metadata) of an `export_stablehlo` zip, its
    program checked against the SHA-256 in the metadata."""
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read(METADATA))
            blob = z.read(PROGRAM)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not an ifes-jax StableHLO export ({exc})") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if hashlib.sha256(blob).hexdigest() != meta.get("program_sha256"):
        raise InputError(f"{path}: the program's SHA-256 differs from its metadata (corrupted)")
    return jax.export.deserialize(bytearray(blob)), meta


def export_onnx(fuser, path, *, dtype: str = "float32", with_weights: bool = True,
                opset: int = ONNX_OPSET) -> dict:
    """Write an ONNX model of `fuser` (dynamic batch, height, width; inputs "ir" and "vis",
    outputs "fused" and "weights") with the metadata as `metadata_props`; returns the metadata."""
    try:
        from jax2onnx import to_onnx
    except ImportError:
        raise InputError("ONNX export needs jax2onnx and onnx: pip install 'ifes-jax[export]'") from None
    check_onnx_dtype(dtype)
    fuse_pair = inference_function(fuser, dtype, with_weights)
    names = output_names(with_weights)
    with _quiet_jax2onnx():
        proto = to_onnx(fuse_pair, [("B", "H", "W", 1)] * 2, model_name="ifesnet", opset=opset,
                        input_names=list(INPUT_NAMES), output_names=list(names))
    meta = metadata(fuser, dtype, with_weights) | {"opset": opset}
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    _write_atomic(path, lambda f: f.write(proto.SerializeToString()))
    return meta


def check_onnx_dtype(dtype: str) -> None:
    if dtype != "float32":  # ONNX's Conv takes float16/32/64 only
        raise InputError(f"ONNX export computes in float32 only (ONNX's Conv has no {dtype}); "
                         "use the StableHLO export for bfloat16")


@contextlib.contextmanager
def _quiet_jax2onnx():
    """jax2onnx 0.12 prints from its conv plugin and logs a traceback for each plugin of a
    library it does not find working (dm_pix on jax 0.10): neither concerns this network."""
    plugin_log = logging.getLogger("jax2onnx.plugins.plugin_system")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        plugin_log.setLevel(level)


def onnx_metadata(model_proto) -> dict:
    """The metadata `export_onnx` stored, decoded."""
    def decode(value):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return {p.key: decode(p.value) for p in model_proto.metadata_props}


def _write_atomic(path, write):
    """`write(file)` into a temporary file beside `path`, renamed onto it once complete."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
