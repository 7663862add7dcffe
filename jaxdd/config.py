"""The run configuration: the defaults every recipe starts from, and `validate`, which names every user
error (unknown name, bad value, impossible shape) before any data is loaded or anything compiles."""

from __future__ import annotations

import copy
import difflib
import functools
import os

import jax
import ml_collections

from jaxdd import (
    checkpointing,
    data,
    distributed,
    eval_settings,
    evaluation,
    kd,
    metadd,
    methods,
    models,
    pool,
    sharding,
    synthetic,
    teachers,
)
from jaxdd.config_lists import split_ints, split_names
from jaxdd.data import zca
from jaxdd.errors import UserError, is_finite_number, is_int, require, require_int, require_positive
from jaxdd.methods import distribution_matching, gradient_matching, mtt, sre2l
from jaxdd.models import conv


def base_config() -> ml_collections.ConfigDict:
    """The defaults of every key; recipes in configs/ change what they need."""
    config = ml_collections.ConfigDict()
    config.dataset = "digits"
    config.data_dir = ""  # '' = the dataset's default locations (Debian package folder, tfds dir)
    config.ipc = 10
    config.method = "random"
    config.model = "ConvNet"  # the distillation architecture
    # How every network's convolutions are computed (`jaxdd.models.conv.ConvOptions`); implementation
    # 'auto': the backend's measured choice ('canonical' on CPU, 'lax' on accelerators).
    config.conv = conv.default_config()
    config.init = "real"  # 'real' | 'noise': how the synthetic images start
    config.iterations = 0
    config.seed = 0
    # A validation split: `per_class` training images of every class, drawn with `seed`, held out of the
    # data the method distils from (and its teachers train on); 0 = none.
    config.holdout = ml_collections.ConfigDict({"per_class": 0, "seed": 0})
    # ZCA whitening of the real images (fitted on the training data after the hold-out) in place of the
    # mean/std normalisation: the MTT reference's preprocessing of CIFAR (jaxdd.data.zca)
    config.zca = zca.default_config()
    # devices the classes (matching; 0 = as many as divide the classes) and the evaluation networks (0 =
    # all) are sharded over
    config.devices = 0
    # Multi-host start-up (jaxdd.distributed, README "Several devices"): off for one process.
    config.distributed = distributed.default_config()
    config.checkpoint_every = 100
    config.keep_checkpoints = 3
    config.log_every = 10
    config.eval_at = ""  # comma-separated iterations to evaluate at before the end, e.g. '500,1000'
    config.resume_with_changed_config = False  # resume although result-changing keys differ
    # resume although the pixel learning rate differs (gm/dm/sre2l.lr_img): the recovery from a diverged
    # run, continuing from its last good checkpoint with a lower rate
    config.resume_with_new_lr = False
    # the divergence guard: a state whose images leave ±max_abs_pixel (normalised units) is never saved
    config.max_abs_pixel = 1e3
    # JAX's persistent compilation cache, set by the launcher (a model pool compiles one step per
    # architecture; reruns reuse them); '' = off.
    config.compilation_cache_dir = "~/.cache/jaxdd/jax_compilation_cache"

    # Gradient matching (DC / DSA), DESIGN §4.1; the reference values.
    config.gm = gradient_matching.default_config()
    # Distribution matching (DM), DESIGN §4.2.
    config.dm = distribution_matching.default_config()
    # SRe2L (recover; relabel = soft-label evaluation columns), DESIGN §4.3; its teacher is config.model.
    config.sre2l = sre2l.default_config()
    # Trajectory matching (MTT), its expert trajectories included (jaxdd.experts).
    config.mtt = mtt.default_config()
    # Networks trained on the real data and cached (SRe2L's squeeze, MetaDD's auxiliary networks).
    config.teachers = teachers.default_config()
    # Model pool, DESIGN §4.4: which architecture each outer iteration's networks are; '' = config.model.
    config.pool = pool.default_config()
    # MetaDD, DESIGN §4.6: an architecture-invariant regularizer added to dc / dsa / dm / sre2l.
    config.metadd = metadd.default_config()

    # The evaluation, DESIGN §5: which networks (`eval_settings.EvalSettings`), each trained on the set as
    # `eval_settings.EvalProtocol` says; augment 'dsa' = the dataset's default DSA strategy.
    config.eval = eval_settings.default_config()
    # Knowledge-distillation evaluation, DESIGN §4.5: KD students beside the plain networks.
    config.kd = kd.default_config()
    return config


# Keys a recipe may leave at AUTO, "the reference's value", because that value depends on keys that a
# command line or a study may still change (the IPC): `resolve` fills them in `validate`, which every run,
# evaluation and study cell passes before any work, so config.json records the value used.
AUTO = 0
RULES = {
    # the DM readme: lr_img 10 for CIFAR-10 from IPC 100 (1 at IPC 1/10/50); CIFAR-100 keeps 1 up to 125
    "dm.lr_img": lambda config: 10.0 if config.dataset == "cifar10" and config.ipc >= 100 else 1.0,
}


# Keys a config may leave at 'auto' (gm.class_chunk: -1), the measured choice of the backend the process
# runs on: {key: (that marker, rule(backend) -> the choice)}. `resolve_backend` fills them in `validate`
# from `jax.default_backend()`, read here only, so config.json records the choice and the library receives
# it; a config read back from disk passes through it too, so an older run's 'auto' means what it meant.
BACKEND_RULES = {
    "conv.implementation": ("auto", conv.backend_implementation),
    "eval.parallel": ("auto", evaluation.backend_parallelism),
    "gm.parallel": ("auto", functools.partial(gradient_matching.backend_default, "parallel")),
    "gm.class_chunk": (-1, functools.partial(gradient_matching.backend_default, "class_chunk")),
    "gm.class_loop": ("auto", functools.partial(gradient_matching.backend_default, "class_loop")),
}


def _parent(config, dotted: str):
    """(the section holding `dotted`'s last part, that part), or (None, part) where a section is missing
    (tools build partial configs). Sections are ConfigDicts or, in a config read back from JSON, dicts."""
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node.get(part) if isinstance(node, ml_collections.ConfigDict | dict) else None
    return (node if isinstance(node, ml_collections.ConfigDict | dict) else None), last


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Fills, in place, every key of `RULES` that `config` leaves at AUTO from its rule; idempotent.
    Returns `config`."""
    for dotted, rule in RULES.items():
        node, last = _parent(config, dotted)
        value = node.get(last) if node is not None else None
        if is_finite_number(value) and value == AUTO:
            node[last] = rule(config)
    return config


def resolve_backend(config, backend: str | None = None):
    """Fills, in place, every key of `BACKEND_RULES` that `config` (a ConfigDict, or a dict read back from
    config.json or a checkpoint) leaves at its marker with the choice of `backend` ('cpu', 'gpu', 'tpu';
    None: this process's, `jax.default_backend()`); a missing key stays missing. Idempotent; returns
    `config`."""
    backend = backend or jax.default_backend()
    for dotted, (marker, rule) in BACKEND_RULES.items():
        node, last = _parent(config, dotted)
        value = node.get(last) if node is not None else None
        if value == marker and not isinstance(value, bool):
            node[last] = rule(backend)
    return config


# Keys added with a default that is NOT how runs before them behaved: a saved config without the key
# ran as this value (so resuming such a run under the new default is a named config difference).
ABSENT_MEANS = {
    "metadd.min_map_size": 0,  # MetaDD tapped the last map, however coarse (VGG11: 2x2 at 28x28)
}


# Values an older jaxdd saved that this one spells differently ({dotted key: {old: new}}): `read_saved`
# replaces them, so a run or study cell of before compares equal to the same config written today.
OLD_SPELLINGS = {
    "gm.dsa_strategy": {"": "dsa"},  # '' was the dataset's default strategy in gm and dm, 'dsa' elsewhere
    "dm.dsa_strategy": {"": "dsa"},
}


def read_saved(config):
    """A config read back (config.json, a checkpoint; a dict or ConfigDict) as this jaxdd writes it: the
    `OLD_SPELLINGS` replaced, then this backend's choices where it says 'auto' (`resolve_backend`). In
    place, idempotent; returns `config`. A config of this jaxdd passes unchanged but for the backend."""
    for dotted, spellings in OLD_SPELLINGS.items():
        node, last = _parent(config, dotted)
        value = node.get(last) if node is not None else None
        if isinstance(value, str) and value in spellings:
            node[last] = spellings[value]
    return resolve_backend(config)


def default_values() -> dict:
    """{dotted key: JSON value} of `base_config()` with this backend's choices (`resolve_backend`), and
    `ABSENT_MEANS` over them: what a key missing from an older run's saved config means, when the key was
    added to jaxdd after that run (`checkpointing.config_differences`). A fresh dict of a value computed
    once per process (a study compares it with every cell)."""
    return dict(_default_values(jax.default_backend()))


@functools.cache
def _default_values(backend: str) -> dict:
    return {**checkpointing.flatten_config(resolve_backend(base_config(), backend)), **ABSENT_MEANS}


def apply_arg(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies a recipe argument 'key=value,key.sub=value' (the part after ':' in --config=FILE:ARG).

    Each value is converted to the type of the key's default, so `ipc=10` sets an int; UserError for an
    item that is not key=value, an unknown key, a section, or a value that does not convert.
    """
    for item in split_names(arg or "", key="the recipe argument"):
        key, sep, text = item.partition("=")
        if not sep:
            raise UserError(
                f"Recipe argument {item!r} is not key=value, e.g. --config=configs/x.py:ipc=10 (items are "
                "separated by commas; give a list value as --config.KEY=a,b instead)."
            )
        try:
            current = _lookup(config, key)
        except (KeyError, AttributeError):
            raise UserError(
                f"Recipe argument {item!r} names an unknown key {key!r}: see the keys in jaxdd/config.py "
                "base_config, e.g. ipc=10 or eval.epochs=300."
            ) from None
        _assign(config, key, _convert(current, key, text))
    return config


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _convert(current, key: str, text: str):
    """`text` as the type of the key's current value `current` (UserError naming key, value and type)."""
    if isinstance(current, ml_collections.ConfigDict):
        raise UserError(
            f"Recipe argument {key}={text!r}: {key!r} is a section ({', '.join(current)}), not a value: "
            f"set one of its keys, e.g. {key}.{next(iter(current), 'KEY')}=..."
        )
    if isinstance(current, bool):
        if text.lower() not in _TRUE + _FALSE:
            raise UserError(f"Recipe argument {key}={text!r}: {key} is true or false, e.g. {key}=true.")
        return text.lower() in _TRUE
    if current is None or isinstance(current, str):
        return text
    try:
        return type(current)(text)
    except (TypeError, ValueError):
        kind = "an integer" if is_int(current) else f"a {type(current).__name__}"
        raise UserError(
            f"Recipe argument {key}={text!r}: {key} takes {kind} (default {current!r}), e.g. {key}={current}."
        ) from None


def apply_pool_arg(
    config: ml_collections.ConfigDict, arg: str | None, *, default: str
) -> ml_collections.ConfigDict:
    """A pool recipe's argument 'PRESET[,key=value,...]': the first item without '=' names the pool
    preset (`default` without one), the rest goes to `apply_arg`.

    configs/pool_dc.py:dataset=cifar10,main_others,ipc=1 -> pool.preset='main_others', ipc=1.
    """
    items = split_names(arg or "", key="the recipe argument")
    presets = [item for item in items if "=" not in item]
    if len(presets) > 1:
        raise UserError(f"Recipe argument {arg!r} names more than one pool preset: {', '.join(presets)}.")
    config.pool.preset = presets[0] if presets else default
    return apply_arg(config, ",".join(item for item in items if "=" in item))


def _lookup(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def _assign(config, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        config = config[part]
    config[last] = value


def prepare(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config as a run uses and records it: the keys left at AUTO (`resolve`, after every override)
    and the backend's choices (`resolve_backend`) filled in place, then `validate`d. Returns `config`."""
    validate(resolve_backend(resolve(config)))
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises `UserError` naming the first bad value and its fix; cheap (no data, no compilation). The
    config is checked as `prepare` would fill it, and left as it is."""
    config = resolve_backend(resolve(copy.deepcopy(config)))
    check_keys(config, base_config())
    info = data.dataset_info(config.dataset)
    method = methods.get_method(config.method)
    require(
        isinstance(config.data_dir, str)
        and (not config.data_dir or os.path.isdir(os.path.expanduser(config.data_dir))),
        f"data_dir={config.data_dir!r} is not a folder: give the folder that holds the {config.dataset!r} "
        "files, or '' to search the standard places (see README, Data).",
    )
    held = config.holdout.per_class
    require(
        is_int(held) and held >= 0 and is_int(config.holdout.seed) and config.holdout.seed >= 0,
        f"holdout={config.holdout.to_dict()!r}: per_class and seed must be integers ≥ 0 (per_class 0: none).",
    )
    require(
        config.eval.split == "test" or held > 0,
        "eval.split='validation' needs validation images: set --config.holdout.per_class, e.g. 100.",
    )
    require(
        is_int(config.ipc) and held + config.ipc <= info.min_class_count,
        f"holdout.per_class={held} leaves fewer than ipc={config.ipc} training images in the smallest "
        f"class of {config.dataset!r} ({info.min_class_count}): hold out at most "
        f"{info.min_class_count - config.ipc}.",
    )
    require(
        is_int(config.ipc) and config.ipc >= 1,
        f"ipc={config.ipc!r} must be an integer ≥ 1 (images per class), e.g. --config.ipc=10.",
    )
    require(
        config.ipc <= info.min_class_count,
        f"ipc={config.ipc} is larger than the smallest class of {config.dataset!r} "
        f"({info.min_class_count} training images): choose --config.ipc ≤ {info.min_class_count}.",
    )
    require(
        is_int(config.seed) and config.seed >= 0,
        f"seed={config.seed!r} must be a non-negative integer.",
    )
    require_int("iterations", config.iterations, minimum=0)
    for name in ("checkpoint_every", "keep_checkpoints", "log_every"):
        require_int(name, config[name], minimum=1)
    if "max_abs_pixel" in config:
        require_positive(
            "max_abs_pixel",
            config.max_abs_pixel,
            note=(
                "the divergence guard's bound on |pixel| in normalised units; "
                f"default {base_config().max_abs_pixel:g}"
            ),
        )
    require(
        config.init in synthetic.INITS,
        f"init={config.init!r} must be one of {', '.join(synthetic.INITS)} (--config.init=real).",
    )
    for step in split_ints(config.eval_at, key="eval_at"):
        require(
            1 <= step <= config.iterations,
            f"eval_at has {step}, outside 1..iterations={config.iterations}: list iterations within the run.",
        )
    require(
        isinstance(config.get("compilation_cache_dir", ""), str),
        f"compilation_cache_dir={config.get('compilation_cache_dir')!r} must be a folder path ('' = off).",
    )
    if "distributed" in config:
        distributed.validate(config.distributed)
    conv.options_from_config(config)
    zca.validate(config, info)
    models.check_input_shape(config.model, info.image_shape, info.num_classes)
    pool.validate(config, info)
    eval_settings.validate(config.eval, info)
    if split_names(config.eval.archs, key="eval.archs"):
        sharding.resolve_net_devices(config.devices)
    if "kd" in config:
        kd.validate(config.kd, info)
    metadd.validate(config, info)
    if method.validate is not None:
        method.validate(config, info)
    elif config.iterations:
        raise UserError(
            f"method={config.method!r} has nothing to optimise but iterations={config.iterations}: "
            "set --config.iterations=0 or choose a distillation method."
        )


def check_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, where="config"):
    """UserError for a key `config` does not know (a recipe's typo, which would be ignored silently) or a
    key of a `reference` section that a section of `config` lacks (a --config.SECTION={...} override
    replaces the whole section). A missing top-level key passes (tests and tools build partial configs),
    as does a value that is a section only in `config` (a model spec)."""
    unknown = [key for key in config if key not in reference]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(reference), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(
            f"{where} has an unknown key {unknown[0]!r}{hint}, which nothing reads. Its keys are "
            f"{', '.join(reference)}."
        )
    missing = [key for key in reference if key not in config]
    if missing and where != "config":
        raise UserError(
            f"{where} lacks {', '.join(missing)}: a --{where}={{...}} override replaces the whole section; "
            f"set its keys one at a time instead, e.g. --{where}.{missing[0]}=VALUE."
        )
    for key in reference:
        sections = (reference[key], config.get(key))
        if all(isinstance(section, ml_collections.ConfigDict) for section in sections):
            check_keys(config[key], reference[key], f"{where}.{key}")
