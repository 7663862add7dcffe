"""Where the time of one DC outer iteration goes: a profile of the compiled step, by kind of XLA op.

  python -m benchmarks.bench_profile [--ipc 1] [--model ConvNet] [--batch-real 256] [--top 12] [--quick]

The step (gradient matching, K = 1, the backend's loops) is compiled and run once, then run once more
under `jax.profiler.trace`. Every op the runtime executed is an event on the host timeline named after
its HLO instruction; the instruction's opcode in the compiled HLO, and for fusions the ops they contain,
give its kind. Convolutions are split by pass (forward, backward, the backward of the backward that
matching's second order needs, read from the JAX op name in the HLO metadata) and, in backward passes,
into weight and activation gradients (`convolution_kind`); the small-map path of `jaxdd.models.conv`
shows up as dots. Control-flow ops (while, conditional, call) are not counted, their
bodies' ops are. Rows: seconds and share of the traced total per kind, then the slowest single
instructions with their shapes. Results: benchmarks/results/bench_profile[_quick].{json,md}. --quick:
8x8 images, 3 classes, a width-8 network (well-formed results, figures that mean nothing).
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
import time
from pathlib import Path

import jax
import ml_collections

from benchmarks.common import (
    add_output_arguments,
    add_real_set_arguments,
    real_set_from_args,
    use_quick_real_set,
    write_results,
)
from jaxdd.config import resolve_backend
from jaxdd.methods import gradient_matching as gm
from jaxdd.models import conv

CONTROL_FLOW = {"while", "conditional", "call"}
# `name = type opcode(operands), attributes` in the text of the compiled HLO module
INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")
COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def parse_hlo(text: str) -> tuple[dict, dict]:
    """({instruction: (opcode, result type, rest of line)}, {computation: [its instruction names]})."""
    instructions, computations, current = {}, {}, None
    for line in text.splitlines():
        found = INSTRUCTION.match(line)
        if found:
            name, result, opcode, rest = found.groups()
            instructions[name] = (opcode, result, rest)
            if current is not None:
                computations[current].append(name)
            continue
        header = COMPUTATION.match(line)
        if header:
            current = header.group(1)
            computations[current] = []
    return instructions, computations


PASSES = ("forward pass", "backward pass", "second backward pass")


def convolution_kind(result: str, rest: str) -> str:
    """Which pass a convolution instruction belongs to and what it computes. The pass is the number of
    `transpose(` in its JAX op name (metadata): 0 the forward pass, 1 the gradient (and its
    linearisation), 2 the gradient of the gradient (matching's second order). In a backward pass a window
    larger than the output in both spatial dims is a weight gradient (the window spans the activation
    map, the output is the kernel), anything else an activation gradient."""
    op_name = re.search(r'op_name="([^"]*)"', rest)
    order = min(op_name.group(1).count("transpose(") if op_name else 0, len(PASSES) - 1)
    if order == 0:
        return PASSES[0]
    window = re.search(r"window=\{([^}]*)\}", rest)
    size = re.search(r"size=(\d+)x(\d+)", window.group(1)) if window else None
    dims = re.search(r"\[([\d,]+)\]", result)
    labels = re.search(r"dim_labels=\S*->(\w+)", rest)
    what = "activation gradient"
    if size and dims and labels:
        shape = dict(zip(labels.group(1), map(int, dims.group(1).split(",")), strict=False))
        height, width = map(int, size.groups())
        if height > shape.get("0", height) and width > shape.get("1", width):
            what = "weight gradient"
    return f"{PASSES[order]}, {what}"


def op_kind(name: str, instructions: dict, computations: dict) -> str:
    """The kind of instruction `name` of the module."""
    opcode, result, rest = instructions[name]
    if opcode == "convolution":
        return f"convolution: {convolution_kind(result, rest)}"
    if opcode == "fusion":
        called = re.search(r"calls=%?([\w.\-]+)", rest)
        inner = [instructions[i] for i in computations.get(called.group(1), [])] if called else []
        convolutions = [convolution_kind(r, x) for op, r, x in inner if op == "convolution"]
        if convolutions:
            return f"convolution: {convolutions[0]} (fused)"
        if any(op == "dot" for op, _, _ in inner):
            return "dot (fused)"
        if any(op in ("reduce", "reduce-window") for op, _, _ in inner):
            return "reduction fusion"
        return "elementwise fusion"
    if opcode in ("dot", "custom-call", "reduce", "reduce-window", "select-and-scatter"):
        return opcode
    if opcode in ("copy", "transpose", "dynamic-slice", "dynamic-update-slice", "slice", "concatenate"):
        return "data movement"
    return "other"


def traced_events(run, directory: str) -> list[tuple[str, float]]:
    """(event name, seconds) of the XLA ops `run()` executed, from a profiler trace in `directory`."""
    with jax.profiler.trace(directory):
        run()
    paths = sorted(Path(directory).rglob("*.xplane.pb"))
    if not paths:
        raise RuntimeError(f"jax.profiler.trace wrote no .xplane.pb under {directory}")
    events = []
    for plane in jax.profiler.ProfileData.from_file(str(paths[-1])).planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                if event.duration_ns > 0 and not event.name.startswith(("ThreadpoolListener", "end: ")):
                    events.append((event.name, event.duration_ns / 1e9))
    return events


def profile_rows(events, instructions: dict, computations: dict, top: int) -> tuple[list[dict], float]:
    """Rows per kind (seconds, share, count) then the `top` slowest instructions; and the total."""
    by_kind, by_name, counts = collections.Counter(), collections.Counter(), collections.Counter()
    for name, seconds in events:
        # runtime wrappers (ThunkExecutor, ...) span the ops they run; control flow spans its bodies' ops
        if name not in instructions or instructions[name][0] in CONTROL_FLOW:
            continue
        kind = op_kind(name, instructions, computations)
        by_kind[kind] += seconds
        by_name[name] += seconds
        counts[kind] += 1
    total = sum(by_kind.values())
    rows = [
        {
            "row": "kind",
            "what": kind,
            "seconds": _rounded(s),
            "share": round(s / total, 3),
            "ops": counts[kind],
        }
        for kind, s in by_kind.most_common()
    ]
    for name, s in by_name.most_common(top):
        _, result, rest = instructions.get(name, ("", "", ""))
        what = f"{name}: {op_kind(name, instructions, computations)} -> {result.split('{')[0]}"
        window = re.search(r"window=\{[^}]*\}", rest)
        rows.append(
            {
                "row": "instruction",
                "what": what + (f" {window.group(0)}" if window else ""),
                "seconds": _rounded(s),
                "share": round(s / total, 3),
            }
        )
    return rows, total


def _rounded(seconds: float) -> float:
    return float(f"{seconds:.4g}")  # four significant digits: quick runs' ops take microseconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ipc", type=int, default=1)
    parser.add_argument("--model", default="ConvNet")
    add_real_set_arguments(parser)
    parser.add_argument("--top", type=int, default=12, help="slowest single instructions listed")
    add_output_arguments(
        parser, name="bench_profile", quick_help="smoke run: 8x8 images, width-8 net, 3 classes"
    )
    args = parser.parse_args(argv)
    if args.quick:
        use_quick_real_set(args)
        args.model, args.name = {"width": 8, "depth": 1}, args.name + "_quick"
    real = real_set_from_args(args)
    config = ml_collections.ConfigDict(
        {
            "devices": 0,
            "method": "dc",
            "dataset": "fashion_mnist",
            "model": args.model,
            "ipc": args.ipc,
            "init": "noise",
        }
    )
    config.seed, config.gm, config.conv = 0, gm.default_config(), conv.default_config()
    config.gm.update(outer_loop=1, num_nets=1, batch_real=args.batch_real)
    resolve_backend(config)  # the backend's choices, as a run's
    state = gm.init(config, real, jax.random.PRNGKey(0))
    step = gm.make_step(config, real)
    compiled = gm.outer_step.lower(*step.args, state, real).compile()
    instructions, computations = parse_hlo(compiled.as_text())
    run = lambda: jax.block_until_ready(compiled(state, real))
    run()  # the first call pays one-time costs the profile should not show
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        events = traced_events(run, directory)
        traced_s = time.perf_counter() - start
    rows, total = profile_rows(events, instructions, computations, args.top)
    notes = (
        f"One DC outer iteration (outer 1, K 1), IPC {args.ipc}, {args.model} on {args.classes} classes of "
        f"{args.shape.replace(',', 'x')} random images, batch_real {args.batch_real}, traced once after a "
        f"warm run: {total:.2f} s of XLA ops in a traced call of {traced_s:.2f} s. 'kind' rows sum the ops "
        "of each kind (a convolution's pass read from its JAX op name, weight or activation gradient from "
        "its window and shapes); 'instruction' rows are the slowest single instructions, summed over "
        "their executions (loops run them many times). Ops running at once on different threads make the "
        "sum exceed the call's wall time."
    )
    path = write_results(
        args.name, rows, columns=["row", "what", "seconds", "share", "ops"], notes=notes, out_dir=args.out_dir
    )
    for row in rows:
        print(row)
    print(path)


if __name__ == "__main__":
    main()
