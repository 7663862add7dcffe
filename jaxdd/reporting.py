"""What a run writes and prints: JSON files, metrics.jsonl lines, image grids and progress lines."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_json(path: str | Path, obj) -> None:
    """Writes `obj` as indented JSON, atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def append_metrics(path: str | Path, record: dict) -> None:
    """Appends one JSON line (a flat dict of scalars plus a 'time' stamp) to metrics.jsonl."""
    with open(path, "a") as f:
        f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


def denormalise(images: np.ndarray, mean, std) -> np.ndarray:
    """Normalised images [N,H,W,C] back to pixel values clipped to [0, 1]."""
    pixels = np.asarray(images, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(pixels, 0.0, 1.0)


def image_grid(images: np.ndarray, num_rows: int, *, padding: int = 1) -> np.ndarray:
    """Tiles [N,H,W,C] pixels in [0,1] into a [rows·(H+p)+p, cols·(W+p)+p, C] grid, row-major.

    With class-major synthetic sets and `num_rows = num_classes`, each row holds one class.
    """
    num, height, width, channels = images.shape
    cols = -(-num // num_rows)
    grid = np.ones((num_rows * (height + padding) + padding, cols * (width + padding) + padding, channels))
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        top, left = padding + r * (height + padding), padding + c * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


def save_image_grid(path: str | Path, images, *, num_rows: int, mean, std, min_cell: int = 32) -> None:
    """Saves a denormalised grid of normalised images [N,H,W,C] as PNG, one row per class.

    Small images are enlarged (nearest neighbour) so that a cell is at least `min_cell` pixels high.
    """
    pixels = denormalise(images, mean, std)
    scale = max(1, -(-min_cell // pixels.shape[1]))
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    grid = (image_grid(pixels, num_rows) * 255).round().astype(np.uint8)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)


def format_seconds(seconds: float) -> str:
    """'1h02m', '3m05s' or '12.3s'."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.1f}s"
