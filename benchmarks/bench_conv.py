"""Seconds per ConvNet SGD step outside and inside a `lax.scan`, per convolution implementation and XLA flags.

  python -m benchmarks.bench_conv [--batch 128] [--steps 4] [--flags "" "--xla_cpu_use_onednn=true"] [--quick]

The case behind `jaxdd.models.conv`: XLA:CPU leaves a weight-gradient convolution inside a while loop in
JAX's permuted form and runs it on a slow generic path. Variants: 'single' (one jitted step), 'scan'
(`--steps` steps in one `lax.scan`), 'unroll' (the same steps unrolled), each with the 'lax' and the
'canonical' convolution. Each XLA_FLAGS value runs in its own subprocess (flags are read at start-up);
within one, the variants alternate and the figure is the best of `--repeats` timed runs after a compiling
one. Results: benchmarks/results/bench_conv[_quick].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import optax

from benchmarks.common import write_results
from jaxdd import training
from jaxdd.models import ConvOptions, get_model

VARIANTS = ("single", "scan", "unroll")


def _programs(model, tx, steps: int):
    def step(state, x, y, key):
        return training.sgd_step(model, tx, state, x, y, key)

    def scan(state, x, y, key):
        return jax.lax.scan(lambda s, k: step(s, x, y, k), state, jax.random.split(key, steps))

    def unroll(state, x, y, key):
        for k in jax.random.split(key, steps):
            state, loss = step(state, x, y, k)
        return state, loss

    return {"single": (jax.jit(step), 1), "scan": (jax.jit(scan), steps), "unroll": (jax.jit(unroll), steps)}


def measure(args) -> list[dict]:
    """Rows for every (implementation, variant) in this process: one model per implementation
    (`ConvOptions`, part of the model and so of its programs), the same parameters."""
    shape = tuple(int(s) for s in args.shape.split(","))
    x = jax.random.normal(jax.random.PRNGKey(1), (args.batch, *shape))
    y = jnp.arange(args.batch) % 10
    key = jax.random.PRNGKey(2)
    tx = optax.sgd(0.01)
    models = {
        impl: get_model(args.model, num_classes=10, image_shape=shape, conv=ConvOptions(implementation=impl))
        for impl in ("lax", "canonical")
    }
    state = training.init_train_state(models["lax"], jax.random.PRNGKey(0), image_shape=shape, tx=tx)
    runs = {}
    for impl, model in models.items():
        for name, (fn, steps) in _programs(model, tx, args.steps).items():
            start = time.perf_counter()
            jax.block_until_ready(fn(state, x, y, key))
            runs[impl, name] = (fn, steps, [], time.perf_counter() - start)
    for _ in range(args.repeats):
        for fn, steps, times, _ in runs.values():
            start = time.perf_counter()
            jax.block_until_ready(fn(state, x, y, key))
            times.append((time.perf_counter() - start) / steps)
    return [
        {"conv": impl, "variant": name, "first_run_s": round(first, 2), "s_per_step": round(min(times), 4)}
        for (impl, name), (_, _, times, first) in runs.items()
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ConvNet")
    parser.add_argument("--shape", default="28,28,1")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--flags", nargs="*", default=[""], help="XLA_FLAGS values, one subprocess each")
    parser.add_argument("--quick", action="store_true", help="CI-sized: ConvNetD1 on 8x8, batch 8, 2 steps")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.shape, args.batch, args.steps, args.repeats = "ConvNetD1", "8,8,1", 8, 2, 1
    if args.child:
        print(json.dumps(measure(args)))
        return
    rows = []
    for flags in args.flags:
        child = [sys.executable, "-m", "benchmarks.bench_conv", "--child", "--model", args.model]
        child += ["--shape", args.shape, "--batch", str(args.batch), "--steps", str(args.steps)]
        child += ["--repeats", str(args.repeats)]
        env = {**os.environ, "XLA_FLAGS": flags}
        done = subprocess.run(child, env=env, capture_output=True, text=True, check=True)
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        single = {r["conv"]: r["s_per_step"] for r in measured if r["variant"] == "single"}
        for row in measured:
            row = {"xla_flags": flags or "(none)", **row}
            row["vs_single_lax"] = round(row["s_per_step"] / single["lax"], 2)
            rows.append(row)
            print(row, flush=True)
    notes = (
        f"{args.model} SGD step (forward + backward + update) on {args.batch} images of {args.shape}; "
        f"'scan'/'unroll': {args.steps} steps in one program, per step; best of {args.repeats} runs after a "
        "compiling one (first_run_s); vs_single_lax: relative to one jitted step with XLA's convolution."
    )
    path = write_results(
        "bench_conv" + ("_quick" if args.quick else ""), rows, columns=list(rows[0]), notes=notes,
        out_dir=args.out_dir,
    )  # fmt: skip
    print(path)


if __name__ == "__main__":
    main()
