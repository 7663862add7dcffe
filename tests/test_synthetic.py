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


# ---- a file is checked against the dataset before anything uses it ----


def _digits_info():
    from jaxdd.data import dataset_info

    return dataset_info("digits")


def _save(path, images, labels, **extra):
    info = _digits_info()
    extra.setdefault("mean", np.asarray(info.mean, np.float32))
    extra.setdefault("std", np.asarray(info.std, np.float32))
    np.savez(path, images=images, labels=labels, **extra)
    return path


def _images(n, shape=(8, 8, 1)):
    return np.random.default_rng(0).normal(size=(n, *shape)).astype(np.float32)


def _labels(*values):
    return np.asarray(values, np.int32)


@pytest.mark.parametrize(
    ("images", "labels", "expected"),
    [
        (_images(15), np.arange(15, dtype=np.int32), "labels span 0..14, but 'digits' has 10 classes"),
        (_images(10), np.arange(-1, 9, dtype=np.int32), "labels span -1..8"),
        (_images(10), np.repeat(np.arange(5), 2).astype(np.int32), "no image of class 5, 6, 7, 8, 9"),
        (_images(10), np.arange(7, dtype=np.int32), "10 images but 7 labels"),
        (_images(11), _labels(0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9), "classes hold between 1 and 2 images"),
        (_images(20), np.repeat(np.arange(10), 2).astype(np.int32), "2 images per class, but ipc=1"),
        (np.full((10, 8, 8, 1), np.nan, np.float32), np.arange(10, dtype=np.int32), "640 NaN and 0 infinite"),
        (np.where(np.arange(640).reshape(10, 8, 8, 1) == 70, np.inf, 0).astype(np.float32),
         np.arange(10, dtype=np.int32), "0 NaN and 1 infinite of 640 pixel values (first in image 1)"),
        (_images(10, (28, 28, 1)), np.arange(10, dtype=np.int32), "[10, 28, 28, 1], but a set of 'digits'"),
        (_images(10)[..., 0], np.arange(10, dtype=np.int32), "images have shape [10, 8, 8]"),
        ((_images(10) * 10).astype(np.int64), np.arange(10, dtype=np.int32), "images are int64, not float"),
        (_images(10), np.arange(10, dtype=np.float32), "labels are float32 of shape [10]"),
        (_images(10), np.ones(10, bool), "labels are bool"),
        (_images(10), np.arange(10, dtype=np.int32)[:, None], "labels are int32 of shape [10, 1]"),
        (_images(0), np.zeros(0, np.int32), "holds no images"),
    ],
)  # fmt: skip
def test_a_malformed_set_is_refused_naming_the_file_and_the_fix(tmp_path, images, labels, expected):
    path = _save(tmp_path / "bad.npz", images, labels)
    with pytest.raises(UserError) as error:
        synthetic.load_npz(path, info=_digits_info(), ipc=1)
    assert str(error.value).startswith(repr(str(path)))
    assert expected in str(error.value)


def test_a_set_of_another_normalisation_is_refused(tmp_path):
    path = _save(tmp_path / "s.npz", _images(10), np.arange(10, dtype=np.int32), mean=np.zeros(1, np.float32))
    with pytest.raises(UserError, match=r"normalised with mean \(0\), but 'digits' uses mean \(0.3051\)"):
        synthetic.load_npz(path, info=_digits_info())
    synthetic.load_npz(path)  # without a dataset to compare with, only the arrays are checked


def test_files_that_are_not_a_readable_npz_are_refused(tmp_path):
    good = _save(tmp_path / "good.npz", _images(10), np.arange(10, dtype=np.int32))
    data = good.read_bytes()
    cases = {
        "truncated.npz": (data[: len(data) // 2], "is damaged (BadZipFile"),
        "crc.npz": (data[:600] + bytes(16) + data[616:], "is damaged (BadZipFile: Bad CRC-32"),
        "text.npz": (
            b"hello, not a zip\n",
            "is not an .npz file (a zip of .npy arrays; it starts with b'hell')",
        ),
        "empty.npz": (b"", "is not an .npz file"),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError) as error:
            synthetic.load_npz(tmp_path / name, info=_digits_info())
        assert expected in str(error.value), name
    np.save(tmp_path / "array.npy", _images(2))
    with pytest.raises(UserError, match=r"is not an .npz file"):
        synthetic.load_npz(tmp_path / "array.npy")
    with pytest.raises(UserError, match="a folder, not a file"):
        synthetic.load_npz(tmp_path)
    np.savez(tmp_path / "meta.npz", images=_images(10), labels=np.arange(10), meta=np.asarray("{not json"))
    with pytest.raises(UserError, match="its meta entry is not JSON"):
        synthetic.load_npz(tmp_path / "meta.npz")


def test_object_arrays_are_never_unpickled(tmp_path):
    objects = np.empty(10, dtype=object)
    objects[:] = list(range(10))
    np.savez(tmp_path / "objects.npz", images=_images(10), labels=objects)
    with pytest.raises(UserError) as error:
        synthetic.load_npz(tmp_path / "objects.npz")
    message = str(error.value)
    assert "holds object arrays (labels)" in message and "allow_pickle=False" in message


def test_a_valid_set_in_another_order_or_dtype_loads_class_major(tmp_path):
    images = _images(20).astype(np.float64)
    labels = np.tile(np.arange(10, dtype=np.int64), 2)  # 0..9, 0..9
    path = _save(tmp_path / "s.npz", images, labels, meta=np.asarray('{"ipc": 2}'))
    loaded, extra = synthetic.load_npz(path, info=_digits_info(), ipc=2)
    assert loaded.images.dtype == np.float32 and loaded.labels.dtype == np.int32
    np.testing.assert_array_equal(loaded.labels, np.repeat(np.arange(10), 2))
    np.testing.assert_allclose(loaded.class_images(3), images[[3, 13]].astype(np.float32))
    assert extra["meta"] == {"ipc": 2} and loaded.ipc == 2


def test_an_npz_whose_members_are_not_npy_arrays_is_named_damaged(tmp_path):
    import zipfile

    path = tmp_path / "garbage.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", b"garbage")
        archive.writestr("labels.npy", b"garbage")
    with pytest.raises(UserError, match=r"garbage\.npz.*damaged.*not \.npy arrays"):
        synthetic.load_npz(path)
