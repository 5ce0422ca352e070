"""The tiny config of the tests: `tiny_config(**train_overrides)` in the tests, and
`get_config()` for those that run scripts/train.py in subprocesses (a config file)."""
from configs import quickstart


def tiny_config(**train_overrides):
    config = quickstart.get_config()
    config.model.width_multiplier = 0.125
    config.data.synthetic_pairs = 4
    config.data.synthetic_size = 64
    config.data.crop_size = 32
    config.train.update(dict(batch_size=2, steps=6, log_every=2, checkpoint_every=3,
                             sample_every=1000, num_samples=1, sample_size=32))
    config.train.update(train_overrides)
    return config


def get_config():
    return tiny_config()
