"""The parts of the accelerator suite (`benchmarks.accelerator`): what each measures, at which shapes.

A part is `fn(ctx)`, run in a process of its own; `ctx.emit` appends each row to the results at once and
`ctx.late` skips, with the reason, what no longer fits before the part's deadline. The measuring code is
the other benchmarks' (`bench_matrix`'s worker processes and compiled programs, `bench_gradient_matching`'s
variants, `bench_torch_dc`, `bench_mtt`); the parts choose shapes and variants.

Shapes: CIFAR-10 (32x32x3, 10 classes, 5,000 random images per class standing in for the real set; speed
and memory do not depend on the pixels), CIFAR-100 (100 classes, 500 per class), Tiny ImageNet (64x64x3,
200 classes); batch_real 256; the reference ConvNet; each method's recipe settings and the backend's
defaults (`gradient_matching.BACKEND_DEFAULTS`). --quick: 8x8x3 images, 3 or 4 classes of 64 or 16, batch_real
8, width-8 depth-1 networks, one run, XLA optimisations off. The checks (tests, precision, memory) are in
`accelerator_checks`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import accelerator_checks as checks
from benchmarks import bench_matrix, bench_mtt
from benchmarks.accelerator import ROOT, append_row, read_rows
from benchmarks.bench_gradient_matching import Variant
from benchmarks.common import machine, stand_in_real
from jaxdd.eval_settings import EvalProtocol
from jaxdd.evaluation import evaluate_model
from jaxdd.methods import mtt
from jaxdd.models import get_model
from jaxdd.recipe import load_recipe

# name: (image shape, classes, real images per class) at full size and in --quick
DATASETS = {"cifar10": ((32, 32, 3), 10, 5000), "cifar100": ((32, 32, 3), 100, 500)}
DATASETS["tiny_imagenet"] = ((64, 64, 3), 200, 2)  # SRe2L's recover never reads the real images
QUICK = {"cifar10": ((8, 8, 3), 3, 64), "cifar100": ((8, 8, 3), 4, 16), "tiny_imagenet": ((8, 8, 3), 3, 2)}
TINY = {"width": 8, "depth": 1}


@dataclasses.dataclass
class Context:
    """One part's run: where its rows go, its deadline (time.time()), quick or accelerator sizes."""

    part: str
    out: Path
    quick: bool
    deadline: float

    def left(self) -> float:
        return self.deadline - time.time()

    def emit(self, variant: str, **row) -> dict:
        """Appends {part, variant, **row} to the results now (a part cut off later keeps it)."""
        row = {"part": self.part, "variant": variant, **{k: v for k, v in row.items() if k != "machine"}}
        append_row(self.out, row)
        print("row", row, flush=True)
        return row

    def late(self, variant: str, need_s: float) -> bool:
        """True, with a 'skipped' row, when less than `need_s` (accelerator sizes; 1 s in --quick)
        remains before the part's deadline."""
        need_s = 1.0 if self.quick else need_s
        if self.left() >= need_s:
            return False
        self.emit(
            variant,
            status=f"skipped: {max(self.left(), 0):.0f} s left of the part's budget, {need_s:g} needed",
        )
        return True

    def rows(self) -> list[dict]:
        return read_rows(self.out)

    def sizes(self, dataset: str) -> dict:
        shape, classes, per_class = (QUICK if self.quick else DATASETS)[dataset]
        return {"dataset": dataset, "shape": list(shape), "classes": classes, "per_class": per_class}

    def real(self, dataset: str):
        s = self.sizes(dataset)
        return stand_in_real(s["classes"], s["per_class"], tuple(s["shape"]), dataset=dataset)

    def model(self, name: str = "ConvNet", *, batch_norm: bool = False):
        return name if not self.quick else {**TINY, **({"norm": "batchnorm"} if batch_norm else {})}

    @property
    def batch_real(self) -> int:
        return 8 if self.quick else 256

    @property
    def repeats(self) -> int:
        return 1 if self.quick else 2

    def spec(self, method: str, dataset: str, ipc: int, **extra) -> dict:
        """A `bench_matrix` variant (its worker's input) at this part's sizes."""
        archs = [self.model(a) for a in ("ConvNet", "AlexNet", "VGG11", "ResNet18")]
        spec = {**self.sizes(dataset), "batch_real": self.batch_real, "repeats": self.repeats}
        spec.update(model=self.model(), teacher=self.model("ConvNetBN", batch_norm=True), outers="1,2")
        spec.update(metadd_archs=archs if not self.quick else [TINY, {**TINY, "norm": "batchnorm"}])
        return {**spec, "quick": self.quick, "method": method, "ipc": ipc, "K": 1, "devices": 1, **extra}

    def measure_alone(self, spec: dict) -> dict:
        """`bench_matrix.measure(spec)` in a fresh process (its peak memory its own); in --quick in this
        one (a CPU smoke run: the worker path is bench_matrix's own, tested with it)."""
        if self.quick:
            return bench_matrix.measure(spec)
        return bench_matrix.run_worker(spec, max(self.left(), 1.0))


def recipe(method: str, arg: str):
    """The locked config of configs/<method>.py:<arg> (a recipe's settings, read, never run)."""
    return load_recipe(f"{ROOT / 'configs' / method}.py:{arg}")


# ---- the parts ----


def machine_part(ctx: Context) -> None:
    """The machine, its device memory and the matmul precision in force."""
    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    ctx.emit(
        "machine",
        status="ok",
        info=machine(),  # the results' machine (`emit` drops the other benchmarks' "machine")
        memory_limit_gib=limit and round(limit / 2**30, 1),
        matmul_precision=str(jax.config.jax_default_matmul_precision),
    )


def methods_part(ctx: Context, ipcs=(10, 1)) -> None:
    """DC, DSA and DM one outer iteration at CIFAR-10 shapes per IPC, each variant in its own process;
    extrapolated_s: the recipe's whole distillation (its iterations × the iteration). --quick: the first
    IPC only."""
    for ipc in ipcs[:1] if ctx.quick else ipcs:
        for method in ("dc", "dm", "dsa"):
            variant = f"{method} ipc {ipc}"
            if ctx.late(variant, 25):
                continue
            row = ctx.measure_alone(ctx.spec(method, "cifar10", ipc))
            iterations = recipe(method, f"dataset=cifar10,ipc={ipc}").iterations
            if row.get("status") == "ok":
                row.update(extrapolated_s=round(row["seconds"] * iterations, 1))
                row["note"] = (
                    f"extrapolated_s: {iterations} iterations (configs/{method}.py); {row['timing']}"
                )
            ctx.emit(variant, method=method, ipc=ipc, **row)


def gm_variants(ctx: Context, dataset: str, ipc: int, outer: int, variants) -> None:
    """DC outer steps of `outer` matches at `dataset` shapes, one `(label, K, gm overrides)` per
    variant, compiled and timed in turn in this process; ratio: over the first variant's time."""
    real, first = ctx.real(dataset), None
    for label, k, overrides in variants:
        if ctx.late(label, 20):
            continue
        config = bench_matrix.spec_config(ctx.spec("dc", dataset, ipc, K=k), outer=outer)
        config.gm.update(overrides)
        try:
            variant = Variant(config, real, {})
            for _ in range(ctx.repeats):
                variant.run()
        except Exception as error:  # e.g. out of memory while compiling: the other variants still run
            ctx.emit(label, status=f"failed: {str(error).splitlines()[0][:160]}")
            continue
        if variant.error:
            ctx.emit(label, status=f"failed: {variant.error}")
            continue
        seconds = min(variant.times)
        first = first or seconds
        settings = {key: config.gm[key] for key in ("parallel", "class_chunk", "class_loop")}
        ctx.emit(
            label,
            status="ok",
            K=k,
            ipc=ipc,
            outer=outer,
            **settings,
            seconds=round(seconds, 4),
            compile_s=round(variant.compile_s, 2),
            temp_mib=round(variant.temp_gb * 1024, 1),
            ratio=round(seconds / first, 3),
            note=f"ratio: over '{variants[0][0]}'",
        )


def nets_part(ctx: Context) -> None:
    """K networks per iteration, vmapped against a loop: DC CIFAR-10 IPC 10, outer 2 (two matches and
    one 50-epoch inner training of each network)."""
    counts = (2,) if ctx.quick else (8, 4)
    variants = [("K 1", 1, {})]
    variants += [(f"K {k} {p}", k, {"parallel": p}) for k in counts for p in ("vmap", "loop")]
    gm_variants(ctx, "cifar10", 10, 2, variants)


def classes_part(ctx: Context) -> None:
    """Classes vmapped in groups of 10, 1 and all (lax.map over the groups): DC CIFAR-100 IPC 1."""
    group = 2 if ctx.quick else 10
    chunks = [(group, f"class_chunk {group}"), (1, "class_chunk 1"), (0, "class_chunk 0 (all)")]
    gm_variants(
        ctx, "cifar100", 1, 1, [(label, 1, {"class_chunk": c, "class_loop": "map"}) for c, label in chunks]
    )


def eval_part(ctx: Context) -> None:
    """N ConvNets trained on an IPC-10 CIFAR-10-shaped set (300 epochs) and tested on 10,000 images:
    vmapped (one program, compile_s = first run − second) against a loop (one network per call: a few
    networks timed, the time per network × N)."""
    shape, classes, _ = (QUICK if ctx.quick else DATASETS)["cifar10"]
    counts, epochs, test, timed = ((4, 2), 2, 200, 1) if ctx.quick else ((100, 10), 300, 10_000, 2)
    rng = np.random.default_rng(0)
    data = (
        jnp.asarray(rng.normal(size=(10 * classes, *shape)), jnp.float32),
        jnp.repeat(jnp.arange(classes, dtype=jnp.int32), 10),
        jnp.asarray(rng.normal(size=(test, *shape)), jnp.float32),
        jnp.asarray(rng.integers(0, classes, test), jnp.int32),
    )
    model = get_model(ctx.model(), num_classes=classes, image_shape=shape)
    protocol = EvalProtocol(epochs=epochs)

    def seconds(nets: int, parallel: str) -> float:
        start = time.perf_counter()
        evaluate_model(
            model, protocol, jax.random.split(jax.random.PRNGKey(0), nets), *data, parallel=parallel
        )
        return time.perf_counter() - start

    common = {"epochs": epochs, "test_images": test, "ipc": 10}
    vmapped, loop = {}, None  # loop: (seconds per network, its compile seconds), timed once
    for nets in counts:
        if not ctx.late(f"vmap, {nets} nets", 20):
            first = seconds(nets, "vmap")
            again = ctx.left() > 2 * first  # time for a run apart from the compiling one
            vmapped[nets] = seconds(nets, "vmap") if again else first
            ctx.emit(
                f"vmap, {nets} nets",
                status="ok",
                nets=nets,
                **common,
                seconds=round(vmapped[nets], 2),
                compile_s=round(first - vmapped[nets], 2) if again else None,
                peak_mib=_peak_mib(),
                note="one run after the compiling one" if again else "one run, compilation included",
            )
        if loop is None and not ctx.late(f"loop, {nets} nets", 20):
            first = seconds(1, "loop")  # compiles the one program every network runs
            per_net = seconds(timed, "loop") / timed
            loop = per_net, first - per_net
        if loop is not None:
            ratio = round(loop[0] * nets / vmapped[nets], 2) if nets in vmapped else None
            ctx.emit(
                f"loop, {nets} nets",
                status="ok",
                nets=nets,
                **common,
                seconds=round(loop[0] * nets, 2),
                compile_s=round(loop[1], 2),
                ratio=ratio,
                timing=f"{timed} network(s) timed, x {nets}",
                note="extrapolated: seconds per network x N; ratio: loop over vmap (> 1: vmap faster)",
            )


def _peak_mib() -> float:
    return round(bench_matrix.peak_memory()[0], 1)


def metadd_part(ctx: Context) -> None:
    """DC IPC 10 with MetaDD (ConvNet, AlexNet, VGG11, ResNet18 auxiliaries) against without, each in its
    own process; without: the methods part's row when it has one."""
    off = next((r for r in ctx.rows() if r["part"] == "methods" and r["variant"] == "dc ipc 10"), None)
    if off is None or off.get("status") != "ok":
        off = ctx.emit("dc ipc 10 (MetaDD off)", **ctx.measure_alone(ctx.spec("dc", "cifar10", 10)))
    if off.get("status") != "ok" or ctx.late("dc ipc 10 + MetaDD", 40):
        return
    on = ctx.measure_alone(ctx.spec("dc_metadd", "cifar10", 10))
    if on.get("status") == "ok":
        on.update(
            ratio=round(on["seconds"] / off["seconds"], 3),
            memory_ratio=round(on["peak_mib"] / off["peak_mib"], 3),
        )
        on["note"] = f"ratio, memory_ratio: time and peak memory over DC without MetaDD ({off['variant']})"
    ctx.emit("dc ipc 10 + MetaDD", **on)


def torch_part(ctx: Context) -> None:
    """bench_torch_dc at CIFAR-10 shapes on the GPU (PyTorch eager, where torch imports; its rows say
    so where not), IPC 1 then 10 (outer 1 and 2), each written before the next starts."""
    from benchmarks import bench_torch_dc  # imports torch: only in this part's process

    shape, classes, per_class = (QUICK if ctx.quick else DATASETS)["cifar10"]
    for ipc in (1, 10):
        if ctx.late(f"ipc {ipc}", 30):
            continue
        folder = Path(tempfile.mkdtemp())
        argv = [f"--ipc={ipc}", f"--shape={','.join(map(str, shape))}", f"--classes={classes}"]
        argv += [f"--per-class={per_class}", f"--batch-real={ctx.batch_real}", f"--repeats={ctx.repeats}"]
        argv += ["--torch-device=auto", f"--out-dir={folder}", "--name=torch_dc"]
        bench_torch_dc.main(argv + (["--quick"] if ctx.quick else []))
        result = json.loads(next(folder.glob("torch_dc*.json")).read_text())
        for row in result["rows"]:
            status = row.pop("seconds") if isinstance(row.get("seconds"), str) else "ok"
            ctx.emit(
                f"{row['framework']} ipc {row['ipc']} outer {row['outer']}",
                status=status,
                **row,
                ratio=row.get("jaxdd_over_torch"),
                note="ratio: jaxdd over torch (< 1: jaxdd faster)",
            )


def sre2l_part(ctx: Context) -> None:
    """SRe2L's recover step at Tiny ImageNet shapes, IPC 50, ResNet18BN teacher, one image per class
    per batch (configs/sre2l.py's Tiny ImageNet row), in its own process."""
    ipc = 2 if ctx.quick else 50
    config = recipe("sre2l", f"dataset=tiny_imagenet,ipc={ipc}")
    teacher = ctx.model(config.model, batch_norm=True)
    overrides = {"sre2l.batch_ipc": config.sre2l.batch_ipc}
    row = ctx.measure_alone(ctx.spec("sre2l", "tiny_imagenet", ipc, teacher=teacher, overrides=overrides))
    if row.get("status") == "ok":
        row.update(extrapolated_s=round(row["seconds"] * config.iterations, 1))
        row["note"] = f"extrapolated_s: {config.iterations} recover iterations"
    ctx.emit(f"sre2l ipc {ipc} ({config.model})", **row)


def mtt_part(ctx: Context) -> None:
    """One MTT iteration at CIFAR-10 IPC 10 with configs/mtt.py's settings (a stand-in expert buffer:
    random parameters of the right shapes), `bench_mtt.measure`."""
    config = recipe("mtt", "dataset=cifar10,ipc=10")
    shape, classes, _ = (QUICK if ctx.quick else DATASETS)["cifar10"]
    settings = mtt.settings_from_config(config, num_images=classes * 10)
    if ctx.quick:
        settings = dataclasses.replace(settings, syn_steps=2, max_start_epoch=1)
    model = get_model(ctx.model(config.model), num_classes=classes, image_shape=shape)
    row = bench_mtt.measure(model, shape, classes, 10, settings, ctx.repeats)
    ctx.emit(
        "mtt ipc 10",
        status="ok",
        **row,
        extrapolated_s=round(row["seconds"] * config.iterations, 1),
        note=f"syn_steps {settings.syn_steps}, remat {settings.remat}; extrapolated_s: "
        f"{config.iterations} iterations",
    )


@dataclasses.dataclass(frozen=True)
class Part:
    fn: Callable[[Context], None]
    budget_s: float  # the most it may take on one H100/H200-class GPU
    what: str
    env: dict = dataclasses.field(default_factory=dict)  # for its process (XLA_FLAGS add to the caller's)


PARTS = {
    "machine": Part(machine_part, 40, "the machine, device memory, matmul precision"),
    "methods": Part(methods_part, 120, "DC, DM, DSA one iteration at CIFAR-10 IPC 10 and 1"),
    "nets": Part(nets_part, 70, "K = 1, 8, 4 networks, vmap against a loop"),
    "classes": Part(classes_part, 45, "CIFAR-100 classes in groups of 10, 1, all"),
    "eval": Part(eval_part, 60, "10 and 100 ConvNets evaluated, vmap against a loop"),
    "tests": Part(checks.tests_part, 75, "the fast test subset on the accelerator"),
    "precision": Part(checks.precision_part, 35, "DC IPC 1 at default against 'highest' precision"),
    "metadd": Part(metadd_part, 60, "MetaDD on against off, DC IPC 10"),
    "torch": Part(torch_part, 60, "the DC step in PyTorch eager", {"XLA_PYTHON_CLIENT_MEM_FRACTION": ".5"}),
    "sre2l": Part(sre2l_part, 45, "SRe2L recover at Tiny ImageNet shapes, ResNet18BN"),
    "mtt": Part(mtt_part, 45, "MTT one iteration at CIFAR-10 IPC 10"),
    "methods_ipc50": Part(functools.partial(methods_part, ipcs=(50,)), 80, "DC, DM, DSA at IPC 50"),
    # compile only: the autotuner's trials change no memory figure worth their time
    "max_ipc": Part(
        checks.max_ipc_part, 60, "the largest IPC in 80 GB", {"XLA_FLAGS": "--xla_gpu_autotune_level=0"}
    ),
}


def run(name: str, *, out: Path, quick: bool, deadline: float) -> None:
    """Part `name` in this process, its rows appended to out/rows.jsonl."""
    if quick:
        jax.config.update("jax_disable_most_optimizations", True)  # compilation dominates a smoke run
    PARTS[name].fn(Context(name, out, quick, deadline))
