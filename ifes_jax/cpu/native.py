"""Building and loading the oneDNN handlers of `onednn_conv.cc` (XLA FFI custom calls).

They are compiled on first use with the C++ compiler (`$CXX`, default g++) against the headers
of `onednn-devel-cpu-gomp` and jaxlib's FFI headers, and cached by source and versions in
~/.cache/ifes_jax/onednn (or $IFES_JAX_ONEDNN_CACHE); building takes a few seconds once. The
SHA-256 of every built library is recorded beside it, and a cached library whose bytes no longer
match is rebuilt rather than loaded. `unavailable()` says why oneDNN cannot be used here (not
x86-64 Linux, packages or compiler missing, the build failed).
"""
from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile

import jax

SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
TARGETS = ("IfesConvForward", "IfesConvInputGrad", "IfesConvKernelGrad")
LIBRARY_PACKAGE, HEADER_PACKAGE = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"


class Unavailable(RuntimeError):
    """oneDNN convolutions cannot be built or loaded on this machine."""


def _package_file(package: str, suffix: str) -> pathlib.Path:
    try:
        files = importlib.metadata.distribution(package).files or []
    except importlib.metadata.PackageNotFoundError:
        raise Unavailable(f"the {package} package is not installed") from None
    for f in files:
        if str(f).endswith(suffix):
            return pathlib.Path(f.locate()).resolve()
    raise Unavailable(f"the {package} package has no {suffix}")


def _cache_dir() -> pathlib.Path:
    return pathlib.Path(os.path.expanduser(
        os.environ.get("IFES_JAX_ONEDNN_CACHE", "~/.cache/ifes_jax/onednn")))


def build() -> pathlib.Path:
    """The compiled handler library, built into the cache unless it is there already."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise Unavailable(f"oneDNN's pip packages are for x86-64 Linux, not "
                          f"{sys.platform} {platform.machine()}")
    header = _package_file(HEADER_PACKAGE, "oneapi/dnnl/dnnl.hpp")
    library = _package_file(LIBRARY_PACKAGE, "libdnnl.so.3")
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise Unavailable(f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH")
    command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
               f"-I{jax.ffi.include_dir()}", f"-I{header.parents[2]}", str(SOURCE),
               f"-L{library.parent}", f"-l:{library.name}", f"-Wl,-rpath,{library.parent}"]
    key = hashlib.sha256("\0".join(
        [SOURCE.read_text(), *command, importlib.metadata.version("jaxlib"),
         importlib.metadata.version(LIBRARY_PACKAGE)]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"libifes_onednn_conv-{key}.so"
    if _intact(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # processes starting together build it once
        if not _intact(target):
            _compile(command, target)
    return target


def _compile(command: list[str], target: pathlib.Path) -> None:
    """Run the compiler into a temporary file, then move the library and its digest in place."""
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = pathlib.Path(tmp) / target.name
        run = subprocess.run(command + ["-o", str(out)], capture_output=True, text=True)
        if run.returncode != 0:
            lines = run.stderr.strip().splitlines() or ["(no output)"]
            first_error = next((line for line in lines if "error" in line), lines[-1])
            raise Unavailable(f"building {SOURCE.name} failed: {first_error}")
        digest = pathlib.Path(tmp) / "digest"
        digest.write_text(_sha256(out))
        os.replace(out, target)  # atomic: a reader never sees half a library
        os.replace(digest, _digest_path(target))


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest_path(library: pathlib.Path) -> pathlib.Path:
    return library.with_name(library.name + ".sha256")


def _intact(library: pathlib.Path) -> bool:
    """Whether a cached library exists and still has the digest recorded when it was built."""
    try:
        return _digest_path(library).read_text().strip() == _sha256(library)
    except OSError:
        return False


@functools.cache
def _load() -> str | None:
    """Builds, loads and registers the handlers once; the reason they are unusable, or None."""
    try:
        lib = ctypes.cdll.LoadLibrary(str(build()))
    except (Unavailable, OSError) as e:
        return str(e)
    for name in TARGETS:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return None


def unavailable() -> str | None:
    """Why oneDNN convolutions cannot run here, or None when they can."""
    return _load()


