"""ZCA whitening (jaxdd.data.zca): the transform against a float64 NumPy computation of the reference's
formula, its properties (white covariance, exact inverse, flattening order), the fit on training images
only, the run's files and the errors before any work."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import data, run_eval, synthetic
from jaxdd import run as driver
from jaxdd.config import base_config, validate
from jaxdd.data import zca
from jaxdd.data.real import hold_out
from jaxdd.errors import UserError


def _images(n=400, shape=(4, 4, 2), seed=0):
    """Correlated pixels in [0, 1]: a low-rank signal plus noise, so Σ has small eigenvalues for ε."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(3, int(np.prod(shape))))
    flat = 0.5 + 0.1 * rng.normal(size=(n, 3)) @ basis + 0.01 * rng.normal(size=(n, basis.shape[1]))
    return np.clip(flat, 0, 1).reshape(n, *shape).astype(np.float32)


def _reference_matrix(images, eps):
    """W = U (S + ε)^(-1/2) Uᵀ of the unbiased covariance, in float64 from an SVD (kornia's route)."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    centred = flat - flat.mean(0)
    u, s, _ = np.linalg.svd(centred.T @ centred / (len(flat) - 1))
    return (u / np.sqrt(s + eps)) @ u.T


@pytest.mark.parametrize("eps", [0.1, 1e-3])
def test_the_matrix_is_the_references_formula(eps):
    images = _images()
    whitening = zca.fit(jnp.asarray(images), eps)
    np.testing.assert_allclose(whitening.matrix, _reference_matrix(images, eps), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(whitening.mean, images.reshape(len(images), -1).mean(0), atol=1e-6)
    np.testing.assert_allclose(whitening.matrix @ whitening.inverse, np.eye(32), atol=1e-3)


def test_whitened_training_images_have_the_covariance_the_regulariser_leaves():
    images = _images()
    eps = 1e-3
    whitened = np.asarray(zca.whiten(zca.fit(jnp.asarray(images), eps), jnp.asarray(images)), np.float64)
    flat = whitened.reshape(len(images), -1)
    np.testing.assert_allclose(flat.mean(0), 0, atol=1e-4)
    # Cov(whitened) = U diag(S / (S + ε)) Uᵀ: ≤ 1 in every direction, ≈ 1 where S ≫ ε
    pixels = images.reshape(len(images), -1).astype(np.float64)
    u, s, _ = np.linalg.svd(np.cov(pixels, rowvar=False))
    expected = (u * (s / (s + eps))) @ u.T
    np.testing.assert_allclose(np.cov(flat, rowvar=False), expected, atol=2e-3)
    assert np.linalg.eigvalsh(np.cov(flat, rowvar=False)).max() <= 1 + 1e-3


def test_unwhiten_inverts_whiten_and_the_flattening_order_does_not_matter():
    images = _images()
    whitening = zca.fit(jnp.asarray(images))
    back = zca.unwhiten(whitening, zca.whiten(whitening, jnp.asarray(images)))
    np.testing.assert_allclose(back, images, atol=1e-4)
    # the reference flattens NCHW: whitening there is whitening here, transposed
    nchw = images.transpose(0, 3, 1, 2)
    in_nchw = zca.whiten(zca.fit(jnp.asarray(nchw)), jnp.asarray(nchw))
    np.testing.assert_allclose(
        np.asarray(in_nchw).transpose(0, 2, 3, 1), zca.whiten(whitening, jnp.asarray(images)), atol=1e-3
    )


def test_whiten_real_fits_on_the_training_images_only(tiny_real):
    settings = zca.ZCASettings(enabled=True, eps=0.1)
    whitened = zca.whiten_real(tiny_real, settings)
    assert whitened.split == "train+zca0.1" and whitened.mean == (0.0,) and whitened.std == (1.0,)
    pixels = np.asarray(tiny_real.train_images) * 0.25 + 0.5  # the fixture's mean/std undone
    np.testing.assert_allclose(whitened.whitening.matrix, _reference_matrix(pixels, 0.1), atol=2e-3)
    np.testing.assert_allclose(zca.unwhiten(whitened.whitening, whitened.test_images),
                               np.asarray(tiny_real.test_images) * 0.25 + 0.5, atol=1e-4)  # fmt: skip
    other_test = zca.whiten_real(tiny_real.replace(test_images=tiny_real.test_images[::-1]), settings)
    np.testing.assert_array_equal(other_test.train_images, whitened.train_images)
    # after a hold-out, the held-out images do not shape the transform and the split names both
    rest, _, _ = hold_out(tiny_real, 2, 0)
    whitened_rest = zca.whiten_real(rest, settings)
    assert whitened_rest.split == "train-minus-val2-seed0+zca0.1"
    rest_pixels = np.asarray(rest.train_images) * 0.25 + 0.5
    assert len(rest_pixels) < len(pixels)
    np.testing.assert_allclose(whitened_rest.whitening.matrix, _reference_matrix(rest_pixels, 0.1), atol=2e-3)
    assert zca.whiten_real(tiny_real, zca.ZCASettings()) is tiny_real  # off: untouched


def _config(**zca_values):
    config = base_config()
    config.update({"dataset": "digits", "method": "random", "ipc": 2})
    config.eval.archs, config.eval.baselines = "", ""
    config.zca.update(zca_values)
    return config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"zca": {"enabled": True, "eps": 0.0}}, r"zca\.eps=0\.0 must be > 0"),
        ({"zca": {"enabled": True, "eps": float("nan")}}, r"zca\.eps=nan must be > 0"),
        ({"zca": {"enabled": True}, "dataset": "tiny_imagenet"}, r"D = 12288 .*--config\.zca\.enabled=False"),
        ({"zca": {"enabled": True}, "method": "sre2l", "model": "ConvNetBN"}, r"'sre2l'.*enabled=False"),
    ],
)
def test_bad_whitening_settings_are_refused_before_any_work(change, message):
    config = _config()
    config.update(change)
    with pytest.raises(UserError, match=message):
        validate(config)


def test_a_whitened_run_saves_whitened_images_and_evaluates_only_against_whitened_data(tmp_path):
    driver.run(_config(enabled=True), tmp_path, log=lambda _: None)
    synset, extra = synthetic.load_npz(tmp_path / "synset.npz", info=data.dataset_info("digits"))
    assert extra["meta"]["zca_eps"] == 0.1 and list(extra["mean"]) == [0.0]
    assert json.loads(np.load(tmp_path / "synset_nchw.npz")["meta"].item())["zca_eps"] == 0.1
    assert (tmp_path / "synset.png").is_file()
    # the random-real set: whitened real digits, whose un-whitened pixels are k/16
    real = run_eval.load_real(_config(enabled=True), lambda _: None)
    pixels = np.asarray(zca.unwhiten(real.whitening, synset.images)) * 16
    np.testing.assert_allclose(pixels, np.round(pixels), atol=2e-2)
    with pytest.raises(UserError, match=r"ZCA-whitened \(eps 0\.1\) images .* --config\.zca\.enabled=True"):
        run_eval.evaluate_existing(_config(), tmp_path)
    unwhitened = tmp_path / "plain"
    driver.run(_config(), unwhitened, log=lambda _: None)
    with pytest.raises(UserError, match=r"mean/std-normalised images .* are ZCA-whitened \(eps 0\.5\)"):
        run_eval.evaluate_existing(_config(enabled=True, eps=0.5), unwhitened)


@pytest.mark.parametrize(("enabled", "per_class"), [(False, 0), (True, 0), (True, 5)])
def test_the_split_validation_checks_caches_under_is_the_one_the_loaded_data_has(enabled, per_class):
    """Teachers and experts are looked up under `training_split` before the data loads and stored under
    the loaded `RealData.split`: a whitened run must never reuse a cache trained on other images."""
    config = _config(enabled=enabled)
    config.holdout.per_class = per_class
    assert zca.training_split(config) == run_eval.load_real(config, lambda _: None).split
