"""Where the chained MTT step's time goes on this backend: the student's steps in a lax.scan or unrolled.

  python -m benchmarks.bench_mtt_loop [--syn-steps 10] [--ipc 1] [--shape 28,28,1] [--classes 10]
                                      [--model ConvNet] [--repeats 2] [--quick]

`mtt.trajectory_loss` (ConvNet, remat 'none', all synthetic images per step) is compiled and timed for
each row, alternating scan and unrolled (`mtt.unroll`) within one run: the loss alone (forward), its
value and gradient to the pixels with DSA, and the same without augmentation. Each row also counts
the convolutions of the optimized program by dimension order (`dim_labels`). On XLA:CPU the scan's
backward keeps some in orders that the unrolled program does not (docs/performance.md); the counts
show which orders each program has. --quick: 8x8 images, 3 classes, a width-8 depth-1 ConvNet, 3
steps, one run. Results: benchmarks/results/bench_mtt_loop[_quick].{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import re
import time

import jax
import jax.numpy as jnp

from benchmarks.common import add_output_arguments, write_results
from jaxdd import augment, training
from jaxdd.methods import mtt
from jaxdd.models import ConvNetSpec, get_model

CANONICAL = "b01f_01io->b01f"  # NHWC input, HWIO kernel: XLA:CPU's usual convolution order


def conv_orders(compiled_text: str) -> dict[str, int]:
    """How many convolutions of an optimized HLO module have each `dim_labels`."""
    lines = (line for line in compiled_text.splitlines() if " convolution(" in line)
    orders = (re.search(r"dim_labels=([^,\s]+)", line) for line in lines)
    return dict(collections.Counter(m.group(1) for m in orders if m))


def measure(loss, images, repeats: int) -> dict:
    """Compile time, best seconds of `repeats` runs, XLA temporaries and the convolution orders."""
    start = time.perf_counter()
    compiled = jax.jit(loss).lower(images).compile()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(images))
        times.append(time.perf_counter() - start)
    orders = conv_orders(compiled.as_text())
    temp = compiled.memory_analysis()
    return {
        "seconds": round(min(times), 4),
        "compile_s": round(compile_s, 2),
        "temp_mib": round(temp.temp_size_in_bytes / 2**20, 1) if temp is not None else None,
        "convolutions": sum(orders.values()),
        "non_canonical": sum(n for order, n in orders.items() if order != CANONICAL),
        "orders": ", ".join(f"{order} ×{n}" for order, n in sorted(orders.items())),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--syn-steps", type=int, default=10)
    parser.add_argument("--ipc", type=int, default=1)
    parser.add_argument("--shape", default="28,28,1")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--model", default="ConvNet")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--note", default="", help="a sentence for the results' notes (the machine's load)")
    add_output_arguments(parser, name="bench_mtt_loop", quick_help="CI-sized: 8x8, 3 classes, 3 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.syn_steps, args.shape, args.classes, args.repeats = 3, "8,8,1", 3, 1
        args.name = f"{args.name}_quick"
    shape = tuple(int(s) for s in args.shape.split(","))
    spec, model_name = (
        (ConvNetSpec(width=8, depth=1), "ConvNet(width 8, depth 1)")
        if args.quick
        else (args.model, args.model)
    )
    model = get_model(spec, num_classes=args.classes, image_shape=shape)
    start_params, batch_stats = training.init_variables(model, jax.random.PRNGKey(0), shape)[:2]
    target = training.init_variables(model, jax.random.PRNGKey(1), shape)[0]
    num_images = args.classes * args.ipc
    images = jax.random.normal(jax.random.PRNGKey(2), (num_images, *shape))
    labels = jnp.repeat(jnp.arange(args.classes), args.ipc)
    dsa = augment.resolve_strategy("dsa", "fashion_mnist")
    rows = []
    for what, strategy, grad in (("loss only", dsa, False), ("value and grad", dsa, True),
                                 ("value and grad, no DSA", "", True)):  # fmt: skip
        for straight in (False, True):
            settings = mtt.Settings(
                syn_steps=args.syn_steps, remat="none", unroll=straight, strategy=strategy, batch=num_images,
                dsa_strategy="dsa" if strategy else "none", expert_epochs=1, max_start_epoch=1,
            )  # fmt: skip

            def loss(x, settings=settings):
                return mtt.trajectory_loss(
                    model, settings, batch_stats, x, labels, jnp.float32(0.01), start_params, target,
                    jax.random.PRNGKey(5),
                )  # fmt: skip

            row = {"what": what, "loop": "unrolled" if straight else "scan"}
            row.update(measure(jax.value_and_grad(loss) if grad else loss, images, args.repeats))
            rows.append(row)
            counts = f"{row['non_canonical']}/{row['convolutions']} convolutions non-canonical"
            print(f"{what:<24} {row['loop']:<8}: {row['seconds']} s, {counts}", flush=True)
    for row in rows:  # the scan's time against the unrolled program's, same row kind
        other = next(r for r in rows if r["what"] == row["what"] and r["loop"] == "unrolled")
        row["vs_unrolled"] = round(row["seconds"] / other["seconds"], 2)
    notes = (
        f"mtt.trajectory_loss, {model_name} on {args.shape} images, {args.classes} classes, IPC {args.ipc}, "
        f"{args.syn_steps} student steps on all synthetic images, remat 'none'; best of {args.repeats} runs "
        "after compiling, rows alternating scan and unrolled in one run. vs_unrolled: seconds against the "
        f"unrolled row of the same kind. non_canonical: convolutions whose dim_labels are not {CANONICAL} "
        "in the optimized program." + (f" {args.note}" if args.note else "")
    )
    columns = ["what", "loop", "seconds", "vs_unrolled", "compile_s", "temp_mib", "convolutions"]
    columns += ["non_canonical", "orders"]
    write_results(args.name, rows, columns=columns, notes=notes, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
