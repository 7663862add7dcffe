"""The shared KL-with-temperature (`jaxdd.losses`): by hand, against NumPy, over leading axes, tiny T."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import losses


def test_kl_by_hand_without_a_temperature_squared_factor():
    student = jnp.zeros((1, 2))
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    for temperature in (1.0, 2.0, 20.0):
        # teacher probabilities softmax(z/T) = (0.75, 0.25) at every T
        teacher = jnp.asarray([[temperature * math.log(3.0), 0.0]])
        got = losses.kl_divergence(student, teacher, temperature)
        assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(losses.kl_divergence(teacher, teacher, 3.0)) == pytest.approx(0, abs=1e-7)


def _numpy_kl(student, teacher, temperature):
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    log_p_t = log_softmax(teacher / temperature)
    return np.sum(np.exp(log_p_t) * (log_p_t - log_softmax(student / temperature)), -1).mean()


def test_kl_matches_numpy_and_averages_over_every_leading_axis():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 3, 4, 5)) * 3  # [M=3, B=4, K=5] each
    for temperature in (0.5, 1.0, 4.0):
        got = losses.kl_divergence(jnp.float32(student), jnp.float32(teacher), temperature)
        np.testing.assert_allclose(float(got), _numpy_kl(student, teacher, temperature), rtol=1e-5)
    rows = [
        float(losses.kl_divergence(jnp.float32(s), jnp.float32(t)))
        for s, t in zip(student, teacher, strict=True)
    ]
    got = float(losses.kl_divergence(jnp.float32(student), jnp.float32(teacher)))
    assert got == pytest.approx(np.mean(rows), rel=1e-5)


def test_a_tiny_temperature_gives_a_finite_loss_and_gradient():
    logits = jnp.asarray([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    loss, grad = jax.value_and_grad(lambda s: losses.kl_divergence(s, logits[::-1], 1e-4))(logits)
    assert np.isfinite(float(loss)) and np.isfinite(np.asarray(grad)).all()
