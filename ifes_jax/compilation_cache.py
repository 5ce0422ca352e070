"""JAX's persistent compilation cache for the command-line tools: XLA compiles once per image
shape, and a second run of a CLI reads the compiled programs from disk instead."""
import os

import jax

DEFAULT_DIR = "~/.cache/ifes_jax/xla"


def enable(path: str | None = None) -> str:
    """Cache compiled programs in `path` (default $IFES_JAX_CACHE or ~/.cache/ifes_jax/xla)."""
    path = os.path.expanduser(path or os.environ.get("IFES_JAX_CACHE", DEFAULT_DIR))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
