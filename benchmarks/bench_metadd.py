"""Seconds per DC iteration and peak temporary memory with the MetaDD regularizer on vs off.

  python -m benchmarks.bench_metadd [--archs ConvNet,AlexNet,VGG11,ResNet18] [--images-per-step 0,5]
                                    [--batch-real 64] [--repeats 3] [--quick]

Fashion-MNIST shapes (28x28x1, 10 classes), random arrays standing in for the real set, IPC 1 (the
reference iteration: outer 1, inner 1), the reference ConvNet as the distillation network. MetaDD's
auxiliary networks are randomly initialised, not trained: speed and memory do not depend on their
weights. Each variant is compiled first (`lower().compile()`, compile_s); `temp_mb` is
`compiled.memory_analysis().temp_size_in_bytes` (XLA's scratch memory of the step, its peak apart from
the arguments) and `memory_ratio` that over the base step's (DESIGN §4.6 asks for ≤ 1.3). The variants then
run in turn, --repeats times; 'seconds' is the best run. --quick: two auxiliary networks
(ConvNet, AlexNet), batch_real 8, one repeat, results under the `_quick` name.
Results: benchmarks/results/bench_metadd[_quick].{json,md}.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import ml_collections

from benchmarks.common import stand_in_real, write_results
from jaxdd import metadd
from jaxdd.config import base_config, resolve_backend
from jaxdd.methods import gradient_matching as gm
from jaxdd.methods.base import Hooks
from jaxdd.models import get_model

SHAPE = (28, 28, 1)
NUM_CLASSES = 10


def _config(batch_real: int) -> ml_collections.ConfigDict:
    config = base_config()
    config.update({"method": "dc", "dataset": "fashion_mnist", "model": "ConvNet", "ipc": 1, "init": "noise"})
    config.gm.batch_real = batch_real
    return resolve_backend(config)  # the backend's choices, as a run's


def _auxiliaries(
    archs, images_per_step: int, *, image_shape=SHAPE, num_classes: int = NUM_CLASSES
) -> metadd.Auxiliaries:
    """Randomly initialised auxiliary networks of `archs` (names or ConvNet spec dicts) for images
    `image_shape` (H, W, C), 28x28x1 unless told."""
    models = [get_model(a, num_classes=num_classes, image_shape=image_shape) for a in archs]
    x = jnp.zeros((1, *image_shape))
    variables = [dict(m.init(jax.random.PRNGKey(i), x, train=False)) for i, m in enumerate(models)]
    options = metadd.Options(images_per_step=images_per_step)
    return metadd.make_auxiliaries(models, variables, image_shape, options)


class Variant:
    """One compiled DC outer step (MetaDD on or off) and its timings."""

    def __init__(self, config, real, aux, label: str):
        self.label, self.real, self.aux = label, real, aux
        self.state = gm.init(config, real, jax.random.PRNGKey(0))
        step = gm.make_step(config, real)
        start = time.perf_counter()
        self.compiled = gm.outer_step.lower(*step.args, self.state, real, hooks=Hooks(metadd=aux)).compile()
        self.compile_s = time.perf_counter() - start
        memory = self.compiled.memory_analysis()
        self.temp_mb = getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory is not None else 0.0
        self.times: list[float] = []

    def run(self) -> None:
        start = time.perf_counter()
        state, metrics = self.compiled(self.state, self.real, hooks=Hooks(metadd=self.aux))
        jax.block_until_ready((state, metrics))
        self.times.append(time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="ConvNet,AlexNet,VGG11,ResNet18")
    parser.add_argument("--images-per-step", default="0", help="comma-separated; 0 = all synthetic images")
    parser.add_argument("--batch-real", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=256, help="random real images per class")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", default="", help="results folder; '' = benchmarks/results")
    args = parser.parse_args(argv)
    if args.quick:
        args.archs, args.images_per_step, args.batch_real, args.per_class, args.repeats = (
            "ConvNet,AlexNet", "0,5", 8, 16, 1,
        )  # fmt: skip
    archs = tuple(a.strip() for a in args.archs.split(",") if a.strip())
    real = stand_in_real(NUM_CLASSES, args.per_class, SHAPE)
    config = _config(args.batch_real)
    variants = [Variant(config, real, None, "off")]
    for count in (int(c) for c in args.images_per_step.split(",")):
        variants.append(Variant(config, real, _auxiliaries(archs, count), f"on (images_per_step={count})"))
    for _ in range(args.repeats):
        for variant in variants:
            variant.run()
    base = variants[0]
    rows = []
    for v in variants:
        seconds = min(v.times)
        rows.append(
            {
                "metadd": v.label,
                "aux_archs": "" if v.aux is None else ",".join(archs),
                "seconds": seconds,
                "slowdown": seconds / min(base.times),
                "temp_mb": v.temp_mb,
                "memory_ratio": v.temp_mb / base.temp_mb if base.temp_mb else float("nan"),
                "compile_s": v.compile_s,
            }
        )
        print(rows[-1])
    name = "bench_metadd_quick" if args.quick else "bench_metadd"
    notes = (
        f"DC, IPC 1, Fashion-MNIST shapes, batch_real {args.batch_real}, ConvNet; best of {args.repeats}. "
        "Auxiliary networks randomly initialised (speed and memory do not depend on their weights)."
    )
    columns = ["metadd", "aux_archs", "seconds", "slowdown", "temp_mb", "memory_ratio", "compile_s"]
    print(write_results(name, rows, columns=columns, notes=notes, out_dir=args.out_dir or None))


if __name__ == "__main__":
    main()
