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


def read_metrics(path: str | Path) -> tuple[list[dict], int]:
    """(records, unreadable line count) of metrics.jsonl; blank lines are skipped, a partial line (a
    process killed mid-write) or any other non-JSON-object line is counted, not fatal."""
    path = Path(path)
    if not path.is_file():
        return [], 0
    records, unreadable = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            unreadable += 1
    return records, unreadable


def truncate_metrics(path: str | Path, *, after_step: int) -> dict:
    """Drops the metrics.jsonl lines of steps after `after_step` (written before an interruption and
    about to be recomputed by the resumed run), so each step appears once, and any unreadable line.

    Returns {'dropped_steps': n, 'unreadable': m, 'missing': [steps ≤ after_step with no line]}.
    """
    path = Path(path)
    records, unreadable = read_metrics(path)
    kept = [r for r in records if not _is_step_after(r, after_step)]
    if path.is_file():
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    present = {r["step"] for r in kept if "event" not in r and isinstance(r.get("step"), int)}
    return {
        "dropped_steps": len(records) - len(kept),
        "unreadable": unreadable,
        "missing": [step for step in range(1, after_step + 1) if step not in present],
    }


def _is_step_after(record: dict, step: int) -> bool:
    value = record.get("step", 0)
    return isinstance(value, int | float) and value > step


class Progress:
    """Turns (step, metrics) into one progress line: iteration, metrics, it/s, images/s, ETA.

    The rate is measured from the first reported step on, so compilation does not distort it. A
    metric named 'images' (images pushed through networks per step) gives images/s.
    """

    def __init__(self, *, total: int, unit: str = "iter"):
        self.total = total
        self.unit = unit
        self._origin: tuple[float, int] | None = None

    def line(self, step: int, metrics: dict) -> str:
        now = time.perf_counter()
        shown = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "images")
        text = f"{self.unit} {step}/{self.total} | {shown}"
        if self._origin is None:
            self._origin = (now, step)
            return text + " | (first steps include compilation)"
        seconds, steps = now - self._origin[0], step - self._origin[1]
        if steps <= 0 or seconds <= 0:
            return text
        rate = steps / seconds
        text += f" | {rate:.3g} it/s"
        if "images" in metrics:
            text += f" | {rate * metrics['images']:.3g} img/s"
        return text + f" | ETA {format_seconds((self.total - step) / rate)}"


def save_loss_curve(metrics_path: str | Path, out_path: str | Path, *, key: str = "loss") -> bool:
    """Plots `key` against step from metrics.jsonl to a PNG; returns False when there is nothing to plot."""
    records, _ = read_metrics(metrics_path)
    points = [(r["step"], r[key]) for r in records if "step" in r and key in r]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*points, strict=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return True
