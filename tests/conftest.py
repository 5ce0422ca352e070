"""Test-session settings: one persistent XLA compilation cache for the whole run.

Many tests train, fuse or evaluate the same tiny models, in this process and in the
subprocesses they start (which inherit the environment); JAX then compiles each program once
per run instead of once per test. The cache lives in the pytest cache folder (or
$IFES_JAX_TEST_XLA_CACHE) and is started empty by each `pytest` run of the suite's first
worker, so no test depends on what an earlier run left."""
import os
import pathlib
import shutil

CACHE = pathlib.Path(os.environ.get(
    "IFES_JAX_TEST_XLA_CACHE", pathlib.Path(__file__).parents[1] / ".pytest_cache" / "xla"))

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# the fuse and evaluate CLIs' own cache (digest-checked: it drops entries it did not record)
os.environ.setdefault("IFES_JAX_CACHE", str(CACHE / "cli"))


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist)
        shutil.rmtree(CACHE, ignore_errors=True)
    (CACHE / "cli").mkdir(parents=True, exist_ok=True)


# The modules that run longest (end-to-end runs in subprocesses, compiles of many distinct
# programs), longest first. pytest.ini gives `--dist loadscope`: a module runs on one worker, so
# its module fixtures are built once, and starting the longest first lets both workers finish
# together.
LONGEST_FIRST = ("test_parallel", "test_benchmark", "test_model", "test_train", "test_toolbox_profiles",
                 "test_fuse", "test_metric_gradients", "test_checkpoint", "test_metrics")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))
