"""Seconds per outer iteration, compile time and peak memory of every method, over IPC, networks, devices.

  python -m benchmarks.bench_matrix [--methods dc,dsa,dm,sre2l,dc_metadd] [--ipc 1,10,50] [--nets 1,4,8]
                                    [--devices 1,2,4] [--repeats 2] [--quick]

Methods: 'dc' and 'dsa' (gradient matching, K = --nets networks per iteration), 'dc_metadd' (DC with
the MetaDD regularizer, randomly initialised auxiliary networks --metadd-archs), 'dm' (distribution
matching) and 'sre2l' (its recover step, a randomly initialised ConvNetBN teacher); speed and memory
do not depend on the weights. Fashion-MNIST shapes (10 classes, 28x28x1, random arrays as the real set,
--per-class images per class), batch_real 256, the reference ConvNet, each method's defaults (CPU or
accelerator settings from `gradient_matching.BACKEND_DEFAULTS`).

Every variant runs in a fresh process with XLA_FLAGS=--xla_force_host_platform_device_count=N (on CPU N
forced host devices; on accelerators the real ones are used), so its peak memory is its own: the
process's peak RSS (`resource.getrusage`, compilation included) on CPU, the largest
`memory_stats()['peak_bytes_in_use']` of the used devices on accelerators. jaxdd shards every method's
classes over devices (DESIGN §7: gradient matching and DM per class, SRe2L's recover batch by its
classes' images), so N must divide the classes; device counts that do not are recorded as skipped. A
variant is compiled first (`lower().compile()`, compile_s) and run --repeats times; 'seconds' is the
best run of one outer iteration. Gradient matching at IPC > 1 times outer 1 and 2 (the reference's inner
epochs) and extrapolates the reference iteration (O matches + O-1 inner trainings) as O·m + (O-1)·(t2 -
2m), as bench_gradient_matching does; `--outers ref` times the whole iteration instead. images/s: the
step's own count of real and synthetic images processed (its 'images' metric) per second. --quick: 8x8
images, 4 classes, width-8 depth-1 networks, IPC 1, K 2, devices 1 and 2, one run, -O0 (CI-sized: well-
formed results, timings that mean nothing). Results: benchmarks/results/bench_matrix[_quick].{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time

import jax
import ml_collections

from benchmarks.bench_metadd import _auxiliaries
from benchmarks.common import (
    add_output_arguments,
    add_real_set_arguments,
    machine,
    reference_iteration_s,
    stand_in_real,
    use_quick_real_set,
    write_results,
)
from jaxdd import sharding
from jaxdd.config import base_config, resolve_backend
from jaxdd.errors import UserError
from jaxdd.methods import distribution_matching as dm
from jaxdd.methods import gradient_matching as gm
from jaxdd.methods import sre2l
from jaxdd.methods.base import Hooks
from jaxdd.models import conv, get_model

METHODS = ("dc", "dsa", "dm", "sre2l", "dc_metadd")
GM_METHODS = ("dc", "dsa", "dc_metadd")
ROW_PREFIX = "ROW "  # the worker's one result line on stdout


# ---- one variant, in the worker process ----


def spec_config(spec: dict, *, outer: int = 0) -> ml_collections.ConfigDict:
    """The run config of a variant: `base_config()` with the benchmark's shapes and method; `spec` may
    name the stand-in's 'dataset' (Fashion-MNIST unless told), gradient matching's 'inner_loop' (the
    reference's for the IPC unless told: an IPC outside its table needs it) and 'overrides' ({dotted
    key: value}, applied last)."""
    config = base_config()
    method = "dc" if spec["method"] == "dc_metadd" else spec["method"]
    dataset = spec.get("dataset", "fashion_mnist")
    config.update(dataset=dataset, method=method, ipc=spec["ipc"], devices=spec["devices"], seed=0)
    del config["model"]  # a name (str) in base_config; --quick gives a ConvNet spec dict
    config.model = spec["model"]
    config.init = "real" if method in ("dsa", "dm") else "noise"
    config.iterations = 1000
    if method in ("dc", "dsa"):
        _, inner = gm.loops_for_ipc(spec["ipc"], outer or 1, spec.get("inner_loop", 0))
        config.gm.update(
            outer_loop=outer, inner_loop=inner, num_nets=spec["K"], batch_real=spec["batch_real"]
        )
    config.dm.batch_real = spec["batch_real"]
    config.update_from_flattened_dict(spec.get("overrides", {}))
    return resolve_backend(config)  # the backend's choices, as a run's


class Program:
    """One compiled step (`lower().compile()` timed) with its arguments; `run()` times one call.

    `static`: the leading static arguments (model, settings), given to `lower` only; `args`, `kwargs`:
    the array arguments of every call."""

    def __init__(self, jitted, static: tuple, args: tuple, kwargs: dict):
        self.args, self.kwargs = args, kwargs
        lowered = jitted.lower(*static, *args, **kwargs)
        start = time.perf_counter()
        self.compiled = lowered.compile()
        self.compile_s = time.perf_counter() - start
        memory = self.compiled.memory_analysis()
        self.temp_mib = getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory is not None else 0.0
        self.times: list[float] = []
        self.images = 0.0

    def run(self) -> None:
        start = time.perf_counter()
        _, metrics = jax.block_until_ready(self.compiled(*self.args, **self.kwargs))
        self.times.append(time.perf_counter() - start)
        self.images = float(metrics["images"])


def _programs(spec: dict, real) -> dict[int, Program]:
    """{outer_loop: Program} of a variant (outer_loop 1 for DM and SRe2L, whose step is one iteration)."""
    key = jax.random.PRNGKey(0)
    shape = tuple(real.image_shape)
    if spec["method"] in GM_METHODS:
        aux = None
        if spec["method"] == "dc_metadd":
            aux = _auxiliaries(spec["metadd_archs"], 0, image_shape=shape, num_classes=real.num_classes)
        ref_outer, _ = gm.loops_for_ipc(spec["ipc"])
        outers = [ref_outer] if spec["ipc"] == 1 or spec["outers"] == "ref" else [1, 2]
        programs = {}
        for outer in outers:
            config = spec_config(spec, outer=outer)
            step = gm.make_step(config, real)  # resolves the devices (UserError when they do not fit)
            state = gm.init(config, real, key)
            programs[outer] = Program(gm.outer_step, step.args, (state, real), {"hooks": Hooks(metadd=aux)})
        return programs
    config = spec_config(spec)
    if spec["method"] == "dm":
        settings = dm.settings_from_config(
            config, min_class_count=real.min_class_count, num_classes=real.num_classes
        )
        model = get_model(
            spec["model"],
            num_classes=real.num_classes,
            image_shape=shape,
            conv=conv.options_from_config(config),
        )
        state = dm.init(config, real, key)
        return {1: Program(dm.outer_step, (model, settings), (state, real), {})}
    teacher = get_model(
        spec["teacher"],
        num_classes=real.num_classes,
        image_shape=shape,
        conv=conv.options_from_config(config),
    )
    variables = dict(teacher.init(jax.random.PRNGKey(1), real.train_images[:1], train=False))
    state = sre2l.init(config, real, key)
    settings = sre2l.settings_from_config(config, real)
    return {1: Program(sre2l.recover_step, (teacher, settings), (variables, state, real), {})}


def peak_memory() -> tuple[float, str]:
    """(MiB, what): the largest device peak on accelerators, else the process's peak RSS."""
    if jax.default_backend() != "cpu":
        peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in jax.local_devices()]
        if max(peaks, default=0):
            return max(peaks) / 2**20, "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, "process RSS"  # Linux: KiB


def measure(spec: dict) -> dict:
    """The row of one variant: seconds per outer iteration, images/s, compile time, memory."""
    if spec["quick"]:
        jax.config.update("jax_disable_most_optimizations", True)  # compilation dominates a smoke run
    row = {"machine": machine()}
    dataset = spec.get("dataset", "fashion_mnist")
    real = stand_in_real(spec["classes"], spec["per_class"], tuple(spec["shape"]), dataset=dataset)
    try:
        programs = _programs(spec, real)
    except UserError as error:
        return {**row, "status": f"skipped: {error}"}
    for _ in range(spec["repeats"]):
        for program in programs.values():
            program.run()
    best = {outer: min(p.times) for outer, p in programs.items()}
    ref_outer = gm.loops_for_ipc(spec["ipc"])[0] if spec["method"] in GM_METHODS else 1
    last = programs[max(programs)]
    if ref_outer in programs:
        seconds, images, timing = best[ref_outer], programs[ref_outer].images, "measured"
    else:  # outer 1 and 2: O matches + (O-1) inner trainings
        match, inner = best[1], best[2] - 2 * best[1]
        seconds = reference_iteration_s(ref_outer, best[1], best[2])
        images, timing = programs[1].images * ref_outer, "extrapolated from outer 1, 2"
        row.update(match_s=round(match, 3), inner_s=round(inner, 3))
    peak, memory = peak_memory()
    return {
        **row,
        "status": "ok",
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 1),
        "timing": timing,
        "runs": spec["repeats"],
        "compile_s": round(last.compile_s, 2),
        "temp_mib": round(last.temp_mib, 1),
        "peak_mib": round(peak, 1),
        "memory": memory,
    }


# ---- the matrix, in the parent process ----


def _variants(args) -> list[dict]:
    """Every (method, ipc, K, devices) to measure, with the shapes the worker needs."""
    common = {
        "shape": [int(s) for s in args.shape.split(",")], "classes": args.classes,
        "per_class": args.per_class, "batch_real": args.batch_real, "repeats": args.repeats,
        "model": args.model, "teacher": args.teacher, "metadd_archs": args.metadd_archs,
        "outers": args.outers, "quick": args.quick,
    }  # fmt: skip
    specs = []
    ints = lambda text: [int(x) for x in text.split(",")]
    grid = itertools.product(args.methods.split(","), ints(args.ipc), ints(args.devices))
    for method, ipc, devices in grid:
        for k in ints(args.nets) if method in GM_METHODS else [1]:
            specs.append({**common, "method": method, "ipc": ipc, "K": k, "devices": devices})
    return specs


def _skip_reason(spec: dict) -> str:
    """Why a variant is not run at all ('' when it is)."""
    try:
        sharding.resolve_devices(spec["devices"], spec["classes"], available=spec["devices"])
    except UserError as error:
        return f"skipped: {error}"
    return ""


def run_worker(spec: dict, timeout: float) -> dict:
    """`measure(spec)` in a fresh process with `spec['devices']` forced host devices."""
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={spec['devices']}"
    env = {**os.environ, "XLA_FLAGS": flags.strip()}
    command = [sys.executable, "-m", "benchmarks.bench_matrix", "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: over --timeout {timeout:.0f} s"}
    rows = [line[len(ROW_PREFIX) :] for line in done.stdout.splitlines() if line.startswith(ROW_PREFIX)]
    if done.returncode or not rows:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        return {"status": f"failed: {lines[-1][:160]}"}
    return json.loads(rows[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated: {METHODS}")
    parser.add_argument("--ipc", default="1,10,50")
    parser.add_argument("--nets", default="1,4,8", help="K networks per iteration (gradient matching)")
    parser.add_argument("--devices", default="1,2,4", help="forced host device counts")
    parser.add_argument("--outers", default="1,2", choices=("1,2", "ref"), help="gm at IPC > 1: see above")
    add_real_set_arguments(parser)
    parser.add_argument("--model", default="ConvNet", help="the distillation network")
    parser.add_argument("--teacher", default="ConvNetBN", help="SRe2L's (BatchNorm) teacher")
    parser.add_argument("--metadd-archs", default="ConvNet,AlexNet,VGG11,ResNet18")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds per variant")
    add_output_arguments(parser, name="bench_matrix", quick_help="CI-sized smoke run (see above)")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)  # a variant's JSON spec
    args = parser.parse_args(argv)
    if args.worker:
        print(ROW_PREFIX + json.dumps(measure(json.loads(args.worker))), flush=True)
        return
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)}")
    metadd_archs = args.metadd_archs.split(",")
    if args.quick:
        use_quick_real_set(args, classes=4)
        args.repeats = 1
        args.ipc, args.nets, args.devices, args.timeout = "1", "2", "1,2", 600.0
        args.name += "_quick"
        tiny = {"width": 8, "depth": 1}
        args.model, args.teacher = tiny, {**tiny, "norm": "batchnorm"}
        metadd_archs = [tiny, {**tiny, "norm": "batchnorm"}]
    args.metadd_archs = metadd_archs

    rows = []
    for spec in _variants(args):
        variant = {key: spec[key] for key in ("method", "ipc", "K", "devices")}
        if spec["method"] not in GM_METHODS:
            variant["K"] = "-"
        reason = _skip_reason(spec)
        print("variant", variant, reason, flush=True)
        rows.append({**variant, **({"status": reason} if reason else run_worker(spec, args.timeout))})
        print("  ", {k: v for k, v in rows[-1].items() if k != "machine"}, flush=True)
    # the host as the workers saw it; rows not run get the same. This process initialises no backend
    # unless no worker ran: it must not hold an accelerator the workers need.
    host = next((row["machine"] for row in rows if "machine" in row), None) or machine()
    for row in rows:
        row.setdefault("machine", host)
    notes = (
        f"{args.classes} classes of {args.shape.replace(',', 'x')} random images ({args.per_class}/class), "
        f"batch_real {args.batch_real}, model {args.model}; SRe2L teacher {args.teacher}; MetaDD auxiliaries "
        f"{args.metadd_archs}. Every variant ran in its own process; its JSON row names the machine, "
        f"versions and device count it saw. 'seconds': best of {args.repeats} runs of one outer iteration. "
        "peak_mib: the process's peak RSS (compilation included) or the device's peak, as 'memory' says; "
        "temp_mib: XLA's scratch memory of the compiled step (gm at IPC > 1: the outer-2 program)."
    )
    columns = ["method", "ipc", "K", "devices", "status", "seconds", "images_per_s", "timing"]
    columns += ["compile_s", "temp_mib", "peak_mib", "memory"]
    path = write_results(args.name, rows, columns=columns, notes=notes, out_dir=args.out_dir, info=host)
    print(path)


if __name__ == "__main__":
    main()
