"""JAX's persistent compilation cache for the command-line tools: XLA compiles once per image
shape, and a second run of a CLI reads the compiled programs from disk instead.

JAX checks no cached program's bytes, so the tools do: when a tool exits, each entry of the
cache gets the SHA-256 of its bytes beside it (`NAME.sha256`), and when a tool starts, an entry
whose bytes no longer match, or that has no recorded digest, is deleted — JAX then compiles
that program again instead of loading it."""
import atexit
import hashlib
import os

import jax

DEFAULT_DIR = "~/.cache/ifes_jax/xla"
DIGEST = ".sha256"


def enable(path: str | None = None) -> str:
    """Cache compiled programs in `path` (default $IFES_JAX_CACHE or ~/.cache/ifes_jax/xla),
    after dropping entries that fail their digest; digests of new entries are recorded at exit."""
    path = os.path.expanduser(path or os.environ.get("IFES_JAX_CACHE", DEFAULT_DIR))
    os.makedirs(path, exist_ok=True)
    drop_unverified(path)
    atexit.register(record_digests, path)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _entries(path):
    return [os.path.join(path, name) for name in os.listdir(path)
            if name.endswith("-cache") and os.path.isfile(os.path.join(path, name))]


def _sha256(file):
    with open(file, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def drop_unverified(path) -> list[str]:
    """Delete the cache entries whose recorded digest is missing or differs; returns them."""
    dropped = []
    for entry in _entries(path):
        try:
            with open(entry + DIGEST) as f:
                if f.read().strip() == _sha256(entry):
                    continue
        except OSError:
            pass
        for file in (entry, entry + DIGEST):
            if os.path.exists(file):
                os.remove(file)
        dropped.append(entry)
    return dropped


def record_digests(path) -> None:
    """Record the digest of every entry that has none yet (written whole, then renamed)."""
    for entry in _entries(path):
        if os.path.exists(entry + DIGEST):
            continue
        try:
            tmp = f"{entry}{DIGEST}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(_sha256(entry))
            os.replace(tmp, entry + DIGEST)
        except OSError:
            pass  # an entry removed meanwhile (JAX's own eviction) needs no digest
