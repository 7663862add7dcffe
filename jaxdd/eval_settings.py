"""`config.eval` read once (DESIGN §5): `EvalProtocol`, how a fresh network trains on a set, and
`EvalSettings`, which networks evaluate it and on which images; their defaults are the config section's
(`default_config`) and their checks name the key and the fix."""

from __future__ import annotations

import dataclasses
import functools

import ml_collections

from jaxdd import augment as dsa
from jaxdd import training
from jaxdd.config_lists import split_names
from jaxdd.errors import is_finite_number, is_int, require
from jaxdd.models import check_input_shape
from jaxdd.settings import derived, from_section, section_config

MODES = ("loop", "vmap")
PARALLELISM_CHOICES = ("auto", *MODES)  # eval.parallel; 'auto' is resolved by jaxdd.config
SPLITS = ("test", "validation")  # eval.split
BASELINES = ("random", "whole")  # eval.baselines


def check_training_keys(settings, section: str, *, source: str) -> None:
    """UserError naming `section.KEY` and the fix for a bad epochs, batch_size, lr, momentum or
    weight_decay of `settings` (an `EvalProtocol`, or a section that trains as one: `config.teachers`);
    `source` introduces the suggested values ('the reference uses', 'default')."""
    for name in ("epochs", "batch_size"):
        value = getattr(settings, name)
        require(is_int(value) and value >= 1, f"{section}.{name}={value!r} must be an integer ≥ 1.")
    lr, momentum, weight_decay = settings.lr, settings.momentum, settings.weight_decay
    require(
        is_finite_number(lr) and lr > 0,
        f"{section}.lr={lr!r} must be > 0 and finite ({source} 0.01).",
    )
    require(
        is_finite_number(momentum) and 0 <= momentum < 1,
        f"{section}.momentum={momentum!r} must lie in [0, 1) ({source} 0.9).",
    )
    require(
        is_finite_number(weight_decay) and weight_decay >= 0,
        f"{section}.weight_decay={weight_decay!r} must be ≥ 0 and finite ({source} 5e-4).",
    )


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """How a fresh network is trained on a (synthetic) set: the training keys of `config.eval`, with the
    reference's defaults (DESIGN §5); hashable (a `jit` static argument), and its `dataclasses.asdict`
    is part of the evaluation and teacher cache keys.

    SGD with momentum and coupled weight decay, lr ×0.1 from epoch ⌊epochs·lr_decay_at⌋. `augment` is the
    DSA strategy applied per image to every training batch ('none' disables it), resolved: the config's
    'dsa' (the dataset's default strategy) is resolved by `settings_from_section`.
    """

    epochs: int = 300  # the reference's 300; 1000 with DSA
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_at: float = 0.5  # the fraction of the epochs after which lr drops ×0.1
    augment: str = "none"  # 'none' or a DSA strategy string (the config may say 'dsa')
    test_batch_size: int = 500  # images per forward pass of the test

    def __post_init__(self):
        check_training_keys(self, "eval", source="the reference uses")
        require(
            is_int(self.test_batch_size) and self.test_batch_size >= 1,
            f"eval.test_batch_size={self.test_batch_size!r} must be an integer ≥ 1.",
        )
        require(
            is_finite_number(self.lr_decay_at) and 0 <= self.lr_decay_at <= 1,
            f"eval.lr_decay_at={self.lr_decay_at!r} must lie in [0, 1] (the fraction of the epochs after "
            "which lr drops ×0.1; the reference uses 0.5).",
        )
        if self.augment != "none":
            dsa.parse_strategy(self.augment)

    def augment_fn(self) -> training.AugmentFn:
        """The per-image DSA augmentation of every training batch; None for 'none'."""
        if self.augment == "none":
            return None
        return functools.partial(dsa.augment, strategy=self.augment, siamese=False)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """`config.eval` read once: which networks evaluate a set, on which images, and how they are run;
    each network trains as `protocol` (derived: the section's other keys, `EvalProtocol`) says."""

    archs: str = "ConvNet,MLP,LeNet,AlexNet,VGG11,ResNet18"  # comma-separated; '' = no evaluation
    num_nets: int = 5  # networks per architecture, each from its own key: mean ± std over them
    # a fixed stratified subset of this many test images (a reduced protocol, labelled so); 0 = all
    test_size: int = 0
    # 'test', or 'validation': evaluate on the images `holdout` keeps out of the training set (for
    # choosing a hyperparameter without looking at the test set)
    split: str = "test"
    parallel: str = "auto"  # 'loop' | 'vmap' | 'auto' (the measured default of the backend)
    baselines: str = "random"  # comma-separated extra rows: 'random' (real subset, same IPC), 'whole'
    # a set that carries a learned student step size (MTT's α, synset.npz meta 'learned_lr') trains its
    # students with it instead of `lr`, as the reference evaluates MTT; False: `lr` for every set
    learned_lr: bool = True
    protocol: EvalProtocol = derived(EvalProtocol())  # noqa: RUF009 (frozen, so immutable)

    def __post_init__(self):
        split_names(self.archs, key="eval.archs")  # the list's form; each name: `validate`
        require(
            self.split in SPLITS,
            f"eval.split={self.split!r} must be 'test' or 'validation' (the holdout images).",
        )
        require(
            is_int(self.test_size) and self.test_size >= 0,
            f"eval.test_size={self.test_size!r} must be an integer ≥ 0 (0 = the whole test set).",
        )
        require(
            is_int(self.num_nets) and self.num_nets >= 1,
            f"eval.num_nets={self.num_nets!r} must be an integer ≥ 1.",
        )
        require(
            self.parallel in PARALLELISM_CHOICES,
            f"eval.parallel={self.parallel!r} is not one of {PARALLELISM_CHOICES}.",
        )
        require(
            isinstance(self.learned_lr, bool),
            f"eval.learned_lr={self.learned_lr!r} must be True or False.",
        )
        for baseline in self.baseline_names:
            require(
                baseline in BASELINES,
                f"eval.baselines has {baseline!r}; valid baselines are {', '.join(BASELINES)} "
                "(comma-separated).",
            )

    @property
    def arch_names(self) -> tuple[str, ...]:
        """The architectures `archs` lists (in any form `config_lists.split_names` reads)."""
        return split_names(self.archs, key="eval.archs")

    def set_protocol(self, learned_lr: float | None) -> EvalProtocol:
        """The protocol a set's students train with: `protocol`, its lr the set's `learned_lr` where the
        set has one and `self.learned_lr` asks for it (UserError for a learned rate that is not > 0)."""
        if learned_lr is None or not self.learned_lr:
            return self.protocol
        require(
            is_finite_number(learned_lr) and learned_lr > 0,
            f"The set's learned student step size is {learned_lr!r}, which cannot train a network: "
            "evaluate it with --config.eval.learned_lr=False (eval.lr) instead.",
        )
        return dataclasses.replace(self.protocol, lr=float(learned_lr))

    @property
    def baseline_names(self) -> tuple[str, ...]:
        """The baselines `baselines` lists."""
        return split_names(self.baselines, key="eval.baselines")


def default_config() -> ml_collections.ConfigDict:
    """The `config.eval` defaults: `EvalSettings`' keys and its protocol's (`EvalProtocol`)."""
    return section_config(EvalSettings, **section_config(EvalProtocol))


def settings_from_section(section, dataset: str) -> EvalSettings:
    """`config.eval` (a `ConfigDict`, or a dict read back) as `EvalSettings`, each key checked; its
    protocol's augmentation 'dsa' is `dataset`'s default strategy (`augment.resolve_strategy`)."""
    strategy = dsa.resolve_strategy(section.get("augment", EvalProtocol.augment), dataset)
    protocol = from_section(EvalProtocol, section, augment=strategy)
    return from_section(EvalSettings, section, protocol=protocol)


def validate(section, info) -> None:
    """UserError for a bad `eval.*` value (`settings_from_section`), an architecture that cannot take the
    dataset's images or a test subset smaller than its classes (info: the dataset's `DatasetInfo`)."""
    settings = settings_from_section(section, info.name)
    for arch in settings.arch_names:
        check_input_shape(arch, info.image_shape, info.num_classes)
    require(
        settings.test_size == 0 or settings.test_size >= info.num_classes,
        f"eval.test_size={settings.test_size} is below the {info.num_classes} classes: keep ≥ 1 image "
        "per class, or 0 for the whole test set.",
    )
