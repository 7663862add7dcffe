"""Seconds per DC/DSA outer iteration on Fashion-MNIST shapes, per way of iterating classes and networks.

  python -m benchmarks.bench_gradient_matching [--ipc 1,10] [--nets 1,4] [--classes 10] [--quick]

Random arrays stand in for the real set (--per-class images per class, 28x28x1); the network is the
reference ConvNet (width 128, depth 3, instance norm), batch_real 256 unless told otherwise. Variants:
classes in one vmap (class_chunk 0) or one at a time (chunk 1) under `lax.map` or unrolled; the K
networks under vmap, an unrolled loop or `lax.map`. Every variant is compiled first (compile_s, from
`lower().compile()`), then the variants run in turn, alternating, --repeats times; 'seconds' is the best
run. IPC 1 runs the reference iteration (outer 1, inner 1). IPC 10 runs --outers outer-loop steps with
inner 50 epochs; with 1 and 2 the reference iteration (10 matches + 9 inner trainings) is extrapolated
as 10m + 9t from m = t(outer 1) and t = t(outer 2) - 2m. images/s counts real + synthetic images matched:
K * outer * classes * (batch_real + ipc) per second. A variant whose first run took more than
--skip-over seconds is not repeated. --product-rows A,B compiles every variant once per value of
`config.conv.product_weight_gradient_rows` (`ConvOptions`: weight gradients as matrix products or
convolutions), so the two alternate in one run. The other 'auto' choices are the backend's. Results:
benchmarks/results/bench_gradient_matching[_quick].{json,md}, or --name.
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import ml_collections

from benchmarks.common import (
    add_output_arguments,
    add_real_set_arguments,
    real_set_from_args,
    reference_iteration_s,
    use_quick_real_set,
    write_results,
)
from jaxdd.config import resolve_backend
from jaxdd.methods import gradient_matching as gm
from jaxdd.models import conv


class Variant:
    """One compiled outer step of a configuration, and its timings."""

    def __init__(self, config: ml_collections.ConfigDict, real, info: dict):
        self.info, self.real = info, real
        self.state = gm.init(config, real, jax.random.PRNGKey(0))
        step = gm.make_step(config, real)
        start = time.perf_counter()
        self.compiled = gm.outer_step.lower(*step.args, self.state, real).compile()
        self.compile_s = time.perf_counter() - start
        memory = self.compiled.memory_analysis()
        self.temp_gb = getattr(memory, "temp_size_in_bytes", 0) / 2**30 if memory is not None else 0.0
        self.times: list[float] = []
        self.error = ""

    def run(self) -> float:
        """Seconds of one outer iteration; inf (recorded as 'failed') when the run itself fails, e.g.
        out of memory, so that one variant does not lose the others' figures."""
        start = time.perf_counter()
        try:
            jax.block_until_ready(self.compiled(self.state, self.real))
        except jax.errors.JaxRuntimeError as error:
            self.error = str(error).splitlines()[0][:80]
            self.times.append(float("inf"))
            return self.times[-1]
        self.times.append(time.perf_counter() - start)
        return self.times[-1]


def _variants(args):
    """(ipc, outer, inner, K, parallel, class_chunk, class_loop) of every configuration to time."""
    for ipc in (int(i) for i in args.ipc.split(",")):
        outers = [1] if ipc == 1 else [int(o) for o in args.outers.split(",")]
        inner = 1 if ipc == 1 else 50
        for outer, k in itertools.product(outers, (int(k) for k in args.nets.split(","))):
            parallels = ["loop"] if k == 1 else args.parallel.split(",")
            for parallel, chunk in itertools.product(parallels, (int(c) for c in args.chunks.split(","))):
                for class_loop in ["map"] if chunk == 0 else args.class_loops.split(","):
                    yield ipc, outer, inner, k, parallel, chunk, class_loop


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ipc", default="1", help="comma-separated IPCs")
    parser.add_argument("--outers", default="1,2", help="outer-loop steps timed for IPC > 1")
    parser.add_argument("--nets", default="1,4", help="comma-separated K")
    parser.add_argument("--parallel", default="loop,vmap,map", help="K > 1: how the networks are iterated")
    parser.add_argument("--chunks", default="1,0", help="class_chunk values (0: all classes in one vmap)")
    parser.add_argument("--class-loops", default="unroll,map", help="class_loop values for chunk > 0")
    parser.add_argument("--method", default="dc", choices=("dc", "dsa"))
    parser.add_argument("--model", default="ConvNet")
    add_real_set_arguments(parser)
    parser.add_argument(
        "--product-rows",
        default="",
        help="comma-separated conv.product_weight_gradient_rows values to compare (a huge one: always the "
        "convolution); '' = the default",
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-over", type=float, default=600.0, help="seconds; slower variants run once")
    add_output_arguments(
        parser,
        name="bench_gradient_matching",
        quick_help="smoke run: 8x8 images, width-8 net, 3 classes, one run, -O0",
    )
    args = parser.parse_args(argv)
    if args.quick:
        use_quick_real_set(args)
        args.repeats = 1
        args.model, args.ipc, args.name = {"width": 8, "depth": 1}, "1", args.name + "_quick"
        args.nets, args.parallel, args.class_loops = "1,2", "loop,vmap", "unroll"
        # a smoke run: compilation dominates and timings at this size mean nothing anyway
        jax.config.update("jax_disable_most_optimizations", True)
    real = real_set_from_args(args)

    product_rows = [int(r) for r in args.product_rows.split(",")] if args.product_rows else [None]
    variants = []
    for ipc, outer, inner, k, parallel, chunk, class_loop in _variants(args):
        config = ml_collections.ConfigDict(
            {"devices": 0, "method": args.method, "dataset": "fashion_mnist", "model": args.model, "ipc": ipc}
        )
        config.init, config.seed, config.gm = "noise", 0, gm.default_config()
        config.conv = conv.default_config()
        config.gm.update(outer_loop=outer, inner_loop=inner, num_nets=k, batch_real=args.batch_real)
        config.gm.update(parallel=parallel, class_chunk=chunk, class_loop=class_loop)
        resolve_backend(config)
        info = dict(ipc=ipc, outer=outer, inner=inner, K=k, parallel=parallel, class_chunk=chunk)
        info["class_loop"] = class_loop if chunk else "-"
        for rows in product_rows:
            if len(product_rows) > 1:  # part of the models, so of the programs' cache keys
                config.conv.product_weight_gradient_rows = rows
                info = {**info, "product_rows": rows}
            print("compiling", info, flush=True)
            variants.append(Variant(config, real, info))
            print(f"  {variants[-1].compile_s:.1f} s, temp {variants[-1].temp_gb:.2f} GiB", flush=True)
    for repeat in range(args.repeats):
        for v in variants:
            if repeat and (v.error or v.times[0] > args.skip_over):
                continue
            print(f"{v.info}: {v.run():.2f} s", flush=True)

    rows = []
    for v in variants:
        i = v.info
        fastest = min(min(w.times) for w in variants if _group(w.info) == _group(i))
        best = min(v.times)
        matched = i["K"] * i["outer"] * args.classes * (args.batch_real + i["ipc"])
        row = {**i, "compile_s": round(v.compile_s, 1), "temp_gib": round(v.temp_gb, 2)}
        if v.error:
            row.update(runs=len(v.times), seconds="failed", images_per_s="-", vs_fastest=v.error)
            rows.append(row)
            continue
        row.update(runs=len(v.times), seconds=round(best, 2), images_per_s=round(matched / best, 1))
        row["vs_fastest"] = round(best / fastest, 2)
        one = [w for w in variants if w.info == {**i, "outer": 1}]
        if i["outer"] == 2 and one:
            match = min(one[0].times)
            outer_ref = gm.loops_for_ipc(i["ipc"])[0]
            row["ref_iteration_s"] = round(reference_iteration_s(outer_ref, match, best), 1)
        rows.append(row)
    notes = (
        f"{args.method.upper()}, {args.model} on {args.classes} classes of {args.shape.replace(',', 'x')} "
        f"random images ({args.per_class}/class), batch_real {args.batch_real}. 'seconds': best of up to "
        f"{args.repeats} alternating runs of one outer iteration with the listed loops; vs_fastest: relative "
        "to the fastest variant of the same IPC, outer and K. class_chunk 0: all classes in one vmap; "
        "class_loop over single classes: 'unroll' (in the program) or 'map' (lax.map). ref_iteration_s: "
        "the reference's O matches + O-1 inner trainings (O = 10 at IPC 10) extrapolated from outer 1 and 2."
    )
    columns = list(dict.fromkeys(c for row in rows for c in row))
    path = write_results(args.name, rows, columns=columns, notes=notes, out_dir=args.out_dir)
    for row in rows:
        print(row)
    print(path)


def _group(info: dict) -> tuple:
    return info["ipc"], info["outer"], info["K"]


if __name__ == "__main__":
    main()
