"""Score fusion methods on a folder of pairs and write a paper-style table:

python scripts/evaluate.py --data DIR --methods average,max,laplacian,target,ckpt:PATH,dir:PATH
    --profile paper|default --out DIR [--pairs 001..020] [--quantize] [--skip-bad]
"""
from ifes_jax.cli.evaluate import main

if __name__ == "__main__":
    main()
