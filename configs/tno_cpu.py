"""IFESNet trained on the 89 TNO training pairs on a 2-core CPU (issue: reproduce the paper):
a quarter of the paper's width, 96x96 crops, batch 4, Adam 1e-3 with warmup and cosine decay.
Validation on the 40 TNO pairs that overlap the test sets, keeping the best checkpoint.

python scripts/train.py --config configs/tno_cpu.py --workdir runs/tno_cpu
(paths are relative to the project root; the data lives in ../shared/data)
"""
from configs import default


def get_config():
    config = default.get_config()
    config.model.width_multiplier = 0.25
    config.data.dir = "../shared/data/tno-full"
    config.data.train_list = "../shared/data/tno-full/train-pairs.txt"
    config.data.mismatch = "crop"
    config.data.crop_size = 96
    config.data.val_dir = "../shared/data/tno-full"
    config.data.val_train_list = "../shared/data/tno-full/train-pairs.txt"
    config.data.val_split = "test"
    config.data.val_pairs = 16
    config.data.val_size = 192
    config.train.batch_size = 4
    config.train.steps = 6000
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    config.train.sample_every = 1000
    config.train.keep_best = 1
    config.optim.learning_rate = 1e-3
    config.optim.schedule = "warmup_cosine"
    config.optim.warmup_steps = 200
    return config
