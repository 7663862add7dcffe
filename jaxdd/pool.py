"""The model pool: which architecture the networks of each outer iteration are (DESIGN §4.4).

Paper: "Improve Cross-Architecture Generalization on Dataset Distillation" (the model-pool paper). A pool is
a list of (architecture spec, probability). Outer iteration t draws one architecture with those
probabilities from `fold_in(fold_in(key, t), POOL_STREAM)` (key: the run's distillation key), and all K
networks of that iteration use it, so a resumed run draws the same sequence as an uninterrupted one.

The draw is on the host, a pure function of (key, step): `pooled_step` turns a method's
`build(spec) -> step(state, real)` into one step that looks up the iteration's architecture and calls that
architecture's step, built (and compiled) once per run. The hook is method-agnostic: any method whose
step is a function of (state, real) with `state.key` and `state.step` can use it; every method reaches
it through `methods.base.bind_step`.

Presets (the first entry is the main model, `config.model`):
- `main_similar`: main 0.9; 0.1 spread evenly over ConvNets whose activation, norm and pooling are drawn
  uniformly from SIMILAR_ACTS × SIMILAR_NORMS × SIMILAR_POOLS (width of the main model, depth
  `pool.similar_depth`, 0: the main model's). A variant equal to the main model adds to its probability.
- `main_others`: main 0.9; LeNet, AlexNet, VGG11 0.1/3 each.
- `uniform`: main, LeNet, AlexNet, VGG11 at 0.25 each.
- `custom`: `pool.custom`, e.g. 'ConvNet:0.5,AlexNet:0.5' (registry names; 'main' is `config.model`).

Scale-safe steps (`pool.scale='main'`): a loss whose scale depends on the network (DM's squared
embedding distance: its pixel-gradient norm is 10-60x the main ConvNet's on max-pooling variants and 0.05x
on sigmoid ones, Fashion-MNIST IPC 1) lets one drawn architecture move the set far more than the main
model does. With 'main', an iteration that draws another architecture first runs the main model's step
on the same state (its result is discarded) and rescales its own base pixel gradient to that norm
(`methods.base.Hooks.grad_norm`): the direction is the drawn network's, the step size the main model's.
It costs one more step on those iterations (about 10% with `main_similar`), and needs no state.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdd.config_lists import split_names
from jaxdd.errors import UserError, is_finite_number, require_int
from jaxdd.models import check_input_shape
from jaxdd.models.convnet import ConvNetSpec
from jaxdd.models.registry import CONVNETS, MODELS

# Mixed into each iteration's key so the pool's draw never reuses a key the method derives from
# fold_in(key, step) by split (a large constant: no counter of a split equals it). "pool" in ASCII.
POOL_STREAM = 0x706F6F6C
SIMILAR_ACTS = ("relu", "sigmoid", "leakyrelu", "swish")
SIMILAR_NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm")
SIMILAR_POOLS = ("avgpool", "maxpool")
SCALES = ("none", "main")
OTHERS = ("LeNet", "AlexNet", "VGG11")
PRESETS = ("main_similar", "main_others", "uniform", "custom")
MAIN_PROBABILITY = 0.9
PROBABILITY_TOLERANCE = 1e-6

Arch = str | ConvNetSpec  # hashable: a registry name or a ConvNet spec
StepFn = Callable  # step(state, real) -> (state, metrics)


def default_config() -> ml_collections.ConfigDict:
    """The `config.pool` defaults: no pool (every iteration uses `config.model`)."""
    return ml_collections.ConfigDict(
        {
            "preset": "",  # '' (no pool) | 'main_similar' | 'main_others' | 'uniform' | 'custom'
            "custom": "",  # preset 'custom': 'NAME:P,NAME:P' (registry names; 'main' = config.model)
            "similar_depth": 0,  # main_similar: depth of the similar ConvNets; 0 = the main model's
            "warmup": 0,  # the first `warmup` iterations use the main model only (released code: 500)
            # 'none' | 'main': on an iteration that draws another architecture, rescale the pixel gradient
            # to the norm the main model's has at the same iteration (for losses whose scale depends on
            # the network, e.g. DM's squared distance; DC's cosine distance is scale-free)
            "scale": "none",
        }
    )


@dataclasses.dataclass(frozen=True)
class Pool:
    """Architectures, their probabilities (summing to 1) and the warm-up on the first (main) one.

    `labels` are short names for logs; `archs[0]` is the main model.
    """

    archs: tuple[Arch, ...]
    probs: tuple[float, ...]
    labels: tuple[str, ...]
    warmup: int = 0

    def index_at(self, key: jax.Array, step: int) -> int:
        """The index of iteration `step`'s architecture (host int; a pure function of key and step)."""
        return int(draw_indices(self, key, np.asarray([step]))[0])

    def arch_at(self, key: jax.Array, step: int) -> Arch:
        """Iteration `step`'s architecture spec."""
        return self.archs[self.index_at(key, step)]


def draw_indices(pool: Pool, key: jax.Array, steps: np.ndarray) -> np.ndarray:
    """Architecture indices [S] of iterations `steps` [S] (int); index 0 during the warm-up."""
    log_probs = np.log(np.asarray(pool.probs, np.float32))
    return np.asarray(_draw(key, jnp.asarray(steps, jnp.int32), log_probs, pool.warmup))


@jax.jit
def _draw(key: jax.Array, steps: jax.Array, log_probs: jax.Array, warmup: jax.Array) -> jax.Array:
    def one(step):
        step_key = jax.random.fold_in(jax.random.fold_in(key, step), POOL_STREAM)
        return jnp.where(step < warmup, 0, jax.random.categorical(step_key, log_probs))

    return jax.vmap(one)(steps)


# ---- building a pool from the config ----


def main_arch(config: ml_collections.ConfigDict) -> Arch:
    """`config.model` as a hashable spec: a registry name, or a ConvNetSpec for a dict."""
    model = config.model
    if isinstance(model, str):
        return model
    model = model.to_dict() if isinstance(model, ml_collections.ConfigDict) else dict(model)
    return ConvNetSpec.from_dict(model)


def _main_convnet(main: Arch, preset: str) -> ConvNetSpec:
    if isinstance(main, ConvNetSpec):
        return main
    if main in CONVNETS:
        return CONVNETS[main]
    raise UserError(
        f"pool.preset={preset!r} varies a ConvNet, but model={main!r} is not one: use a ConvNet "
        "(--config.model=ConvNet) or --config.pool.preset=main_others / custom."
    )


def similar_convnets(main: ConvNetSpec, depth: int = 0) -> tuple[ConvNetSpec, ...]:
    """The 32 ConvNets of `main_similar`: every (act, norm, pool), main's width, `depth` (0: main's)."""
    return tuple(
        ConvNetSpec(width=main.width, depth=depth or main.depth, act=act, norm=norm, pool=pool)
        for act, norm, pool in itertools.product(SIMILAR_ACTS, SIMILAR_NORMS, SIMILAR_POOLS)
    )


def label(arch: Arch) -> str:
    """A short name: a registry name itself, a ConvNetSpec as 'ConvNet(w,d,act,norm,pool)'."""
    if isinstance(arch, str):
        return arch
    return f"ConvNet({arch.width},{arch.depth},{arch.act},{arch.norm},{arch.pool})"


def parse_custom(text: str, main: Arch) -> list[tuple[Arch, float]]:
    """'ConvNet:0.5,AlexNet:0.5' -> [('ConvNet', 0.5), ('AlexNet', 0.5)]; 'main' is `main`."""
    entries = []
    for item in split_names(text, key="pool.custom"):
        name, sep, value = item.rpartition(":")
        try:
            probability = float(value) if sep else math.nan
        except ValueError:
            probability = math.nan
        if not sep or not name.strip() or math.isnan(probability):
            raise UserError(
                f"pool.custom has {item!r}; write NAME:PROBABILITY items separated by commas, e.g. "
                "--config.pool.custom='ConvNet:0.5,AlexNet:0.5'."
            )
        name = name.strip()
        if name != "main" and name not in MODELS:
            raise UserError(
                f"pool.custom names an unknown architecture {name!r}; valid: main (config.model), "
                f"{', '.join(MODELS)}."
            )
        entries.append((main if name == "main" else name, probability))
    return entries


def preset_entries(pool_config: ml_collections.ConfigDict, main: Arch) -> list[tuple[Arch, float]]:
    """The (arch, probability) list of `pool_config.preset`, before duplicates are merged."""
    preset = pool_config.preset
    if preset == "main_similar":
        similar = similar_convnets(_main_convnet(main, preset), pool_config.similar_depth)
        rest = (1 - MAIN_PROBABILITY) / len(similar)
        return [(main, MAIN_PROBABILITY), *((arch, rest) for arch in similar)]
    if preset == "main_others":
        rest = (1 - MAIN_PROBABILITY) / len(OTHERS)
        return [(main, MAIN_PROBABILITY), *((arch, rest) for arch in OTHERS)]
    if preset == "uniform":
        archs = (main, *OTHERS)
        return [(arch, 1 / len(archs)) for arch in archs]
    if preset == "custom":
        if not pool_config.custom:
            raise UserError(
                "pool.preset='custom' needs pool.custom, e.g. --config.pool.custom='ConvNet:0.5,AlexNet:0.5'."
            )
        return parse_custom(pool_config.custom, main)
    raise UserError(f"pool.preset={preset!r} is not one of '' (no pool), {', '.join(PRESETS)}.")


def _canonical(arch: Arch) -> Arch:
    """ConvNet registry names as their spec, so 'ConvNet' and the default ConvNetSpec are one entry."""
    return CONVNETS.get(arch, arch) if isinstance(arch, str) else arch


def merge(entries: list[tuple[Arch, float]]) -> list[tuple[Arch, float]]:
    """Sums the probabilities of entries naming the same network (first occurrence keeps its place)."""
    merged: dict[Arch, tuple[Arch, float]] = {}
    for arch, probability in entries:
        key = _canonical(arch)
        first, total = merged.get(key, (arch, 0.0))
        merged[key] = (first, total + probability)
    return list(merged.values())


def pool_from_config(config: ml_collections.ConfigDict) -> Pool | None:
    """The run's pool, or None without `config.pool.preset` (or without a `pool` section)."""
    pool_config = config.get("pool")
    if pool_config is None or not pool_config.preset:
        return None
    entries = merge(preset_entries(pool_config, main_arch(config)))
    for arch, probability in entries:
        if not (is_finite_number(probability) and probability > 0):
            raise UserError(
                f"pool gives {label(arch)} probability {probability!r}; every probability must be > 0 and "
                "finite (drop the architecture instead)."
            )
    total = sum(p for _, p in entries)
    if abs(total - 1) > PROBABILITY_TOLERANCE:
        raise UserError(
            f"pool probabilities sum to {total:.6g}, not 1 ({pool_config.custom!r}): make them add up to 1, "
            "e.g. --config.pool.custom='ConvNet:0.5,AlexNet:0.5'."
        )
    return Pool(
        archs=tuple(a for a, _ in entries),
        probs=tuple(p / total for _, p in entries),
        labels=tuple(label(a) for a, _ in entries),
        warmup=pool_config.warmup,
    )


# ---- the step ----


class PooledStep:
    """`step(state, real) -> (state, metrics)` over a pool: draws the iteration's architecture from
    (state.key, state.step) and calls its step, built by `build(arch)` on first use and kept; with
    `scale_to_main`, another architecture's step gets the main model's gradient norm of the same
    iteration (`hooks.replace(grad_norm=...)`, the built steps' `hooks=` argument overridden).

    Reading `state.step` waits for the previous iteration (one host sync per iteration; each iteration
    is one long program, so nothing is lost). Metrics gain 'pool_arch', the pool index drawn, and with
    `scale_to_main` 'grad_scale' (1 on the main model's iterations).
    """

    def __init__(self, pool: Pool, build: Callable[[Arch], StepFn], *, scale_to_main: bool = False):
        self.pool = pool
        self._build = build
        self.scale_to_main = scale_to_main
        self.steps: dict[int, StepFn] = {}

    def step_for(self, index: int) -> StepFn:
        """The step of `pool.archs[index]`, built once."""
        if index not in self.steps:
            self.steps[index] = self._build(self.pool.archs[index])
        return self.steps[index]

    def __call__(self, state, real):
        index = self.pool.index_at(state.key, int(state.step))
        step = self.step_for(index)
        if not self.scale_to_main:
            state, metrics = step(state, real)
        elif index == 0:
            state, metrics = step(state, real)
            metrics = {**metrics, "grad_scale": np.float32(1)}
        else:
            main = self.step_for(0)
            _, main_metrics = main(state, real)
            hooks = main.keywords["hooks"].replace(grad_norm=main_metrics["grad_norm"])
            state, metrics = step(state, real, hooks=hooks)
        return state, {**metrics, "pool_arch": np.float32(index)}


def pooled_step(config: ml_collections.ConfigDict, build: Callable[[Arch], StepFn]) -> StepFn:
    """The method's step over the configured pool; without a pool, `build(config.model)` itself.

    `build(arch)` gives a `functools.partial` whose `hooks` keyword holds the plug-ins' `Hooks`
    (`methods.base.bind_step`)."""
    pool = pool_from_config(config)
    if pool is None:
        return build(main_arch(config))
    return PooledStep(pool, build, scale_to_main=config.pool.scale == "main")


# ---- validation ----


def validate(config: ml_collections.ConfigDict, info) -> None:
    """UserError for a bad `pool.*` value or an architecture that cannot run on the dataset's images
    (info: the dataset's `DatasetInfo`); cheap (abstract shapes, no compilation)."""
    pool_config = config.get("pool")
    if pool_config is None:
        return
    if pool_config.scale not in SCALES:
        raise UserError(
            f"pool.scale={pool_config.scale!r} must be one of {', '.join(SCALES)} ('main': another "
            "architecture's pixel gradient rescaled to the main model's norm)."
        )
    if not pool_config.preset:
        if pool_config.scale != "none":
            raise UserError(
                f"pool.scale={pool_config.scale!r} without a pool (pool.preset=''): choose a preset, e.g. "
                "--config.pool.preset=main_similar, or leave pool.scale at 'none'."
            )
        return
    for name in ("warmup", "similar_depth"):
        require_int(f"pool.{name}", pool_config[name], minimum=0)
    if config.iterations and pool_config.warmup >= config.iterations:
        raise UserError(
            f"pool.warmup={pool_config.warmup} is not shorter than the run (iterations={config.iterations}): "
            "the pool would never be used; lower --config.pool.warmup or use no pool (pool.preset='')."
        )
    pool = pool_from_config(config)
    checked = set()
    for arch in pool.archs:
        shape_key = _shape_key(arch)
        if shape_key in checked:
            continue
        checked.add(shape_key)
        try:
            check_input_shape(arch, info.image_shape, info.num_classes)
        except UserError as error:
            raise UserError(
                f"pool.preset={pool_config.preset!r} includes {label(arch)}, which cannot run on "
                f"{info.name!r} ({'x'.join(map(str, info.image_shape))} images): {error} Use a pool without "
                "it, e.g. --config.pool.preset=main_similar or a --config.pool.custom list."
            ) from None


def _shape_key(arch: Arch) -> Arch:
    """Networks that differ only in activation or norm have the same shapes: one check covers them
    (groupnorm's width constraint is checked when its spec is made)."""
    if isinstance(arch, ConvNetSpec):
        return dataclasses.replace(arch, act="relu", norm="instancenorm")
    return arch
