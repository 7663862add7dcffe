"""The synthetic set: class-major layout, real initialisation and the npz round trip."""

import jax
import numpy as np
import pytest

from jaxdd import synthetic
from jaxdd.errors import UserError


def test_init_real_draws_distinct_real_images_of_each_class(tiny_real):
    synset = synthetic.init_real(tiny_real, 4, jax.random.PRNGKey(0))
    assert synset.images.shape == (12, 8, 8, 1)
    np.testing.assert_array_equal(synset.labels, np.repeat(np.arange(3), 4))
    train = np.asarray(tiny_real.train_images).reshape(36, -1)
    train_labels = np.asarray(tiny_real.train_labels)
    for image, label in zip(
        np.asarray(synset.images).reshape(12, -1), np.asarray(synset.labels), strict=True
    ):
        matches = np.flatnonzero((train == image).all(axis=1))
        assert len(matches) == 1 and train_labels[matches[0]] == label
    assert len({tuple(row) for row in np.asarray(synset.images).reshape(12, -1)}) == 12
    np.testing.assert_array_equal(synset.class_images(1), synset.images[4:8])


def test_init_real_is_a_function_of_the_key(tiny_real):
    a = synthetic.init_real(tiny_real, 3, jax.random.PRNGKey(5))
    b = synthetic.init_real(tiny_real, 3, jax.random.PRNGKey(5))
    c = synthetic.init_real(tiny_real, 3, jax.random.PRNGKey(6))
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)


def test_npz_round_trip(tmp_path, tiny_real):
    synset = synthetic.init_noise(tiny_real, 2, jax.random.PRNGKey(0))
    synthetic.save_npz(tmp_path / "s.npz", synset, mean=(0.5,), std=(0.25,), meta={"ipc": 2})
    loaded, extra = synthetic.load_npz(tmp_path / "s.npz")
    np.testing.assert_array_equal(loaded.images, synset.images)
    np.testing.assert_array_equal(loaded.labels, synset.labels)
    assert extra == {"mean": (0.5,), "std": (0.25,), "meta": {"ipc": 2}}
    assert loaded.ipc == 2 and loaded.num_classes == 3
    with pytest.raises(UserError, match="No synthetic set"):
        synthetic.load_npz(tmp_path / "missing.npz")
