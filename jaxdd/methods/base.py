"""What every distillation method provides: a state pytree and a jitted outer step over it.

The run driver only knows this interface: `init` builds the first `DistillState`, `make_step` returns
`step(state, real) -> (state, metrics)` (pure and jitted; metrics a flat dict of scalars), and the driver
loops, logs and checkpoints. A method with nothing to optimise (the random-real baseline) has no step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import ml_collections
import optax
from flax import struct

from jaxdd.data.real import RealData
from jaxdd.synthetic import SyntheticSet


@struct.dataclass
class DistillState:
    """Everything a resumed run needs to continue exactly as an uninterrupted one.

    Attributes:
      images: [N, H, W, C] float32 synthetic images (normalised space), class-major.
      labels: [N] int32.
      opt_state: the pixel optimiser's state.
      key: the distillation's base PRNG key; step t uses `fold_in(key, t)`, so no key is carried forward.
      step: int32 scalar, number of completed outer iterations.
    """

    images: jax.Array
    labels: jax.Array
    opt_state: optax.OptState
    key: jax.Array
    step: jax.Array

    @property
    def synset(self) -> SyntheticSet:
        return SyntheticSet(images=self.images, labels=self.labels)


StepFn = Callable[[DistillState, RealData], tuple[DistillState, dict]]


@dataclasses.dataclass(frozen=True)
class Method:
    """A registry entry.

    init(config, real, key) -> DistillState
    make_step(config, real) -> StepFn, or None when there is nothing to optimise.
    validate(config, dataset_info) -> None, raising UserError for method-specific bad values.
    lr_keys: the config keys of the pixel learning rate, which `resume_with_new_lr` may change (the
      recovery from a diverged run).
    schedule_uses_iterations: whether a step depends on the total `iterations` (a decay over the run), so
      that a run cannot be extended or shortened on resume.
    teacher_archs(config) -> the architectures of the networks trained on the real data that the method
      itself uses (SRe2L's teacher); MetaDD's auxiliaries are listed by `jaxdd.metadd`.
    """

    init: Callable[[ml_collections.ConfigDict, RealData, jax.Array], DistillState]
    make_step: Callable[[ml_collections.ConfigDict, RealData], StepFn] | None = None
    validate: Callable[[ml_collections.ConfigDict, object], None] | None = None
    lr_keys: tuple[str, ...] = ()
    schedule_uses_iterations: bool = False
    teacher_archs: Callable[[ml_collections.ConfigDict], tuple] = lambda config: ()
