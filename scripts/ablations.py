"""Train the paper's ablation variants at one budget, then export each one's best weights.

python scripts/ablations.py --config configs/tno_cpu.py --workdir runs/ablations
    [--variants ifesnet,wo_ifem,s1,s2,s4,hc,mae] [--jobs N] [--time-limit SECONDS]
    [--set data.dir=PATH ...]

Each variant is `scripts/train.py` on the base config with a few overrides (below), in
WORKDIR/VARIANT (its log in WORKDIR/VARIANT.log); running the script again resumes unfinished
variants. `--jobs` trains several at once (on a GPU they share the card). At `--time-limit` the
runs still going are stopped with SIGTERM, which checkpoints them; a later call resumes them.
The best checkpoint of each variant (by validation loss; of an unfinished one too, with a
non-zero exit) is exported to WORKDIR/exports/VARIANT, which `scripts/evaluate.py --methods
ckpt:WORKDIR/exports/VARIANT` and `scripts/fuse.py --checkpoint` read.
"""
from ifes_jax.cli.ablations import main

if __name__ == "__main__":
    main()
