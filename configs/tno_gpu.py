"""IFESNet at the paper's full width, trained on the 89 TNO training pairs on one GPU:
128x128 crops, batch 8, bfloat16 network (float32 parameters, optimizer and loss), Adam 5e-4
with warmup and cosine decay, 6000 steps. Validation as in configs/tno_cpu.py.

python scripts/train.py --config configs/tno_gpu.py --workdir runs/tno_gpu
"""
from configs import tno_cpu


def get_config():
    config = tno_cpu.get_config()
    config.model.width_multiplier = 1.0
    config.half_precision = True
    config.data.crop_size = 128
    config.train.batch_size = 8
    config.optim.learning_rate = 5e-4
    return config
