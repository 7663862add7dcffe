"""The canonical convolution equals XLA's, in value and in first- and second-order derivatives, for the
kernel / stride / padding combinations the model zoo uses (float64, so only reassociation differs)."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdd.errors import UserError
from jaxdd.models import conv, get_model

CASES = [  # (kernel, stride, padding, image size, in channels)
    (3, 1, 1, 8, 3),  # ConvNet
    (3, 1, 3, 6, 1),  # ConvNet's first layer on 28x28 (padding wider than the kernel's reach)
    (5, 1, 4, 7, 1),  # AlexNet on one channel
    (5, 1, 0, 9, 2),  # LeNet
    (3, 2, 1, 8, 2),  # ResNet downsampling
    (1, 2, 0, 8, 2),  # ResNet shortcut
    (3, 1, 0, 5, 2),
    (3, 1, 1, 6, 16),  # 9·16 window columns > im2col_columns: one weight-gradient product per offset
    # maps of at most ConvOptions.small_output_pixels outputs take the slices-and-product path (VGG11's
    # last stages)
    (3, 1, 1, 2, 4),
    (3, 1, 1, 3, 2),
    (3, 1, 1, 1, 2),
    (3, 2, 1, 4, 2),
]


def _inputs(k, size, cin, cout=3, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(2, size, size, cin)))
    w = jnp.asarray(rng.normal(size=(k, k, cin, cout)))
    return x, w


def _loss(implementation, stride, padding):
    options = conv.ConvOptions(implementation=implementation)

    def loss(x, w):
        y = conv.conv2d(x, w, stride=stride, padding=padding, options=options)
        return jnp.sum(jnp.tanh(y) * jnp.cos(y))

    return loss


@pytest.mark.parametrize("k,stride,padding,size,cin", CASES)
def test_canonical_matches_lax_to_the_second_order(k, stride, padding, size, cin):
    with jax.enable_x64(True):
        x, w = _inputs(k, size, cin)
        results = {}
        for impl in ("lax", "canonical"):
            loss = _loss(impl, stride, padding)
            options = conv.ConvOptions(implementation=impl)
            value = conv.conv2d(x, w, stride=stride, padding=padding, options=options)
            dx, dw = jax.grad(loss, argnums=(0, 1))(x, w)
            # gradient matching's second order: d/dx of a function of dL/dw
            ddx = jax.grad(lambda x, loss=loss: jnp.sum(jnp.sin(jax.grad(loss, argnums=1)(x, w))))(x)
            ddw = jax.grad(lambda w, loss=loss: jnp.sum(jnp.sin(jax.grad(loss, argnums=0)(x, w))))(w)
            results[impl] = (value, dx, dw, ddx, ddw)
        for got, want in zip(results["canonical"], results["lax"], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_small_maps_take_the_slices_path(monkeypatch):
    """The cases above reach the im2col branch: a 2x2 map's forward."""
    kernels = []
    original = conv._slices_dot_conv
    monkeypatch.setattr(conv, "_slices_dot_conv", lambda *a: kernels.append(a[1].shape) or original(*a))
    x, w = _inputs(3, 2, 4)
    jax.grad(_loss("canonical", 1, 1), argnums=1)(x, w)
    assert (3, 3, 4, 3) in kernels


@pytest.mark.parametrize("im2col_columns", [0, 128])  # one product per kernel offset / all in one
def test_weight_gradient_is_the_sum_over_pixels_of_window_times_output_gradient(im2col_columns):
    """dw[i, j, c, d] = Σ_{b,h,w} xpad[b, h+i, w+j, c] · g[b, h, w, d], written out with numpy loops."""
    options = conv.ConvOptions(im2col_columns=im2col_columns)
    rng = np.random.default_rng(1)
    x, g = rng.normal(size=(2, 5, 4, 3)), rng.normal(size=(2, 4, 5, 2))
    pads = ((1, 2), (2, 1))  # asymmetric, so a swapped axis or pad shows
    kernel = (5 + 3 - 4 + 1, 4 + 3 - 5 + 1)  # (5, 3): the kernel these shapes imply
    xpad = np.pad(x, ((0, 0), *pads, (0, 0)))
    want = np.zeros((*kernel, 3, 2))
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            window = xpad[:, i : i + 4, j : j + 5]
            want[i, j] = np.einsum("bhwc,bhwd->cd", window, g)
    with jax.enable_x64(True):
        got = conv.weight_gradient(jnp.asarray(x), jnp.asarray(g), pads, kernel, options)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


def test_output_shape_follows_torch():
    x, w = _inputs(3, 28, 1, cout=4)
    assert conv.conv2d(x, w, stride=1, padding=3).shape == (2, 32, 32, 4)
    assert conv.conv2d(x, w, stride=2, padding=1).shape == (2, 14, 14, 4)


@pytest.mark.parametrize(
    ("field", "value"), [("implementation", "cudnn"), ("implementation", "auto"), ("im2col_columns", -1)]
)
def test_bad_options_are_named(field, value):
    with pytest.raises(UserError, match=rf"conv\.{field}={value!r}"):
        conv.ConvOptions(**{field: value})


def test_the_config_section_is_the_options_with_the_backends_implementation():
    section = conv.default_config()
    assert section.implementation == "auto"  # resolved by jaxdd.config for the backend
    section.implementation = conv.backend_implementation("gpu")
    config = ml_collections.ConfigDict({"conv": section})
    assert conv.options_from_config(config) == conv.ConvOptions(implementation="lax")
    assert conv.backend_implementation("cpu") == "canonical" == conv.ConvOptions().implementation
    assert conv.options_from_config(ml_collections.ConfigDict()) == conv.ConvOptions()


def _conv_ops(jaxpr) -> int:
    return str(jaxpr).count("conv_general_dilated")


def test_the_options_are_part_of_the_model_and_so_of_the_jit_cache_key():
    """Two models that differ only in their options are two programs: a threshold is never read at trace
    time from outside the key (weight gradients as products from 0 output pixels on: fewer convolutions)."""
    shape = (8, 8, 1)
    models = [
        get_model("ConvNetD1", num_classes=3, image_shape=shape, conv=options)
        for options in (conv.ConvOptions(), conv.ConvOptions(product_weight_gradient_rows=0))
    ]
    assert models[0] != models[1] and models[0].conv == conv.ConvOptions()
    x = jnp.ones((2, *shape))
    variables = models[0].init(jax.random.PRNGKey(0), x, train=False)

    @functools.partial(jax.jit, static_argnums=0)
    def grad(model, variables):
        return jax.grad(lambda v: jnp.sum(model.apply(v, x, train=False)[0]))(variables)

    before = grad._cache_size()
    for model in models:
        grad(model, variables)
    assert grad._cache_size() == before + 2
    convolutions = [
        _conv_ops(jax.make_jaxpr(grad.__wrapped__, static_argnums=0)(m, variables)) for m in models
    ]
    assert convolutions[1] < convolutions[0]
