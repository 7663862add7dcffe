"""The run driver's cadence with a stand-in method: the non-finite stop keeps the last good checkpoint."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from jaxdd import run as driver
from jaxdd.config import base_config
from jaxdd.errors import UserError
from jaxdd.methods.base import DistillState, Method


def _checkpoint_steps(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def _counting_method(nan_at: int) -> Method:
    """A stand-in method whose images count the steps and whose loss turns NaN at step `nan_at`."""

    def init(config, real, key):
        return DistillState(
            images=jnp.zeros((2, 1, 1, 1)),
            labels=jnp.arange(2, dtype=jnp.int32),
            opt_state=(),
            key=key,
            step=jnp.zeros((), jnp.int32),
        )

    def make_step(config, real):
        @jax.jit
        def step(state, real):
            step = state.step + 1
            loss = jnp.where(step >= nan_at, jnp.nan, 1.0 / step)
            return state.replace(images=state.images + 1, step=step), {"loss": loss}

        return step

    return Method(init=init, make_step=make_step)


def test_a_non_finite_loss_stops_naming_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path):
    config = base_config()
    config.iterations, config.checkpoint_every, config.log_every = 10, 2, 5
    method = _counting_method(nan_at=7)
    state = method.init(config, None, jax.random.PRNGKey(0))
    with pytest.raises(UserError, match="Iteration 7: loss became non-finite"):
        driver.distill(config, method, None, state, tmp_path, log=lambda _: None)
    assert _checkpoint_steps(tmp_path) == [2, 4, 6]
    logged = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert logged == [1, 2, 3, 4, 5, 6]
