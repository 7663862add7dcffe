"""Tests of jaxdd.augment (DSA): hand-computed op results, siamese/per-image semantics, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import augment as aug
from jaxdd.errors import UserError

OP_NAMES = ("color", "crop", "cutout", "flip", "scale", "rotate")


def _images(n, h=8, w=8, c=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, h, w, c)), jnp.float32)


def _ramp(h, w):
    """One image [1, H, W, 1] with value = row * W + column."""
    return jnp.arange(h * w, dtype=jnp.float32).reshape(1, h, w, 1)


# ---- strategy parsing, defaults, parameters ----


def test_parse_strategy():
    assert aug.parse_strategy("color_crop_cutout_flip_scale_rotate") == OP_NAMES
    assert aug.parse_strategy("crop") == ("crop",)
    assert aug.parse_strategy("crop_crop_flip") == ("crop", "crop", "flip")
    for empty in ("none", "None", "", "  "):
        assert aug.parse_strategy(empty) == ()
    assert set(aug.OPS) == set(OP_NAMES)


@pytest.mark.parametrize("bad", ["color_blur", "Crop", "crop__flip", "none_crop"])
def test_parse_strategy_names_bad_op_and_valid_ones(bad):
    with pytest.raises(UserError) as info:
        aug.parse_strategy(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert all(name in message for name in OP_NAMES)


def test_parse_strategy_rejects_non_string():
    with pytest.raises(UserError, match="string"):
        aug.parse_strategy(None)


def test_default_strategy_drops_flip_only_for_digits():
    for name in ("mnist", "MNIST", "svhn", "SVHN", "digits"):
        assert aug.default_strategy(name) == "color_crop_cutout_scale_rotate"
    for name in ("fashion_mnist", "FashionMNIST", "cifar10", "CIFAR100", "tiny_imagenet"):
        assert aug.default_strategy(name) == "color_crop_cutout_flip_scale_rotate"


def test_dsa_params_reference_values_and_validation():
    p = aug.DSAParams()
    assert (p.scale, p.rotate, p.crop, p.cutout, p.flip) == (1.2, 15.0, 0.125, 0.5, 0.5)
    assert (p.brightness, p.saturation, p.contrast) == (1.0, 2.0, 0.5)
    hash(p)  # usable as a static argument
    with pytest.raises(UserError, match=r"scale=0\.9"):
        aug.DSAParams(scale=0.9)


# ---- each op with explicit parameters, against hand-computed results ----


def test_flip_horizontal_reverses_columns_where_asked():
    x = _images(2, 3, 4)
    out = aug.flip_horizontal(x, jnp.array([True, False]))
    np.testing.assert_array_equal(out[0], x[0, :, ::-1])
    np.testing.assert_array_equal(out[1], x[1])
    np.testing.assert_array_equal(aug.flip_horizontal(x, True), x[:, :, ::-1])


def test_translate_moves_pixels_and_fills_zero():
    x = jnp.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], jnp.float32)[None, :, :, None]
    down = aug.translate(x, 1, 0)[0, ..., 0]  # out[i, j] = x[i + 1, j]
    np.testing.assert_array_equal(down, [[4, 5, 6], [7, 8, 9], [0, 0, 0]])
    right = aug.translate(x, 0, -1)[0, ..., 0]  # out[i, j] = x[i, j - 1]
    np.testing.assert_array_equal(right, [[0, 1, 2], [0, 4, 5], [0, 7, 8]])
    both = aug.translate(jnp.concatenate([x, x]), jnp.array([-2, 0]), jnp.array([2, 0]))[..., 0]
    np.testing.assert_array_equal(both[0], [[0, 0, 0], [0, 0, 0], [3, 0, 0]])
    np.testing.assert_array_equal(both[1], x[0, ..., 0])


def test_cut_out_zeroes_the_square_of_the_reference_convention():
    x = jnp.ones((2, 6, 6, 2))
    out = aug.cut_out(x, jnp.array([2, 0]), jnp.array([3, 0]), size=(3, 3))
    expected = np.ones((6, 6))
    expected[1:4, 2:5] = 0  # rows [2 - 3 // 2, + 3), columns [3 - 1, + 3)
    np.testing.assert_array_equal(out[0, ..., 0], expected)
    np.testing.assert_array_equal(out[0, ..., 1], expected)
    expected = np.ones((6, 6))
    expected[:2, :2] = 0  # clipped at the corner
    np.testing.assert_array_equal(out[1, ..., 0], expected)


def test_random_cutout_hole_is_half_the_side():
    x = jnp.ones((1, 8, 8, 1))
    sides = set()
    for seed in range(12):
        zeros = (
            np.asarray(aug.augment(x, jax.random.key(seed), strategy="cutout", siamese=True))[0, ..., 0] == 0
        )
        rows, cols = np.nonzero(zeros.any(1))[0], np.nonzero(zeros.any(0))[0]
        assert zeros.sum() == len(rows) * len(cols)  # one rectangle
        assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
        sides.update((len(rows), len(cols)))
    assert max(sides) == 4 and min(sides) >= 2  # round(0.5 * 8), clipped by at most half


def test_brightness_adds_a_constant():
    x = _images(2)
    np.testing.assert_allclose(aug.adjust_brightness(x, 0.3), x + 0.3, atol=1e-6)
    out = aug.adjust_brightness(x, jnp.array([0.5, -1.0]))
    np.testing.assert_allclose(out[1], x[1] - 1.0, atol=1e-6)


def test_saturation_keeps_the_channel_mean():
    x = _images(2)
    out = aug.adjust_saturation(x, jnp.array([0.0, 1.7]))
    np.testing.assert_allclose(out.mean(-1), x.mean(-1), atol=1e-5)
    np.testing.assert_allclose(out[0], jnp.broadcast_to(x[0].mean(-1, keepdims=True), x[0].shape), atol=1e-5)
    np.testing.assert_allclose(
        out[1] - out[1].mean(-1, keepdims=True), 1.7 * (x[1] - x[1].mean(-1, keepdims=True)), atol=1e-5
    )
    grey = _images(1, c=1)
    np.testing.assert_allclose(aug.adjust_saturation(grey, 1.9), grey, atol=1e-6)


def test_contrast_keeps_the_image_mean():
    x = _images(2)
    out = aug.adjust_contrast(x, jnp.array([0.0, 1.5]))
    np.testing.assert_allclose(out.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-5)
    np.testing.assert_allclose(out[0], jnp.full(x[0].shape, x[0].mean()), atol=1e-5)
    np.testing.assert_allclose(out[1] - out[1].mean(), 1.5 * (x[1] - x[1].mean()), atol=1e-5)


def test_warp_point_reflection_and_per_image_matrices():
    x = _images(2, 4, 5)
    np.testing.assert_array_equal(aug.warp(x, -jnp.eye(2), jnp.zeros(2)), x[:, ::-1, ::-1])
    matrices = jnp.stack([jnp.eye(2), jnp.array([[1.0, 0.0], [0.0, -1.0]])])
    out = aug.warp(x, matrices, jnp.array([[1.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_array_equal(out[0, :-1], x[0, 1:])  # shifted up one row, last row zero
    np.testing.assert_array_equal(out[0, -1], 0)
    np.testing.assert_array_equal(out[1], x[1, :, ::-1])


def test_unit_scale_and_zero_rotation_are_the_identity():
    x = _images(2, 6, 7)
    np.testing.assert_array_equal(aug.scale(x, 1.0, 1.0), x)
    np.testing.assert_allclose(aug.rotate(x, 0.0), x, atol=1e-6)
    np.testing.assert_allclose(aug.rotate(x, jnp.zeros(2)), x, atol=1e-6)


def test_rotate_quarter_turn_is_rot90():
    x = _images(2, 5, 5)
    np.testing.assert_allclose(aug.rotate(x, jnp.pi / 2), jnp.rot90(x, 1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(aug.rotate(x, -jnp.pi / 2), jnp.rot90(x, -1, axes=(1, 2)), atol=1e-5)


def test_rotate_and_scale_match_pytorch_affine_grid_grid_sample():
    # F.grid_sample(x, F.affine_grid(theta, x.shape)) with PyTorch 2.13 defaults (bilinear, zeros,
    # align_corners=False) on a 4 x 5 ramp; rotation theta = [[cos, -sin, 0], [sin, cos, 0]].
    rotated = [
        [0.3823, 1.3279, 2.88908, 5.02649, 3.58556],
        [3.02152, 5.15894, 7.29636, 9.43378, 10.38134],
        [6.80657, 9.56622, 11.70364, 13.84106, 15.97848],
        [6.58375, 13.9735, 16.11092, 14.4531, 10.9068],
    ]
    np.testing.assert_allclose(aug.rotate(_ramp(4, 5), 0.3)[0, ..., 0], rotated, atol=1e-4)
    # theta = [[1.25, 0, 0], [0, 0.8, 0]]: 1.25 on the width, 0.8 on the height.
    scaled = [
        [0.75, 2.25, 3.5, 4.75, 2.75],
        [2.75, 6.25, 7.5, 8.75, 4.75],
        [4.75, 10.25, 11.5, 12.75, 6.75],
        [6.75, 14.25, 15.5, 16.75, 8.75],
    ]
    np.testing.assert_allclose(aug.scale(_ramp(4, 5), 0.8, 1.25)[0, ..., 0], scaled, atol=1e-4)


def test_rotate_samples_a_linear_image_exactly_inside():
    h, w, angle = 6, 9, 0.25
    out = aug.rotate(_ramp(h, w), angle)[0, ..., 0]
    # affine_grid's normalised pixel centres, rotated, mapped back to pixels (align_corners=False).
    yn, xn = np.meshgrid((2 * np.arange(h) + 1) / h - 1, (2 * np.arange(w) + 1) / w - 1, indexing="ij")
    xs = ((np.cos(angle) * xn - np.sin(angle) * yn + 1) * w - 1) / 2
    ys = ((np.sin(angle) * xn + np.cos(angle) * yn + 1) * h - 1) / 2
    inside = (ys >= 0) & (ys <= h - 1) & (xs >= 0) & (xs <= w - 1)
    assert inside.sum() > h * w // 2
    np.testing.assert_allclose(np.asarray(out)[inside], (ys * w + xs)[inside], atol=1e-4)
    assert np.all(np.asarray(out)[(ys < -1) | (ys > h) | (xs < -1) | (xs > w)] == 0)


# ---- augment: siamese and per-image semantics ----


@pytest.mark.parametrize("strategy", OP_NAMES)
def test_siamese_same_key_same_transform_whatever_the_batch(strategy):
    a, b = _images(2, seed=1), _images(3, seed=2)
    b = b.at[1:].set(a)  # batch b holds batch a after one other image
    for seed in range(3):
        run = functools.partial(aug.augment, key=jax.random.key(seed), strategy=strategy, siamese=True)
        out_a, out_b = run(a), run(b)
        np.testing.assert_allclose(out_b[1:], out_a, atol=1e-5)
        np.testing.assert_allclose(run(jnp.stack([a[0], a[0]]))[1], out_a[0], atol=1e-6)


def test_siamese_a_different_key_gives_a_different_transform():
    x = _images(2)
    outs = [aug.augment(x, jax.random.key(s), strategy=aug.STRATEGY_RGB, siamese=True) for s in range(4)]
    assert all(not np.allclose(outs[0], other) for other in outs[1:])


@pytest.mark.parametrize("strategy", OP_NAMES)
def test_per_image_mode_draws_parameters_per_image(strategy):
    same = jnp.broadcast_to(_images(1), (4, 8, 8, 3))
    out = aug.augment(same, jax.random.key(0), strategy=strategy, siamese=False)
    distinct = {np.asarray(image).tobytes() for image in out}
    assert len(distinct) > 1


def test_none_strategy_is_the_identity():
    x = _images(2)
    np.testing.assert_array_equal(aug.augment(x, jax.random.key(0), strategy="none", siamese=True), x)


def _per_class(images, keys):
    run = lambda x, k: aug.augment(x, k, strategy=aug.STRATEGY_RGB, siamese=True)
    return jax.vmap(run)(images, keys)


def test_vmap_over_classes_equals_one_call_per_class_and_is_differentiable():
    images, keys = _images(4).reshape(2, 2, 8, 8, 3), jax.random.split(jax.random.key(7), 2)
    batched = jax.jit(_per_class)(images, keys)
    for c in range(2):
        expected = aug.augment(images[c], keys[c], strategy=aug.STRATEGY_RGB, siamese=True)
        np.testing.assert_allclose(batched[c], expected, atol=1e-5)
    grad = jax.grad(lambda x: _per_class(x, keys).sum())(images)
    assert bool(jnp.all(jnp.isfinite(grad))) and bool(jnp.all(jnp.abs(grad).sum((1, 2, 3, 4)) > 0))


# Each op with one parameter set (a scalar) or one per image ([2]); v is 1 or [1, 0.6].
EXPLICIT_OPS = {
    "brightness": lambda x, v: aug.adjust_brightness(x, 0.3 * v),
    "saturation": lambda x, v: aug.adjust_saturation(x, 1.5 * v),
    "contrast": lambda x, v: aug.adjust_contrast(x, 1.2 * v),
    "crop": lambda x, v: aug.translate(x, jnp.round(2 * v).astype(jnp.int32), -1),
    "cutout": lambda x, v: aug.cut_out(x, 3, jnp.round(4 * v).astype(jnp.int32), size=(4, 4)),
    "flip": lambda x, v: aug.flip_horizontal(x, v > 0.8),
    "scale": lambda x, v: aug.scale(x, 1.1 * v, 0.9),
    "rotate": lambda x, v: aug.rotate(x, 0.2 * v),
}


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("op", list(EXPLICIT_OPS))
def test_gradients_reach_the_pixels(op, per_image):
    x, v = _images(2), jnp.array([1.0, 0.6]) if per_image else 1.0
    grad = jax.grad(lambda x: EXPLICIT_OPS[op](x, v).sum())(x)
    assert grad.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(grad))) and bool(jnp.all(jnp.abs(grad).sum((1, 2, 3)) > 0))
