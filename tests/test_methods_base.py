"""The pieces every method shares (`jaxdd.methods.base`): the pixel step against a hand-computed SGD
update, the step's key and count, the first state."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxdd.data.real import from_arrays
from jaxdd.errors import UserError
from jaxdd.methods import base


def _half_square(images, key):
    """0.5·‖x‖² (gradient x) and a metric that records the key it was given."""
    return 0.5 * jnp.sum(images**2), images, {"key_data": jax.random.key_data(key).astype(jnp.float32)}


def test_pixel_step_is_one_optax_update_of_the_method_gradient():
    images = jnp.arange(6.0).reshape(2, 1, 3, 1) - 2.0  # [-2, -1, 0, 1, 2, 3]
    tx = optax.sgd(0.1, momentum=0.5)
    key = jax.random.key(4)
    new, opt_state, metrics = base.pixel_step(
        _half_square, tx, images, tx.init(images), jnp.zeros(2, jnp.int32), key
    )
    x = np.arange(6.0) - 2.0
    np.testing.assert_allclose(np.ravel(new), 0.9 * x, rtol=1e-6)  # first SGD step: x − 0.1·x
    np.testing.assert_allclose(float(metrics["loss"]), 0.5 * np.sum(x**2), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["grad_norm"]), np.linalg.norm(x), rtol=1e-6)
    np.testing.assert_array_equal(metrics["key_data"], jax.random.key_data(key))  # the key, unchanged
    # momentum 0.5 carries the first gradient into the second step: x₂ = x₁ − 0.1·(x₁ + 0.5·x)
    second, _, _ = base.pixel_step(_half_square, tx, new, opt_state, jnp.zeros(2, jnp.int32), key)
    np.testing.assert_allclose(np.ravel(second), 0.9 * x - 0.1 * (0.9 * x + 0.5 * x), rtol=1e-6, atol=1e-7)


def test_pixel_step_projects_after_the_update():
    images = jnp.full((1, 2, 2, 1), 0.5)
    tx = optax.sgd(-10.0)  # ascent: the update leaves [0, 1]
    clip = lambda x: jnp.clip(x, 0.0, 1.0)
    new, _, _ = base.pixel_step(
        _half_square, tx, images, tx.init(images), jnp.zeros(1, jnp.int32), jax.random.key(0), project=clip
    )
    np.testing.assert_array_equal(np.asarray(new), np.ones((1, 2, 2, 1)))


def _state(step: int) -> base.DistillState:
    return base.DistillState(
        images=jnp.zeros((2, 1, 1, 1)),
        labels=jnp.zeros(2, jnp.int32),
        opt_state=(),
        key=jax.random.key(7),
        step=jnp.int32(step),
    )


def test_the_step_key_is_fold_in_of_the_step_and_advance_counts_one_iteration():
    state = _state(3)
    expected = jax.random.fold_in(jax.random.key(7), 3)
    np.testing.assert_array_equal(jax.random.key_data(state.step_key), jax.random.key_data(expected))
    moved = state.advance(jnp.ones((2, 1, 1, 1)), ())
    assert int(moved.step) == 4 and float(moved.images.sum()) == 2.0
    assert int(state.step) == 3  # pure


def _real():
    images = np.linspace(0, 1, 4 * 2 * 2, dtype=np.float32).reshape(4, 2, 2, 1)
    labels = np.array([0, 0, 1, 1])
    return from_arrays(
        name="tiny", train_images=images, train_labels=labels, test_images=images, test_labels=labels,
        mean=(0.5,), std=(0.25,), class_names=("a", "b"),
    )  # fmt: skip


def test_init_state_starts_from_the_configured_images_at_step_zero():
    config = ml_collections.ConfigDict({"init": "real", "ipc": 1})
    tx = optax.adam(0.1)
    state = base.init_state(config, _real(), jax.random.key(0), tx)
    assert state.images.shape == (2, 2, 2, 1) and list(np.asarray(state.labels)) == [0, 1]
    assert int(state.step) == 0
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(tx.init(state.images))
    config.init = "zeros"
    with pytest.raises(UserError, match=r"init='zeros' must be one of real, noise"):
        base.init_state(config, _real(), jax.random.key(0), tx)
