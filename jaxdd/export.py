"""synset_nchw.npz: a distilled set laid out for PyTorch and other channels-first frameworks.

A run writes it beside synset.npz (jaxdd's own NHWC file, the one `--mode=evaluate` reads). It holds
`images` [N, C, H, W] float32 in the normalised space the set was distilled in ((pixel in [0, 1] -
mean) / std), `labels` [N] int64 (what `torch.nn.functional.cross_entropy` takes), `mean` and `std`
[C] float32, `class_names` [num_classes] str and `meta` (a JSON string: dataset, ipc, method, seed).
Every member is a plain array: `np.load(path)` reads it without pickle. docs/export.md shows how to
load it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

NCHW_FILE = "synset_nchw.npz"


def to_nchw(images) -> np.ndarray:
    """[N, H, W, C] → [N, C, H, W] float32, contiguous (so `torch.from_numpy` needs no copy)."""
    return np.ascontiguousarray(np.transpose(np.asarray(images, np.float32), (0, 3, 1, 2)))


def save_nchw(
    path: str | Path, images, labels, *, mean, std, class_names: tuple[str, ...], meta: dict | None = None
) -> None:
    """Writes the channels-first export of a synthetic set: `images` [N, H, W, C] normalised with
    `mean`/`std` (C entries each), `labels` [N] integer class indices into `class_names`."""
    np.savez(
        path,
        images=to_nchw(images),
        labels=np.asarray(labels, np.int64),
        mean=np.asarray(mean, np.float32),
        std=np.asarray(std, np.float32),
        class_names=np.asarray(class_names, dtype=str),
        meta=np.asarray(json.dumps(meta or {})),
    )
