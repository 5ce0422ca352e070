"""A tiny config for tests that run scripts/train.py in subprocesses."""
from tests.test_train import tiny_config


def get_config():
    return tiny_config()
