"""The folder layouts datasets are released in, recognised by folder name.

A pairs folder holds one infrared and one visible folder (a name of `IR_NAMES` and of
`VIS_NAMES`, any case) whose images match by file name, optionally with a train/test level
above or below them, which gives the splits:

    ROOT/ir/ + ROOT/vis/                       TNO, RoadScene (also cropinfrared/ + crop_LR_visible/),
                                               CDDFuse's tests (ir/ + vi/), M3FD (Ir/ + Vis/)
    ROOT/train/ir/ + ROOT/train/vi/, test/...  MSRS
    ROOT/infrared/train/ + ROOT/visible/train/, .../test/   LLVIP

Anything else, or two candidates for one role, is a one-line `DataError` that lists what was
found and the accepted names; explicit subfolders override the search.
"""
from __future__ import annotations

import dataclasses
import os

from ifes_jax.errors import DataError

IR_NAMES = ("ir", "infrared", "cropinfrared")
VIS_NAMES = ("vis", "vi", "visible", "crop_lr_visible", "vi_y")
SPLIT_NAMES = ("train", "test")
ACCEPTED = (f"accepted: infrared {'/'.join(IR_NAMES)}, visible {'/'.join(VIS_NAMES)} (any case), "
            f"optionally under or above {'/'.join(SPLIT_NAMES)}")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a folder's images are: {split: (infrared folder, visible folder)}, absolute paths;
    the one key of a layout without a train/test level is None."""
    root: str
    folders: dict

    @property
    def splits(self) -> tuple:
        return tuple(s for s in self.folders if s is not None)

    def describe(self) -> str:
        rel = lambda path: os.path.relpath(path, self.root)
        parts = [(f"{split}: " if split else "") + f"{rel(ir)}/ + {rel(vis)}/"
                 for split, (ir, vis) in self.folders.items()]
        return f"{self.root}: " + ", ".join(parts)

    def chosen(self, split: str | None):
        """(split, its folders, a line saying so): `split`, by default a release's test split."""
        split = split or ("test" if self.splits else None)
        said = self.describe() + (f"; using {split}" if self.splits else "")
        return split, self.folders_of(split), said

    def folders_of(self, split: str | None):
        """(infrared, visible) folder of `split` (None: the whole of a layout without splits)."""
        if not self.splits:
            if split is not None:
                raise DataError(f"{self.root}: no train/test folders, so no split {split!r}")
            return self.folders[None]
        if split not in self.folders:
            raise DataError(f"{self.root}: no split {split!r} (has {', '.join(self.splits)})")
        return self.folders[split]


def _subfolders(folder, accepted):
    return [d for d in sorted(os.listdir(folder))
            if d.lower() in accepted and os.path.isdir(os.path.join(folder, d))]


def _one(folder, accepted, kind: str):
    found = _subfolders(folder, accepted)
    if len(found) > 1:
        raise DataError(f"{folder}: two {kind} folders ({', '.join(found)}); {ACCEPTED}")
    return os.path.join(folder, found[0]) if found else None


def _pair_in(folder):
    """(ir, vis) subfolders of `folder`, None when it has neither; one without the other is an
    error."""
    ir, vis = _one(folder, IR_NAMES, "infrared"), _one(folder, VIS_NAMES, "visible")
    if (ir is None) != (vis is None):
        kind, there = ("visible", ir) if vis is None else ("infrared", vis)
        raise DataError(f"{folder}: {os.path.basename(there)}/ but no {kind} folder; {ACCEPTED}")
    return (ir, vis) if ir else None


def _splits_below(root, ir, vis):
    """{split: (ir/split, vis/split)} when the modality folders hold train/test folders."""
    ir_splits = {d.lower(): d for d in _subfolders(ir, SPLIT_NAMES)}
    vis_splits = {d.lower(): d for d in _subfolders(vis, SPLIT_NAMES)}
    if ir_splits.keys() != vis_splits.keys():
        raise DataError(f"{root}: {os.path.basename(ir)}/ has splits "
                        f"{sorted(ir_splits) or 'none'} but {os.path.basename(vis)}/ has "
                        f"{sorted(vis_splits) or 'none'}")
    return {s: (os.path.join(ir, ir_splits[s]), os.path.join(vis, vis_splits[s]))
            for s in SPLIT_NAMES if s in ir_splits}


def _explicit(root, ir_subdir, vis_subdir):
    ir = os.path.join(root, ir_subdir) if ir_subdir else _one(root, IR_NAMES, "infrared")
    vis = os.path.join(root, vis_subdir) if vis_subdir else _one(root, VIS_NAMES, "visible")
    for folder in (ir, vis):
        if folder is None:
            raise _nothing_found(root)
        if not os.path.isdir(folder):
            raise DataError(f"{folder}: no such folder")
    return Layout(root, {None: (ir, vis)})


def find_layout(root, ir_subdir: str | None = None, vis_subdir: str | None = None) -> Layout:
    """The layout of the pairs folder `root`; `ir_subdir` / `vis_subdir` (relative to `root`)
    override the search."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such folder")
    if ir_subdir or vis_subdir:
        return _explicit(root, ir_subdir, vis_subdir)
    flat = _pair_in(root)
    split_dirs = _subfolders(root, SPLIT_NAMES)
    if flat and split_dirs:
        raise DataError(f"{root}: both {', '.join(os.path.basename(f) + '/' for f in flat)} and "
                        f"{', '.join(d + '/' for d in split_dirs)}; give the subfolders explicitly")
    if flat:
        return Layout(root, _splits_below(root, *flat) or {None: flat})
    above = {d.lower(): _pair_in(os.path.join(root, d)) for d in split_dirs}
    if above and all(above.values()):
        return Layout(root, {s: above[s] for s in SPLIT_NAMES if s in above})
    empty = [os.path.join(root, d) for d in split_dirs if not above[d.lower()]]
    raise _nothing_found(empty[0] if empty else root)


def _nothing_found(folder) -> DataError:
    seen = [d + "/" for d in sorted(os.listdir(folder)) if os.path.isdir(os.path.join(folder, d))]
    return DataError(f"{folder}: no infrared/visible folders (found {', '.join(seen) or 'none'}); "
                     f"{ACCEPTED}")
