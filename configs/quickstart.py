"""A small IFESNet that trains in a few minutes on 2 CPU cores: a quarter of the width,
64x64 crops, batch 4. Everything else is the paper's."""
from configs import default


def get_config():
    config = default.get_config()
    config.model.width_multiplier = 0.25
    config.data.crop_size = 64
    config.train.batch_size = 4
    config.train.steps = 600
    config.train.log_every = 20
    config.train.checkpoint_every = 200
    config.train.sample_every = 300
    config.optim.learning_rate = 1e-3
    return config
