"""Seconds to evaluate N ConvNets on an IPC-10 set: trained together (vmap) versus one after another.

  python -m benchmarks.bench_eval [--epochs 20] [--nets 10] [--shape 28,28,1] [--quick]

Both variants run in this one process, alternating, on the same random data of the given shape (10
classes, IPC 10, a 10,000-image test set as Fashion-MNIST's); the figure per variant is the best of
`--repeats` timed runs after one compiling run. Results: benchmarks/results/bench_eval.{json,md}.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import write_results
from jaxdd.evaluation import EvalProtocol, evaluate_model
from jaxdd.models import get_model


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--shape", default="28,28,1")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--test-size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--arch", default="ConvNet")
    parser.add_argument("--quick", action="store_true", help="CI-sized: 2 nets, 2 epochs, 8x8 images")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.nets, args.epochs, args.shape, args.test_size, args.repeats = 2, 2, "8,8,1", 200, 1

    shape = tuple(int(s) for s in args.shape.split(","))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(10 * args.ipc, *shape)), jnp.float32)
    labels = jnp.repeat(jnp.arange(10, dtype=jnp.int32), args.ipc)
    test_images = jnp.asarray(rng.normal(size=(args.test_size, *shape)), jnp.float32)
    test_labels = jnp.asarray(rng.integers(0, 10, args.test_size), jnp.int32)
    model = get_model(args.arch, num_classes=10, image_shape=shape)
    protocol = EvalProtocol(epochs=args.epochs)
    keys = jax.random.split(jax.random.PRNGKey(0), args.nets)
    data = (images, labels, test_images, test_labels)

    def variant(parallel):
        return lambda: evaluate_model(model, protocol, keys, *data, parallel=parallel)

    first = {p: _time(variant(p)) for p in ("vmap", "loop")}  # includes compilation
    timed = {"vmap": [], "loop": []}
    for _ in range(args.repeats):
        for parallel in ("vmap", "loop"):
            timed[parallel].append(_time(variant(parallel)))
    best = {p: min(ts) for p, ts in timed.items()}
    rows = [
        {
            "arch": args.arch,
            "shape": "x".join(map(str, shape)),
            "ipc": args.ipc,
            "nets": args.nets,
            "epochs": args.epochs,
            "variant": p,
            "first_run_s": round(first[p], 2),
            "seconds": round(best[p], 2),
            "s_per_net_epoch": round(best[p] / (args.nets * args.epochs), 4),
            "loop_over_this": round(best["loop"] / best[p], 2),
        }
        for p in ("vmap", "loop")
    ]
    notes = (
        f"{args.nets} {args.arch}s, each trained {args.epochs} epochs on {10 * args.ipc} images "
        f"and tested on {args.test_size}; 'seconds' is the best of {args.repeats} runs after a compiling run "
        "(first_run_s). loop_over_this > 1 means this variant is faster than the loop."
    )
    path = write_results(
        "bench_eval" + ("_quick" if args.quick else ""),
        rows,
        columns=list(rows[0]),
        notes=notes,
        out_dir=args.out_dir,
    )
    for row in rows:
        print(row)
    print(f"vmap / loop time ratio: {best['vmap'] / best['loop']:.2f}  -> {path}")


if __name__ == "__main__":
    main()
