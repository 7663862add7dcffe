"""What a run writes and prints: JSON files, metrics.jsonl lines, image grids and progress lines."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import flax
import jax
import numpy as np
import optax
from PIL import Image, ImageDraw, ImageFont


def write_json(path: str | Path, obj) -> None:
    """Writes `obj` as indented JSON, atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def platform() -> dict:
    """What computed the run, beside config.json (which holds only what the user chose): the backend,
    the devices, the library versions and the matmul precision in force (on Ampere+ GPUs XLA's default
    computes float32 products in TF32; `JAX_DEFAULT_MATMUL_PRECISION=highest` keeps full float32)."""
    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "matmul_precision": jax.config.jax_default_matmul_precision or "default",
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
    }


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


def enlarge(pixels: np.ndarray, min_size: int) -> tuple[np.ndarray, int]:
    """(pixels [N,H·s,W·s,C], s): nearest-neighbour enlargement by the smallest integer s with H·s ≥
    `min_size` (s = 1 for images already that large)."""
    scale = max(1, -(-min_size // pixels.shape[1]))
    return pixels.repeat(scale, axis=1).repeat(scale, axis=2), scale


def short_name(name: str, *, max_chars: int = 20) -> str:
    """A class name fit for a row label: its first comma-separated part (Tiny-ImageNet's WordNet names
    list synonyms: 'goldfish, Carassius auratus'), cut to `max_chars` with an ellipsis."""
    name = name.split(",")[0].strip()
    return name if len(name) <= max_chars else name[: max_chars - 1] + "…"


def picture_caption(
    *, num_classes: int, shown: int, ipc: int, image_hw: tuple[int, int], scale: int
) -> list[str]:
    """synset.png's lines under its title: what a row is and, when the rows were capped, how many show."""
    size = f"{image_hw[0]}×{image_hw[1]} px" + (f", enlarged ×{scale}" if scale > 1 else "")
    lines = [f"one row per class, {ipc} image{'s' if ipc > 1 else ''} each ({size})"]
    if shown < num_classes:
        lines.append(f"showing the first {shown} of {num_classes} classes (synset.npz holds all of them)")
    return lines


def synset_picture(
    images,
    *,
    class_names: tuple[str, ...],
    mean,
    std,
    title: str = "",
    max_rows: int = 20,
    min_cell: int = 64,
    padding: int = 2,
) -> np.ndarray:
    """synset.png's pixels, [height, width, 3] uint8: `title` and a caption, then one row per class,
    its name and its images (denormalised, enlarged to at least `min_cell` px), for at most `max_rows`
    classes (the first ones; the caption says so).

    images: [num_classes·ipc, H, W, C] normalised with `mean`/`std`, class-major (`SyntheticSet`).
    """
    images = np.asarray(images)
    num_classes = len(class_names)
    ipc = len(images) // num_classes
    shown = min(num_classes, max_rows)
    pixels, scale = enlarge(denormalise(images[: shown * ipc], mean, std), min_cell)
    if pixels.shape[-1] == 1:
        pixels = pixels.repeat(3, axis=-1)
    grid = (image_grid(pixels, shown, padding=padding) * 255).round().astype(np.uint8)
    names = [short_name(name) for name in class_names[:shown]]
    lines = [title] if title else []
    lines += picture_caption(
        num_classes=num_classes, shown=shown, ipc=ipc, image_hw=images.shape[1:3], scale=scale
    )
    font, margin, line_height = _font(13), 8, 18
    label_width = int(max(font.getlength(name) for name in names)) + 2 * margin
    header = margin + line_height * len(lines)
    text_width = int(max(font.getlength(line) for line in lines)) + 2 * margin
    canvas = Image.new("RGB", (max(label_width + grid.shape[1], text_width), header + grid.shape[0]), "white")
    canvas.paste(Image.fromarray(grid), (label_width, header))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((margin, margin + i * line_height), line, fill="black", font=font)
    cell = pixels.shape[1]
    for row, name in enumerate(names):
        middle = header + padding + row * (cell + padding) + cell // 2
        draw.text((label_width - margin, middle), name, fill="black", font=font, anchor="rm")
    return np.asarray(canvas)


def save_png(path: str | Path, pixels: np.ndarray) -> None:
    """Saves [H, W, 3] (or [H, W]) uint8 pixels as a PNG."""
    Image.fromarray(pixels).save(path)


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans, which matplotlib (a dependency) ships, so labels look the same on every machine."""
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")), size)


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


def shown_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics a progress line prints, 'loss' first: all but those that say nothing in this run.

    'images' is printed as img/s; 'loss_first'/'loss_last' only when they differ from 'loss' (with one
    match an iteration, gradient matching at outer_loop 1, i.e. IPC 1, all three are one number);
    'inner_ce' only when it is not 0 (0: no network was trained within the iteration, outer_loop 1
    again). metrics.jsonl keeps every metric.
    """
    hidden = {"images"}
    if "loss_first" in metrics and metrics["loss_first"] == metrics.get("loss_last") == metrics.get("loss"):
        hidden |= {"loss_first", "loss_last"}
    if metrics.get("inner_ce") == 0:
        hidden.add("inner_ce")
    ordered = sorted(metrics.items(), key=lambda item: item[0] != "loss")  # stable: the rest keep order
    return {name: value for name, value in ordered if name not in hidden}


class Progress:
    """Turns (step, metrics) into one progress line: iteration, metrics, it/s, images/s, ETA.

    The rate is measured from the first reported step on, so compilation does not distort it. A
    metric named 'images' (images pushed through networks per step) gives images/s; `shown_metrics`
    picks the metrics printed.
    """

    def __init__(self, *, total: int, unit: str = "iter"):
        self.total = total
        self.unit = unit
        self._origin: tuple[float, int] | None = None

    def line(self, step: int, metrics: dict) -> str:
        now = time.perf_counter()
        shown = " | ".join(f"{k} {v:.4g}" for k, v in shown_metrics(metrics).items())
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
