"""Infrared/visible pairs of a folder (`<dir>/ir/<name>.<ext>` and `<dir>/vis/<name>.<ext>`, or
any release layout `layouts` recognises): finding, validating and splitting them; every
problem is a one-line `DataError` naming the file(s)."""
from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
from PIL import Image

from ifes_jax.data import layouts
from ifes_jax.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, read_image
from ifes_jax.errors import ConfigError, DataError

MISMATCH_POLICIES = ("error", "skip", "crop")


@dataclasses.dataclass(frozen=True)
class Pair:
    name: str
    ir_path: str
    vis_path: str


def _images_by_name(folder):
    by_name = {}
    for entry in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(entry)
        if entry.startswith(".") or ext.lower() not in IMAGE_EXTENSIONS:
            continue
        if stem in by_name:
            raise DataError(f"{folder}: two images are named {stem!r} "
                            f"({os.path.basename(by_name[stem])}, {entry})")
        by_name[stem] = os.path.join(folder, entry)
    return by_name


def _names(names, limit=5):
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def find_pairs(root, ir_dir: str | None = None, vis_dir: str | None = None,
               split: str | None = None) -> list[Pair]:
    """The pairs of `root` (of its `split`, when its layout has a train/test level), sorted by
    name, matched by file name without extension. The folders are found by name
    (`layouts.find_layout`) unless given (relative to `root`)."""
    layout = layouts.find_layout(root, ir_dir, vis_dir)
    return pair_folders(*layout.folders_of(split))


def pair_folders(ir_folder, vis_folder) -> list[Pair]:
    """Pairs of an infrared and a visible folder, matched by file name without extension."""
    folders = {"ir": os.fspath(ir_folder), "vis": os.fspath(vis_folder)}
    for folder in folders.values():
        if not os.path.isdir(folder):
            raise DataError(f"{folder}: no such folder")
    ir, vis = _images_by_name(folders["ir"]), _images_by_name(folders["vis"])
    for key, found in (("ir", ir), ("vis", vis)):
        if not found:
            raise DataError(f"{folders[key]}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    for here, there, a, b in ((ir, vis, folders["ir"], folders["vis"]),
                              (vis, ir, folders["vis"], folders["ir"])):
        alone = set(here) - set(there)
        if alone:
            name = lambda f: os.path.basename(os.path.normpath(f)) + "/"
            raise DataError(f"{len(alone)} image(s) in {name(a)} without a twin in {name(b)}: "
                            f"{_names(alone)} ({a}, {b})")
    return [Pair(name, ir[name], vis[name]) for name in sorted(ir)]


def image_size(path):
    """(width, height) from the file header, as a viewer shows it (EXIF orientation applied)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            transposed = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # Orientation: rotated 90°
            return (height, width) if transposed else (width, height)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, Image.DecompressionBombError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def check_sizes(pairs, mismatch: str = "error"):
    """Apply the size-mismatch policy: returns (kept pairs, skipped pairs).

    `error` raises one DataError naming every mismatched pair; `skip` drops them; `crop` keeps
    them (they are cropped to the common top-left region when read).
    """
    if mismatch not in MISMATCH_POLICIES:
        raise ConfigError(f"mismatch policy must be one of {MISMATCH_POLICIES}, got {mismatch!r}")
    bad = []
    for p in pairs:
        ir_size, vis_size = image_size(p.ir_path), image_size(p.vis_path)
        if ir_size != vis_size:
            bad.append((p, f"{p.ir_path} is {ir_size[0]}x{ir_size[1]}, {p.vis_path} is "
                           f"{vis_size[0]}x{vis_size[1]}"))
    if bad and mismatch == "error":
        raise DataError(f"{len(bad)} pair(s) whose infrared and visible sizes differ: "
                        + "; ".join(msg for _, msg in bad)
                        + " (set data.mismatch to 'skip' or 'crop')")
    if mismatch == "skip":
        skipped = {p.name for p, _ in bad}
        return [p for p in pairs if p.name not in skipped], [p for p, _ in bad]
    return list(pairs), []


def read_pair(pair: Pair, crop_to_common: bool = False, max_pixels: int = MAX_PIXELS):
    """Both images of a pair, as `read_image` returns them: ((ir, bits, mode), (vis, bits, mode)).
    Sizes must agree unless crop_to_common, which keeps the common top-left region."""
    ir, vis = read_image(pair.ir_path, max_pixels), read_image(pair.vis_path, max_pixels)
    (h1, w1), (h2, w2) = ir[0].shape[:2], vis[0].shape[:2]
    if (h1, w1) != (h2, w2):
        if not crop_to_common:
            raise DataError(f"{pair.ir_path} is {w1}x{h1}, {pair.vis_path} is {w2}x{h2}: "
                            "sizes differ")
        h, w = min(h1, h2), min(w1, w2)
        ir, vis = (ir[0][:h, :w],) + ir[1:], (vis[0][:h, :w],) + vis[1:]
    return ir, vis


def read_name_list(path) -> list[str]:
    """Names from a list file: one per line; blank lines and '#' comments ignored; a file
    extension, if given, is dropped."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such list file")
    with open(path) as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    names = [os.path.splitext(line)[0] if os.path.splitext(line)[1].lower() in IMAGE_EXTENSIONS
             else line for line in lines if line]
    if not names:
        raise DataError(f"{path}: the list file names no pairs")
    return names


def split_pairs(pairs, *, train_list: str | None = None, train_fraction: float | None = None,
                seed: int = 0, skipped=()):
    """{'train': [...], 'test': [...]}: the names of `train_list`, a seeded random
    `train_fraction`, or everything in 'train'; 'test' is the rest (absent when empty).
    Listed names among `skipped` (pairs dropped by a policy) are left out, not an error."""
    if train_list and train_fraction is not None:
        raise ConfigError("give a train list or a train fraction, not both")
    if train_list:
        wanted = read_name_list(train_list)
        names = {p.name for p in pairs} | {p.name for p in skipped}
        missing = [n for n in wanted if n not in names]
        if missing:
            raise DataError(f"{train_list}: {len(missing)} listed name(s) are not pairs of the "
                            f"folder: {_names(missing)}")
        chosen = set(wanted)
    elif train_fraction is not None:
        if not 0 < train_fraction <= 1:
            raise ConfigError(f"train_fraction must be in (0, 1], got {train_fraction}")
        order = np.random.default_rng(seed).permutation(len(pairs))
        chosen = {pairs[i].name for i in order[: max(1, round(train_fraction * len(pairs)))]}
    else:
        chosen = {p.name for p in pairs}
    splits = {"train": [p for p in pairs if p.name in chosen],
              "test": [p for p in pairs if p.name not in chosen]}
    return {k: v for k, v in splits.items() if v}


def fingerprint(pairs, *extra) -> str:
    """A short hash of the pairs' paths, sizes and modification times, and `extra`: it changes
    whenever a file of the folder (or an option) changes."""
    h = hashlib.sha256()
    for p in pairs:
        for path in (p.ir_path, p.vis_path):
            st = os.stat(path)
            h.update(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(repr(extra).encode())
    return h.hexdigest()[:16]
