"""MetaDD's terms (jaxdd.metadd_terms) against NumPy by hand, invariances they must have, and float64
finite differences of the agreement term for each KL target."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import metadd_terms as terms

RNG = np.random.default_rng(0)
CAMS = RNG.uniform(size=(3, 2, 4, 4)).astype(np.float32)
LOGITS = RNG.normal(size=(3, 4, 5))
LABELS = np.array([0, 3, 1, 4])


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_variance_by_hand_with_and_without_the_threshold():
    np.testing.assert_allclose(
        float(terms.cam_variance(jnp.asarray(CAMS))), CAMS.var(axis=0).mean(), rtol=1e-6
    )
    kept = np.where(CAMS >= 0.4, CAMS, 0.0)
    value = float(terms.cam_variance(jnp.asarray(CAMS), threshold=0.4))
    np.testing.assert_allclose(value, kept.var(axis=0).mean(), rtol=1e-6)


def test_misalignment_is_zero_for_maps_equal_up_to_an_affine_change_and_two_for_opposite_ones():
    base = CAMS[:1]
    same = np.concatenate([base, 3 * base + 0.2, 0.5 * base - 1])
    assert float(terms.cam_misalignment(jnp.asarray(same))) == pytest.approx(0, abs=1e-6)
    opposite = np.concatenate([base, -base])
    assert float(terms.cam_misalignment(jnp.asarray(opposite))) == pytest.approx(2, abs=1e-6)


def test_misalignment_by_hand():
    centred = (CAMS - CAMS.mean(axis=(2, 3), keepdims=True)).reshape(3, 2, -1)
    unit = centred / np.linalg.norm(centred, axis=-1, keepdims=True)
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = 1 - np.mean([np.sum(unit[a, n] * unit[b, n]) for a, b in pairs for n in range(2)])
    np.testing.assert_allclose(float(terms.cam_misalignment(jnp.asarray(CAMS))), expected, rtol=1e-5)


def _expected_agreement(logits, labels, target):
    log_p = _log_softmax(logits)
    ce = -np.take_along_axis(log_p, labels[None, :, None], -1)[..., 0].mean(axis=1).sum()
    if target is None:
        return ce
    p_target = np.exp(target)
    return ce + sum(np.sum(p_target * (target - log_p[m]), -1).mean() for m in range(len(logits)))


def test_agreement_by_hand_for_every_kl_target():
    log_p = _log_softmax(LOGITS)
    log_mean = np.log(np.exp(log_p).mean(axis=0))
    backbone = RNG.normal(size=(4, 5))
    cases = {"none": None, "mean": log_mean, "backbone": _log_softmax(backbone)}
    for target, expected_target in cases.items():
        value = terms.agreement_loss(jnp.asarray(LOGITS), jnp.asarray(LABELS), target, jnp.asarray(backbone))
        expected = _expected_agreement(LOGITS, LABELS, expected_target)
        np.testing.assert_allclose(float(value), expected, rtol=1e-5, err_msg=target)


@pytest.mark.parametrize("target", ["mean", "backbone"])
def test_agreement_gradients_match_float64_finite_differences(target):
    with jax.enable_x64(True):
        logits, backbone = jnp.asarray(LOGITS), jnp.asarray(RNG.normal(size=(4, 5)))

        def loss(z, b):
            return terms.agreement_loss(z, jnp.asarray(LABELS), target, b)

        grads = jax.grad(loss, argnums=(0, 1))(logits, backbone)
        for index, point in enumerate((logits, backbone)):
            direction = jnp.asarray(RNG.normal(size=point.shape))
            shifted = [(point + s * 1e-6 * direction) for s in (1, -1)]
            args = [(x, backbone) if index == 0 else (logits, x) for x in shifted]
            numeric = (loss(*args[0]) - loss(*args[1])) / 2e-6
            np.testing.assert_allclose(float(jnp.vdot(grads[index], direction)), float(numeric), rtol=1e-6)


def test_a_backbone_target_needs_its_logits_and_an_unknown_target_is_named():
    with pytest.raises(ValueError, match=r"backbone"):
        terms.agreement_loss(jnp.asarray(LOGITS), jnp.asarray(LABELS), "backbone")
    with pytest.raises(ValueError, match=r"'teacher'"):
        terms.agreement_loss(jnp.asarray(LOGITS), jnp.asarray(LABELS), "teacher")


def test_meta_and_heterogeneous_fractions():
    cams = jnp.asarray([[[[0.9, 0.9, 0.1, 0.2]]], [[[0.6, 0.4, 0.8, 0.3]]]])  # [M=2, N=1, 1, 4]
    meta, hetero = terms.feature_fractions(cams)
    assert float(meta) == 0.25 and float(hetero) == 0.5


def test_low_confidence_removal_zeroes_exactly_the_pixels_below_the_threshold():
    out = np.asarray(terms.remove_low_confidence(jnp.asarray(CAMS), 0.3))
    np.testing.assert_array_equal(out, np.where(CAMS >= 0.3, CAMS, 0))
    np.testing.assert_array_equal(np.asarray(terms.remove_low_confidence(jnp.asarray(CAMS), 0.0)), CAMS)
