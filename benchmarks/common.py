"""Shared by the benchmark scripts: the machine's description and the JSON + markdown result files."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from jaxdd.data.real import RealData, from_arrays
from jaxdd.data.registry import dataset_info

RESULTS_DIR = Path(__file__).parent / "results"


def add_real_set_arguments(parser) -> None:
    """--shape, --classes, --per-class, --batch-real: the Fashion-MNIST-shaped stand-in real set (random
    arrays) and the real images per class per matching step, shared by the gradient-matching benchmarks."""
    parser.add_argument("--shape", default="28,28,1")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--batch-real", type=int, default=256)


def use_quick_real_set(args, *, classes: int = 3) -> None:
    """The --quick (CI-sized) values of `add_real_set_arguments`' options: 8x8 images, 16 per class."""
    args.shape, args.classes, args.per_class, args.batch_real = "8,8,1", classes, 16, 8


def add_output_arguments(parser, *, name: str, quick_help: str) -> None:
    """--name (the results' file name), --quick (a CI-sized run, `quick_help` says what it shrinks) and
    --out-dir (default benchmarks/results)."""
    parser.add_argument("--name", default=name)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out-dir", default=None)


def stand_in_real(num_classes: int, per_class: int, shape, *, dataset: str = "fashion_mnist") -> RealData:
    """A real set named `dataset` (its registry mean and std; Fashion-MNIST unless told) of uniform random
    images [num_classes·per_class, *shape] (speed and memory do not depend on the pixels), class-major,
    its first 10 images as the test set."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(num_classes), per_class)
    images = rng.uniform(size=(len(labels), *shape)).astype(np.float32)
    info = dataset_info(dataset)
    return from_arrays(
        name=dataset,
        train_images=images,
        train_labels=labels,
        test_images=images[:10],
        test_labels=labels[:10],
        mean=info.mean,
        std=info.std,
        class_names=tuple(str(c) for c in range(num_classes)),
    )


def real_set_from_args(args) -> RealData:
    """`stand_in_real` of the `add_real_set_arguments` options (--shape as 'H,W,C')."""
    return stand_in_real(args.classes, args.per_class, tuple(int(s) for s in args.shape.split(",")))


def reference_iteration_s(outer: int, one: float, two: float) -> float:
    """Seconds of gradient matching's reference iteration at an IPC whose outer loop is `outer` (that
    many matches and outer − 1 inner trainings), from the times of outer 1 (`one`: one match) and outer
    2 (`two`: two matches and one inner training): outer·one + (outer − 1)·(two − 2·one)."""
    return outer * one + (outer - 1) * (two - 2 * one)


def machine() -> dict:
    """What the figures were measured on: CPU model and count, accelerator, library versions (torch:
    None when the optional `bench` extra is not installed)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import flax
    import optax

    device = jax.devices()[0]
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "torch": _version("torch"),
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_line(info: dict) -> str:
    return (
        f"{info['device_count']}× {info['device']} ({info['backend']}); host {info['cpu']}, "
        f"{info['cpu_count']} cores; jax {info['jax']}, flax {info['flax']}"
    )


def write_results(
    name: str,
    rows: list[dict],
    *,
    columns: list[str],
    notes: str = "",
    out_dir=None,
    info: dict | None = None,
) -> Path:
    """Writes `<name>.json` (machine, rows) and `<name>.md` (a table of `columns`) under results/;
    `info`: the machine to record, this process's `machine()` unless given."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = info or machine()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (out_dir / f"{name}.json").write_text(
        json.dumps({"benchmark": name, "date": stamp, "machine": info, "rows": rows}, indent=2) + "\n"
    )
    lines = [f"# {name}", "", f"Measured {stamp} on {machine_line(info)}.", ""]
    if notes:
        lines += [notes, ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    return out_dir / f"{name}.json"


def _cell(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
