"""Grad-CAM maps (jaxdd.cam) against properties that must hold: which normalisations freeze a map, the
softmax map's scale, where networks are tapped for a minimum map size, and the weight-stop shortcut being
exact exactly where the network after the tap is piecewise linear."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import cam
from jaxdd.models import get_model

pytestmark = pytest.mark.usefixtures("fast_compilation")

ONE_POSITIVE_CELL = jnp.asarray([[[-1.0, -0.5, -2.0], [-0.3, 0.7, -1.2], [-0.8, -0.1, -0.6]]])


def _map_gradient(raw, method):
    weights = jax.random.normal(jax.random.key(0), (1, 6, 6))
    return jax.grad(lambda m: jnp.sum(cam.normalise_maps(m, (6, 6), 1e-6, method) * weights))(raw)


def test_minmax_freezes_a_map_with_one_positive_cell_and_the_other_normalisations_do_not():
    # relu + min-max makes it the one-hot template m / (m + ε): only an ε-sized gradient is left
    assert float(jnp.max(jnp.abs(_map_gradient(ONE_POSITIVE_CELL, "minmax")))) < 1e-4
    for method in ("pre_relu", "softmax"):
        assert float(jnp.max(jnp.abs(_map_gradient(ONE_POSITIVE_CELL, method)))) > 0.1, method


def test_pre_relu_maps_span_the_unit_range_and_keep_negative_evidence():
    out = np.asarray(cam.normalise_maps(ONE_POSITIVE_CELL, (3, 3), 1e-9, "pre_relu"))[0]
    raw = np.asarray(ONE_POSITIVE_CELL)[0]
    np.testing.assert_allclose(out, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)


def test_softmax_maps_are_one_where_the_map_is_uniform_and_average_one_otherwise():
    uniform = cam.normalise_maps(jnp.full((2, 3, 3), 0.4), (5, 5), 1e-6, "softmax")
    np.testing.assert_allclose(np.asarray(uniform), 1.0, rtol=1e-6)
    maps = jax.random.normal(jax.random.key(1), (4, 3, 3))
    out = np.asarray(cam.normalise_maps(maps, (6, 6), 1e-6, "softmax"))
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 1.0, rtol=1e-5)
    assert (out > 0).all()


def test_an_unknown_normalisation_is_named():
    with pytest.raises(ValueError, match=r"'sigmoid'"):
        cam.normalise_maps(ONE_POSITIVE_CELL, (3, 3), 1e-6, "sigmoid")


@pytest.mark.parametrize(
    ("name", "shape", "min_size", "expected"),
    [
        ("VGG11", (28, 28, 1), 0, (2, 2, 512)),
        ("ConvNet", (28, 28, 1), 4, (8, 8, 128)),  # already ≥ 4: unchanged
        ("ResNet18", (32, 32, 3), 4, (4, 4, 512)),
        ("ConvNet", (8, 8, 1), 64, (12, 12, 128)),  # no map that large: the largest (first conv's)
    ],
)
def test_the_tap_is_the_last_map_at_least_min_map_size_wide(name, shape, min_size, expected):
    model = get_model(name, num_classes=10, image_shape=shape)
    assert cam.feature_tap(model, shape, min_map_size=min_size).map_shape == expected


def test_vgg11_is_tapped_at_4x4_or_finer_at_28x28():
    model = get_model("VGG11", num_classes=10, image_shape=(28, 28, 1))
    h, w, _ = cam.feature_tap(model, (28, 28, 1), min_map_size=4).map_shape
    assert min(h, w) >= 4


SHAPE = (8, 8, 1)


def _tapped(spec, min_map_size=0):
    model = get_model(spec, num_classes=3, image_shape=SHAPE)
    variables = model.init(jax.random.key(2), jnp.zeros((1, *SHAPE)), train=False)
    tap = cam.feature_tap(model, SHAPE, min_map_size=min_map_size)
    return model, variables, cam.probe_linear_head(model, variables, SHAPE, tap, jax.random.key(3))


def _pixel_gradient(model, variables, tap, stop_weights):
    images = jax.random.normal(jax.random.key(4), (3, *SHAPE))
    labels = jnp.asarray([0, 1, 2])
    weights = jax.random.normal(jax.random.key(5), (3, *SHAPE[:2]))

    def objective(x):
        cams, _ = cam.grad_cam(
            model, variables, x, labels, tap, epsilon=1e-6, normalisation="softmax", stop_weights=stop_weights
        )
        return jnp.sum(cams * weights)

    return np.asarray(jax.grad(objective)(images))


@pytest.mark.parametrize("act", ["relu", "leakyrelu"])
def test_the_weight_stop_is_exact_after_a_piecewise_linear_head(act):
    model, variables, tap = _tapped({"width": 4, "depth": 2, "act": act})
    assert tap.linear_head
    full = _pixel_gradient(model, variables, tap, stop_weights=False)
    np.testing.assert_allclose(_pixel_gradient(model, variables, tap, stop_weights=True), full, atol=1e-6)
    assert np.abs(full).max() > 1e-4


@pytest.mark.parametrize(
    ("spec", "min_size"),
    [
        ({"width": 4, "depth": 2, "act": "swish"}, 0),
        ({"width": 4, "depth": 2, "act": "sigmoid"}, 0),
        ({"width": 4, "depth": 2}, 8),  # tapped at the first block: instance norm follows the tap
    ],
)
def test_the_weight_stop_is_not_taken_where_the_head_is_not_piecewise_linear(spec, min_size):
    model, variables, tap = _tapped(spec, min_size)
    assert not tap.linear_head
    full = _pixel_gradient(model, variables, tap, stop_weights=False)
    assert np.abs(_pixel_gradient(model, variables, tap, stop_weights=True) - full).max() > 1e-6
