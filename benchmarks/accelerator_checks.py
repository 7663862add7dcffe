"""The accelerator suite's checks (`benchmarks.accelerator`): the fast tests on the accelerator, what the
matmul precision changes, and the largest IPC that fits in 80 GB. Each is a part, `fn(ctx)` with the
`accelerator_parts.Context` of its process.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time

import jax
import numpy as np

from benchmarks import bench_matrix
from benchmarks.accelerator import ROOT
from benchmarks.bench_gradient_matching import Variant
from jaxdd.data.registry import dataset_info
from jaxdd.methods import distribution_matching as dm
from jaxdd.methods import gradient_matching as gm

# device invariance (this device against the CPU; the backends' loops against each other), gradient
# matching's correctness, one tiny run through the driver (checkpoint, export)
FULL_TESTS = [
    "tests/test_accelerator.py::test_the_accelerator_loops_give_the_cpu_loops_results",
    "tests/test_accelerator.py::test_this_device_computes_the_step_the_cpu_computes",
    "tests/test_gradient_matching.py::test_loss_and_pixel_gradient_vanish_when_synthetic_equals_real",
    "tests/test_gradient_matching.py::test_second_order_pixel_gradient_matches_central_differences",
    "tests/test_gradient_matching.py::test_the_stacked_gradient_of_the_outer_step_matches_central_differences",
    "tests/test_gradient_matching.py::test_k_stacked_networks_and_class_groupings_give_the_same_losses",
    "tests/test_evaluation.py::test_vmap_and_loop_train_the_same_networks",
    "tests/test_distribution_matching.py::test_two_iterations_through_the_driver",
]
QUICK_TESTS = [FULL_TESTS[2]]
OUTCOME = re.compile(r"^(tests/\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
LIMIT_BYTES = 80e9  # "80 GB": an 80 GB card, as its maker counts
# (method, dataset, class_chunk: classes per vmap group, None for DM, which has no grouping)
MEMORY_CASES = [
    ("dc", "cifar10", 10),
    ("dm", "cifar10", None),
    ("dc", "cifar100", 10),
    ("dm", "cifar100", None),
    ("dc", "cifar100", 1),
]


def tests_part(ctx) -> None:
    """`FULL_TESTS` (--quick: one of them) with pytest in a process of its own: counts by outcome."""
    nodes = QUICK_TESTS if ctx.quick else FULL_TESTS
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-v", *nodes]
    start, code, cut = time.time(), None, False
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=max(ctx.left() - 3, 1)
        )
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as error:
        output, cut = _text(error.stdout) + _text(error.stderr), True
    print(output[-30_000:], flush=True)
    outcomes = dict(m.groups() for m in map(OUTCOME.match, output.splitlines()) if m)
    count = lambda *kinds: sum(outcome in kinds for outcome in outcomes.values())
    if cut:
        status = f"failed: cut off after {time.time() - start:.0f} s, {len(outcomes)} tests done"
    elif code not in (0, 1):  # 1: some tests failed (counted); others: pytest itself could not run them
        status = f"failed: pytest exit status {code} (accelerator.log has its output)"
    else:
        status = "ok"
    ctx.emit(
        "fast subset",
        status=status,
        seconds=round(time.time() - start, 1),
        passed=count("PASSED"),
        failed=count("FAILED", "ERROR"),
        skipped=count("SKIPPED", "XFAIL", "XPASS"),
        not_passed=[node for node, outcome in outcomes.items() if outcome != "PASSED"],
        note=f"{len(nodes)} node ids: " + ", ".join(n.split("::")[-1] for n in nodes),
    )


def _text(output) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def precision_part(ctx) -> None:
    """DC IPC 1 at CIFAR-10 shapes compiled at JAX's default matmul precision (TF32 for float32 matmuls
    and convolutions on Ampere and later NVIDIA GPUs) and at 'highest' (full float32): the step's time and
    the cosine between their first pixel updates (SGD's first step from zero momentum: -lr_img × the
    pixel gradient), from the same state and key."""
    real = ctx.real("cifar10")
    config = bench_matrix.spec_config(ctx.spec("dc", "cifar10", 1), outer=1)
    results = {}
    for name in ("default", "highest"):
        if ctx.late(name, 15):
            return
        with jax.default_matmul_precision("highest") if name == "highest" else contextlib.nullcontext():
            variant = Variant(config, real, {})  # traced and compiled here: the precision is baked in
        state, metrics = variant.compiled(variant.state, variant.real)
        update = np.asarray(state.images - variant.state.images, np.float64).ravel()
        for _ in range(ctx.repeats):
            variant.run()
        results[name] = (min(variant.times), update, float(metrics["loss"]))
        ctx.emit(
            name,
            status="ok",
            seconds=round(results[name][0], 4),
            compile_s=round(variant.compile_s, 2),
            temp_mib=round(variant.temp_gb * 1024, 1),
            loss=results[name][2],
        )
    (default_s, default_update, default_loss), (highest_s, highest_update, highest_loss) = results.values()
    norms = np.linalg.norm(default_update) * np.linalg.norm(highest_update)
    ctx.emit(
        "highest against default",
        status="ok",
        ratio=round(highest_s / default_s, 3),
        pixel_gradient_cosine=float(default_update @ highest_update / norms),
        loss_rel_diff=abs(highest_loss - default_loss) / max(abs(highest_loss), 1e-12),
        note="ratio: 'highest' time over default; cosine of the two first pixel updates",
    )


def _program_bytes(ctx, method: str, dataset: str, ipc: int, chunk, real) -> float:
    """Bytes of the compiled outer step (outer 2, inner 1: the step's memory, not its length): XLA's
    arguments + outputs − aliased + temporaries + code (`memory_analysis`)."""
    overrides = {} if chunk is None else {"gm.class_chunk": chunk, "gm.class_loop": "map"}
    spec = ctx.spec(method, dataset, ipc, inner_loop=1, overrides=overrides)
    config = bench_matrix.spec_config(spec, outer=2)
    module = gm if method == "dc" else dm
    step = module.make_step(config, real, log=lambda _: None)
    state = module.init(config, real, jax.random.PRNGKey(0))
    memory = bench_matrix.Program(module.outer_step, step.args, (state, real), {}).compiled.memory_analysis()
    if memory is None:  # a backend without the analysis
        return float("nan")
    return float(
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
        + memory.generated_code_size_in_bytes
    )


def max_ipc_part(ctx) -> None:
    """The largest IPC whose DC / DM outer step fits in `LIMIT_BYTES`, per `MEMORY_CASES`: the compiled
    program's bytes at two IPCs (10 and 50) fitted as a line in the IPC, solved for the limit (at most
    the dataset's smallest class), and that IPC compiled to check it. Compiled only, never run; --quick:
    IPC 1 and 2, the first two cases."""
    low, high = (1, 2) if ctx.quick else (10, 50)
    reals = {}
    for method, dataset, chunk in MEMORY_CASES[:2] if ctx.quick else MEMORY_CASES:  # quick: DC and DM once
        label = f"{method} {dataset}" + ("" if chunk is None else f" class_chunk {chunk}")
        if ctx.late(label, 20):
            continue
        real = reals.setdefault(dataset, ctx.real(dataset))
        low_b, high_b = (_program_bytes(ctx, method, dataset, ipc, chunk, real) for ipc in (low, high))
        per_ipc = (high_b - low_b) / (high - low)
        cap = ctx.sizes(dataset)["per_class"] if ctx.quick else dataset_info(dataset).min_class_count
        predicted = int(low + (LIMIT_BYTES - low_b) / per_ipc) if per_ipc > 0 else cap
        largest = max(min(predicted, cap), 1)
        row = {"method": method, "dataset": dataset, "class_chunk": chunk, "predicted_ipc": predicted}
        row.update(ladder_gib={low: round(low_b / 2**30, 2), high: round(high_b / 2**30, 2)})
        row.update(value=largest, limited_by="80 GB" if predicted < cap else "the dataset's smallest class")
        if ctx.left() > 20 or ctx.quick:
            checked = _program_bytes(ctx, method, dataset, largest, chunk, real)
            row.update(checked_gib=round(checked / 2**30, 2), fits=bool(checked <= LIMIT_BYTES))
        ctx.emit(
            label, status="ok", **row, note=f"value: the largest IPC; a line through IPC {low} and {high}"
        )
