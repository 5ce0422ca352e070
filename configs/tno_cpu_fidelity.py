"""The fidelity study's winner (issue 20, docs/results.md): configs/tno_cpu.py with the L_M weight
at 0.1 instead of eq. 6's 1 and linear weight maps (no sigmoid), at tno_cpu's full budget.
Trained on the 71 TNO pairs of configs/fidelity.py and validated on its 18 held-out pairs, so
neither training nor the choice of checkpoint sees an INFV-20/41 image.

python scripts/train.py --config configs/tno_cpu_fidelity.py --workdir runs/tno_cpu_fidelity
"""
from configs import fidelity, tno_cpu


def get_config():
    config = fidelity.get_config()
    full = tno_cpu.get_config().train
    for field in ("steps", "checkpoint_every", "sample_every"):
        config.train[field] = full[field]
    config.optim.warmup_steps = tno_cpu.get_config().optim.warmup_steps
    config.loss.weight_map = 0.1
    config.model.weight_activation = "linear"
    return config
