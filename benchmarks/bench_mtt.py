"""MTT's memory and time against the unroll length: one outer iteration at syn_steps N, per `mtt.remat`.

  python -m benchmarks.bench_mtt [--syn-steps 10,20,50,80] [--remat none,step,sqrt] [--ipc 1,10]
                                 [--unroll false,true] [--shape 28,28,1] [--classes 10] [--model ConvNet]
                                 [--quick]

One `mtt.outer_step` (student unroll of N SGD steps on minibatches of the synthetic set, the normalised
parameter distance, its gradient to the pixels and to α) is compiled for each (IPC, N, remat) and run
`--repeats` times. Memory: XLA's own figure for the compiled program's temporaries
(`memory_analysis().temp_size_in_bytes`, the working memory beyond inputs and outputs; on an accelerator
also the device's `peak_bytes_in_use` after the run, which only grows within one process). The expert
buffer is one stand-in expert (random parameters of the model's shapes, 1 + expert_epochs epochs kept):
speed and memory do not depend on its values. batch_syn = all synthetic images (the reference's default),
DSA as the reference (the dataset's strategy). 'none' keeps every step's residuals (memory ~N), 'step'
keeps each step's input parameters and recomputes inside it, 'sqrt' nests two scans of ~√N (memory ~2√N
steps' parameters). `--unroll true` adds, for remat 'none', the straight-line student steps
(`mtt.unroll`, no loop); rows alternate scan and unrolled within one run. --quick: 8x8 images, 3
classes, width-8 depth-1 ConvNet, N 2 and 4, one run.
Results: benchmarks/results/bench_mtt[_quick].{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp

from benchmarks.common import add_output_arguments, write_results
from jaxdd import augment, training
from jaxdd.methods import mtt
from jaxdd.models import ConvNetSpec, get_model


def stand_in_buffer(model, image_shape, epochs: int, key: jax.Array):
    """One expert's `epochs` parameter snapshots (leaves [1, epochs, ...]): independent random inits."""
    keys = jax.random.split(key, epochs)
    snapshots = [training.init_variables(model, k, image_shape)[0] for k in keys]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves)[None], *snapshots)


def step_and_state(model, image_shape, num_classes: int, ipc: int, settings: mtt.Settings):
    """(`mtt.outer_step` bound to a stand-in buffer, a first `MTTState` of random images)."""
    num = num_classes * ipc
    images = jax.random.normal(jax.random.PRNGKey(1), (num, *image_shape))
    labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ipc)
    syn_lr = jnp.float32(settings.syn_lr_init)
    state = mtt.MTTState(
        images=images, labels=labels, opt_state=settings.pixel_optimizer.init(images),
        key=jax.random.PRNGKey(2), step=jnp.int32(0),
        syn_lr=syn_lr, lr_opt_state=settings.lr_optimizer.init(syn_lr),
    )  # fmt: skip
    buffer = stand_in_buffer(model, image_shape, settings.epochs_needed, jax.random.PRNGKey(3))
    return (lambda state: mtt.outer_step(model, settings, state, None, buffer)), state


def measure(model, image_shape, num_classes: int, ipc: int, settings: mtt.Settings, repeats: int) -> dict:
    """Compile time, XLA temporaries (MiB), best seconds of one iteration and images/s (`repeats` 0:
    compiled only, no time: the memory is the compiled program's, so it needs no run)."""
    step, state = step_and_state(model, image_shape, num_classes, ipc, settings)
    start = time.perf_counter()
    compiled = jax.jit(step).lower(state).compile()
    compile_s = time.perf_counter() - start
    temp = compiled.memory_analysis()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        new_state, metrics = compiled(state)
        jax.block_until_ready((new_state.images, metrics["loss"]))
        times.append(time.perf_counter() - start)
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" and times else None
    seconds = min(times) if times else None
    return {
        "ipc": ipc,
        "syn_steps": settings.syn_steps,
        "remat": settings.remat,
        "unroll": settings.unroll,
        "compile_s": round(compile_s, 2),
        "seconds": round(seconds, 4) if times else None,
        "temp_mib": round(temp.temp_size_in_bytes / 2**20, 2) if temp is not None else None,
        "peak_mib": round(stats["peak_bytes_in_use"] / 2**20, 1) if stats else None,
        "images_per_s": round(float(metrics["images"]) / seconds, 1) if times else None,
        "loss": float(metrics["loss"]) if times else None,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--syn-steps", default="10,20,50,80")
    parser.add_argument("--remat", default="none,step,sqrt")
    parser.add_argument("--ipc", default="1,10")
    parser.add_argument("--unroll", default="false", help="'false', 'true' or both: straight-line steps")
    parser.add_argument("--shape", default="28,28,1")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--model", default="ConvNet")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs; 0: compile only (memory)")
    parser.add_argument("--note", default="", help="a sentence for the results' notes (the machine's load)")
    add_output_arguments(parser, name="bench_mtt", quick_help="CI-sized: 8x8, 3 classes, N 2 and 4")
    args = parser.parse_args(argv)
    model_name = args.model
    if args.quick:
        args.syn_steps, args.ipc, args.shape, args.classes, args.repeats = "2,4", "1", "8,8,1", 3, 1
        args.name = f"{args.name}_quick"
    shape = tuple(int(s) for s in args.shape.split(","))
    if args.quick:
        model = get_model(ConvNetSpec(width=8, depth=1), num_classes=args.classes, image_shape=shape)
        model_name = "ConvNet(width 8, depth 1)"
    else:
        model = get_model(args.model, num_classes=args.classes, image_shape=shape)
    unrolls = [{"false": False, "true": True}[v.strip().lower()] for v in args.unroll.split(",")]
    combos = [(r, u) for r in args.remat.split(",") for u in unrolls if r == "none" or not u]
    rows = []
    for ipc in (int(v) for v in args.ipc.split(",")):
        for steps in (int(v) for v in args.syn_steps.split(",")):
            for remat, straight in combos:
                base = mtt.Settings(
                    syn_steps=steps, remat=remat, unroll=straight, expert_epochs=2, max_start_epoch=1
                )
                settings = dataclasses.replace(
                    base, strategy=augment.resolve_strategy("dsa", "fashion_mnist"), batch=args.classes * ipc
                )
                row = measure(model, shape, args.classes, ipc, settings, args.repeats)
                rows.append(row)
                print(
                    f"IPC {ipc} N {steps:>3} remat {remat:<4} unroll {straight!s:<5}: {row['seconds']} s/it, "
                    f"temp {row['temp_mib']} MiB, compile {row['compile_s']} s",
                    flush=True,
                )
    for row in rows:  # memory relative to the same IPC's shortest unroll with the same remat and loop
        kind = lambda r: (r["ipc"], r["remat"], r["unroll"])
        first = next(r for r in rows if kind(r) == kind(row))
        if row["temp_mib"] is not None and first["temp_mib"]:
            row["temp_vs_shortest"] = round(row["temp_mib"] / first["temp_mib"], 2)
    notes = (
        f"One MTT outer iteration, {model_name} on {args.shape} images, {args.classes} classes, "
        "batch_syn = all synthetic images, DSA on, expert_epochs 2, one stand-in expert; "
        + (f"best of {args.repeats} runs after compiling. " if args.repeats else "compiled only, not run. ")
        + "temp: XLA's temporary buffers of the compiled "
        "program (memory_analysis), the part that grows with the unroll; temp_vs_shortest: against the "
        "same IPC, remat and unroll at the first syn_steps." + (f" {args.note}" if args.note else "")
    )
    columns = ["ipc", "syn_steps", "remat", "unroll", "seconds", "compile_s", "temp_mib", "temp_vs_shortest"]
    columns += ["peak_mib", "images_per_s"]
    write_results(args.name, rows, columns=columns, notes=notes, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
