"""The fidelity study's base (issue: close the gap to the paper's gradient metrics):
configs/tno_cpu.py at a ranking budget, trained on 71 of its 89 TNO training pairs and
validated on the other 18 (configs/lists/), none of which is in INFV-20 or INFV-41, so
candidates are ranked without looking at a test image.

python scripts/ablations.py --study fidelity --config configs/fidelity.py --workdir runs/fidelity
"""
from configs import tno_cpu

RANKING_STEPS = 1200


def get_config():
    config = tno_cpu.get_config()
    config.data.train_list = "configs/lists/tno-fidelity-train.txt"
    config.data.val_train_list = "configs/lists/tno-fidelity-val.txt"
    config.data.val_split = "train"
    config.data.val_pairs = 18
    config.train.steps = RANKING_STEPS
    config.train.checkpoint_every = 300
    config.train.sample_every = RANKING_STEPS
    config.optim.warmup_steps = 50
    return config
