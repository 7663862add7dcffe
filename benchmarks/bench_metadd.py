"""Seconds per distillation iteration and peak temporary memory with the MetaDD regularizer on vs off.

  python -m benchmarks.bench_metadd [--method dc|dm] [--archs ConvNet,AlexNet,VGG11,ResNet18]
                                    [--balance fixed,ratio] [--terms both,var,ai] [--images-per-step 0,5]
                                    [--image-chunk 0,1] [--batch-real N] [--repeats 3] [--hook]
                                    [--note TEXT] [--suffix NAME] [--quick]

Fashion-MNIST shapes (28x28x1, 10 classes), random arrays standing in for the real set, IPC 1, the
reference ConvNet as the distillation network. --method dc (default): DC's reference iteration (outer 1,
inner 1, init noise, batch_real 64 unless told). --method dm: DM's iteration as configs/dm.py runs it on
Fashion-MNIST (init real, siamese DSA, batch_real 256 unless told) and as issue 16's study
configs/studies/metadd_dm_fashion_mnist.py regularises it. Each method's step is the library's own
(`make_step`'s `outer_step`, model and `Settings`), MetaDD's auxiliaries passed in `Hooks` as
`methods.base.bind_step` does. MetaDD variants: every --balance × --terms × --images-per-step ×
--image-chunk (`metadd.image_chunk`: the regularizer's gradient computed that many images at a time, 0 =
all at once); terms 'both'
(L_var and L_ai), 'var' (L_ai's weight 0) or 'ai' (L_var's weight 0), weights 1 ('fixed': λ) or 0.1
('ratio': the fraction of the base gradient's norm; `metadd.Options`' defaults). Auxiliary networks are
randomly initialised, not trained: speed and memory do not depend on their weights.

Each variant is compiled first (`lower().compile()`, compile_s, apart from the timings); `temp_mb` is
`compiled.memory_analysis().temp_size_in_bytes` (XLA's scratch memory of the step, its peak apart from
the arguments) and `memory_ratio` that over the base step's (DESIGN §4.6 asks for ≤ 1.3). The variants
then run alternating with the base step in one process (off, on₁, off, on₂, ..., --repeats rounds), so
a slow spell of a shared machine hits both sides: 'seconds' is each variant's best run, 'slowdown' its
best over the best of the base runs just before its own (as many as its), 'paired_slowdown' the median
over its runs of its time over the base run just before it. --hook: also, after those rounds, MetaDD's
hook alone and its forward alone (no pullback), each jitted apart on the step's images: best-of seconds
and temporary memory (where the extra cost lies).
--note: a sentence added to the results' notes. --quick: two auxiliary networks (ConvNet, AlexNet),
batch_real 8, 16 real images per class, one repeat, images_per_step 0 and 5, results under the `_quick`
name.
Results: benchmarks/results/bench_metadd[_dm][_SUFFIX][_quick].{json,md} (DC's name unchanged).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections

from benchmarks.common import stand_in_real, write_results
from jaxdd import metadd, metadd_gradient
from jaxdd.config import base_config, resolve_backend
from jaxdd.methods import distribution_matching as dm
from jaxdd.methods import gradient_matching as gm
from jaxdd.methods.base import Hooks
from jaxdd.models import get_model

SHAPE = (28, 28, 1)
NUM_CLASSES = 10
METHODS = {"dc": gm, "dm": dm}
BATCH_REAL = {"dc": 64, "dm": 256}  # DC: this benchmark's default since it was written; DM: the reference
TERMS = {"both": (1, 1), "var": (1, 0), "ai": (0, 1)}  # (L_var's, L_ai's) weight switched on
WEIGHTS = {"fixed": ("lambda_var", "lambda_ai", 1.0), "ratio": ("var_ratio", "ai_ratio", 0.1)}


def _config(batch_real: int, method: str = "dc") -> ml_collections.ConfigDict:
    config = base_config()
    if method == "dc":
        config.update(
            {"method": "dc", "dataset": "fashion_mnist", "model": "ConvNet", "ipc": 1, "init": "noise"}
        )
        config.gm.batch_real = batch_real
    else:  # configs/dm.py's settings (init real; dm.* at their reference defaults: siamese DSA)
        config.update(
            {"method": "dm", "dataset": "fashion_mnist", "model": "ConvNet", "ipc": 1, "init": "real"}
        )
        config.dm.batch_real = batch_real
    return resolve_backend(config)  # the backend's choices, as a run's


def _options(balance: str = "fixed", terms: str = "both", **options) -> dict:
    """`metadd.Options` keywords of a --balance and --terms choice."""
    var_key, ai_key, weight = WEIGHTS[balance]
    on_var, on_ai = TERMS[terms]
    return {"balance": balance, var_key: weight * on_var, ai_key: weight * on_ai, **options}


def _auxiliaries(
    archs, images_per_step: int, *, image_shape=SHAPE, num_classes: int = NUM_CLASSES, **options
) -> metadd.Auxiliaries:
    """Randomly initialised auxiliary networks of `archs` (names or ConvNet spec dicts) for images
    `image_shape` (H, W, C), 28x28x1 unless told; `options`: more `metadd.Options` keywords."""
    models = [get_model(a, num_classes=num_classes, image_shape=image_shape) for a in archs]
    x = jnp.zeros((1, *image_shape))
    variables = [dict(m.init(jax.random.PRNGKey(i), x, train=False)) for i, m in enumerate(models)]
    options = metadd.Options(images_per_step=images_per_step, **options)
    return metadd.make_auxiliaries(models, variables, image_shape, options)


def _temp_mb(compiled) -> float:
    memory = compiled.memory_analysis()
    return getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory is not None else 0.0


def _best_of(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # a first call apart
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


class Variant:
    """One compiled outer step of `method` (gradient_matching or distribution_matching; MetaDD on or off)
    and its timings."""

    def __init__(self, method, config, real, aux, label: str, **columns):
        self.label, self.real, self.aux, self.columns = label, real, aux, columns
        self.state = method.init(config, real, jax.random.PRNGKey(0))
        step = method.make_step(config, real)  # MetaDD off in `config`: (model, settings) and no hooks
        start = time.perf_counter()
        hooks = Hooks(metadd=aux)
        self.compiled = method.outer_step.lower(*step.args, self.state, real, hooks=hooks).compile()
        self.compile_s = time.perf_counter() - start
        self.temp_mb = _temp_mb(self.compiled)
        self.times: list[float] = []

    def run(self) -> float:
        start = time.perf_counter()
        state, metrics = self.compiled(self.state, self.real, hooks=Hooks(metadd=self.aux))
        jax.block_until_ready((state, metrics))
        self.times.append(time.perf_counter() - start)
        return self.times[-1]

    def hook_parts(self, repeats: int) -> dict:
        """MetaDD's hook alone on this state's images (`metadd.add_gradient`, a stand-in base gradient
        of ones) and its forward alone (`metadd_gradient.term_values`: the CAMs and logits, no pullback):
        best-of seconds and XLA temporary memory of each, compiled apart from the step."""
        images, labels, key = self.state.images, self.state.labels, self.state.step_key
        grad = jnp.ones_like(images)
        hook = jax.jit(lambda aux, x: metadd.add_gradient(aux, x, labels, key, grad))
        forward = jax.jit(lambda aux, x: metadd_gradient.term_values(aux, x, labels))
        hook, forward = (f.lower(self.aux, images).compile() for f in (hook, forward))
        return {
            "hook_s": _best_of(hook, self.aux, images, repeats=repeats),
            "hook_temp_mb": _temp_mb(hook),
            "forward_s": _best_of(forward, self.aux, images, repeats=repeats),
            "forward_temp_mb": _temp_mb(forward),
        }


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=tuple(METHODS), default="dc")
    parser.add_argument("--archs", default="ConvNet,AlexNet,VGG11,ResNet18")
    parser.add_argument("--balance", default="fixed", help="comma-separated: fixed, ratio")
    parser.add_argument("--terms", default="both", help="comma-separated: both, var (L_var only), ai")
    parser.add_argument("--images-per-step", default="0", help="comma-separated; 0 = all synthetic images")
    parser.add_argument("--image-chunk", default="0", help="comma-separated metadd.image_chunk; 0 = all")
    parser.add_argument("--suffix", default="", help="added to the results' name, e.g. 'chunk'")
    parser.add_argument("--batch-real", type=int, default=0, help="0 = the method's (dc 64, dm 256)")
    parser.add_argument("--per-class", type=int, default=256, help="random real images per class")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--hook", action="store_true", help="also time the MetaDD hook alone and its forward alone"
    )
    parser.add_argument(
        "--note", default="", help="a sentence for the results' notes (e.g. the machine's load)"
    )
    parser.add_argument("--out-dir", default="", help="results folder; '' = benchmarks/results")
    args = parser.parse_args(argv)
    if args.quick:
        args.archs, args.images_per_step, args.batch_real, args.per_class, args.repeats = (
            "ConvNet,AlexNet", "0,5", 8, 16, 1,
        )  # fmt: skip
    balances, term_sets = _split(args.balance), _split(args.terms)
    for name, values, valid in (("--balance", balances, WEIGHTS), ("--terms", term_sets, TERMS)):
        if not values or set(values) - set(valid):
            parser.error(f"{name}={','.join(values)!r}: comma-separated, from {', '.join(valid)}")
    archs = tuple(_split(args.archs))
    batch_real = args.batch_real or BATCH_REAL[args.method]
    real = stand_in_real(NUM_CLASSES, max(args.per_class, batch_real), SHAPE)
    config, method = _config(batch_real, args.method), METHODS[args.method]
    base = Variant(method, config, real, None, "off", balance="", terms="")
    variants = []
    for count in (int(c) for c in _split(args.images_per_step)):
        for chunk in (int(c) for c in _split(args.image_chunk)):
            for balance in balances:
                for terms in term_sets:
                    aux = _auxiliaries(archs, count, **_options(balance, terms), image_chunk=chunk)
                    label = f"on (images_per_step={count}, image_chunk={chunk})"
                    variants.append(Variant(method, config, real, aux, label, balance=balance, terms=terms))
    pairs: dict[int, list[tuple[float, float]]] = {id(v): [] for v in variants}
    for _ in range(args.repeats):
        for variant in variants:  # off, on, off, on, ...: each on run next to a base run
            off = base.run()
            pairs[id(variant)].append((off, variant.run()))
    parts = {id(v): v.hook_parts(args.repeats) for v in variants} if args.hook else {}
    rows = []
    for v in (base, *variants):
        seconds = min(v.times)
        own = pairs.get(id(v), [(t, t) for t in v.times])  # (the base run before it, its run)
        rows.append(
            {
                "metadd": v.label,
                "balance": v.columns["balance"],
                "terms": v.columns["terms"],
                "aux_archs": "" if v.aux is None else ",".join(archs),
                "seconds": seconds,
                "slowdown": seconds / min(off for off, _ in own),
                "paired_slowdown": statistics.median(on / off for off, on in own),
                "temp_mb": v.temp_mb,
                "memory_ratio": v.temp_mb / base.temp_mb if base.temp_mb else float("nan"),
                "compile_s": v.compile_s,
                "runs": len(v.times),
                **parts.get(id(v), {}),
            }
        )
        print(rows[-1], flush=True)
    name = "bench_metadd" + ("" if args.method == "dc" else f"_{args.method}")
    name += (f"_{args.suffix}" if args.suffix else "") + ("_quick" if args.quick else "")
    if args.method == "dc":
        what = "DC (outer 1, inner 1, init noise)"
    else:
        strategy = dm.settings_from_config(config, min_class_count=batch_real).strategy
        what = f"DM (init real, siamese DSA {strategy or 'none'})"
    notes = (
        f"{what}, IPC 1, Fashion-MNIST shapes, batch_real {batch_real}, ConvNet; best of {args.repeats} "
        "alternating with the base step in one run (the base ran before every MetaDD run: 'runs'; "
        "slowdown: best over the best of the base runs paired with the variant's). "
        "Weights: fixed λ = 1, ratio r = 0.1 of the base gradient's norm; terms 'var' / 'ai' set the other "
        "term's weight to 0. Auxiliary networks randomly initialised (speed and memory do not depend on "
        "their weights)."
    )
    if args.note:
        notes += " " + args.note
    columns = ["metadd", "balance", "terms", "aux_archs", "seconds", "slowdown", "paired_slowdown"]
    columns += ["temp_mb", "memory_ratio", "compile_s", "runs"]
    if args.hook:
        columns += ["hook_s", "hook_temp_mb", "forward_s", "forward_temp_mb"]
        notes += (
            " hook_s, hook_temp_mb: MetaDD's hook alone (`metadd.add_gradient` on the step's images: the "
            "auxiliaries' forward, Grad-CAMs and one pullback per term), jitted apart; forward_*: its "
            "forward alone (`metadd_gradient.term_values`, no pullback)."
        )
    print(write_results(name, rows, columns=columns, notes=notes, out_dir=args.out_dir or None))


if __name__ == "__main__":
    main()
