"""The canonical convolution equals XLA's, in value and in first- and second-order derivatives, for the
kernel / stride / padding combinations the model zoo uses (float64, so only reassociation differs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.models import conv

CASES = [  # (kernel, stride, padding, image size, in channels)
    (3, 1, 1, 8, 3),  # ConvNet
    (3, 1, 3, 6, 1),  # ConvNet's first layer on 28x28 (padding wider than the kernel's reach)
    (5, 1, 4, 7, 1),  # AlexNet on one channel
    (5, 1, 0, 9, 2),  # LeNet
    (3, 2, 1, 8, 2),  # ResNet downsampling
    (1, 2, 0, 8, 2),  # ResNet shortcut
    (3, 1, 0, 5, 2),
    (3, 1, 1, 6, 16),  # 9·16 window columns > conv.IM2COL_COLUMNS: one weight-gradient product per offset
    # maps of at most conv.SMALL_OUTPUT_PIXELS outputs take the slices-and-product path (VGG11's last
    # stages)
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
    def loss(x, w):
        y = conv.conv2d(x, w, stride=stride, padding=padding, implementation=implementation)
        return jnp.sum(jnp.tanh(y) * jnp.cos(y))

    return loss


@pytest.mark.parametrize("k,stride,padding,size,cin", CASES)
def test_canonical_matches_lax_to_the_second_order(k, stride, padding, size, cin):
    with jax.enable_x64(True):
        x, w = _inputs(k, size, cin)
        results = {}
        for impl in ("lax", "canonical"):
            loss = _loss(impl, stride, padding)
            value = conv.conv2d(x, w, stride=stride, padding=padding, implementation=impl)
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
def test_weight_gradient_is_the_sum_over_pixels_of_window_times_output_gradient(monkeypatch, im2col_columns):
    """dw[i, j, c, d] = Σ_{b,h,w} xpad[b, h+i, w+j, c] · g[b, h, w, d], written out with numpy loops."""
    monkeypatch.setattr(conv, "IM2COL_COLUMNS", im2col_columns)
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
        got = conv.weight_gradient(jnp.asarray(x), jnp.asarray(g), pads, kernel)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


def test_output_shape_follows_torch():
    x, w = _inputs(3, 28, 1, cout=4)
    assert conv.conv2d(x, w, stride=1, padding=3, implementation="canonical").shape == (2, 32, 32, 4)
    assert conv.conv2d(x, w, stride=2, padding=1, implementation="canonical").shape == (2, 14, 14, 4)


def test_unknown_implementation_is_named():
    with pytest.raises(ValueError, match="'cudnn'"):
        conv.resolve("cudnn")
