"""Fuse infrared/visible pairs with a trained IFESNet.

One pair:      python scripts/fuse.py --checkpoint RUN --ir A.png --vis B.png --out F.png
Two folders:   python scripts/fuse.py --checkpoint RUN --ir-dir IR/ --vis-dir VIS/ --out-dir OUT/
(pairs matched by file name; outputs are PNGs named after the pair)
"""
from ifes_jax.cli.fuse import main

if __name__ == "__main__":
    main()
