"""Tests of the dataset registry and its sources, on files the tests generate (no network)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import pathlib
import tarfile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdd.data import (
    cifar,
    dataset_info,
    dataset_names,
    digits,
    idx,
    load,
    mnist,
    registry,
    sample_class_batch,
    tfds_sources,
    tiny_imagenet,
)
from jaxdd.data.real import class_indices
from jaxdd.errors import UserError

DEBIAN_FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")


# --- helpers: datasets written in their published formats ------------------------------------------


def random_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def balanced_labels(num_classes: int, per_class: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


def write_idx(path, array: np.ndarray) -> None:
    """An IDX file as the format's description gives it (written here, independently of the reader):
    two zero bytes, type 0x08 (unsigned byte), the number of dimensions, each size as a big-endian uint32,
    then the data; gzip-compressed when `path` ends in .gz."""
    array = np.ascontiguousarray(array, np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def write_idx_dataset(
    directory: pathlib.Path, per_class: int = 3, *, gz: bool = True
) -> dict[str, np.ndarray]:
    """MNIST-style IDX files for 10 classes (`per_class` train, 1 test each); returns the arrays."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_x": random_images(10 * per_class, (28, 28), 0),
        "train_y": balanced_labels(10, per_class, 1).astype(np.uint8),
        "test_x": random_images(10, (28, 28), 2),
        "test_y": np.arange(10, dtype=np.uint8),
    }
    suffix = ".gz" if gz else ""
    for (stem_x, stem_y), split in zip(idx.SPLIT_FILES.values(), ("train", "test"), strict=True):
        write_idx(directory / f"{stem_x}{suffix}", arrays[f"{split}_x"])
        write_idx(directory / f"{stem_y}{suffix}", arrays[f"{split}_y"])
    return arrays


def rows_by_class(images: np.ndarray, labels: np.ndarray) -> dict[int, list[bytes]]:
    """Per class, the sorted raw bytes of its images: compares datasets regardless of example order."""
    images, labels = np.asarray(images), np.asarray(labels)
    return {int(c): sorted(image.tobytes() for image in images[labels == c]) for c in np.unique(labels)}


def pixels(real_images: jax.Array, mean, std, pixel_max: float = 255.0) -> np.ndarray:
    """Undoes the normalisation: the uint8 pixels `RealData` was built from."""
    x = np.asarray(real_images, np.float64) * np.asarray(std) + np.asarray(mean)
    return np.round(x * pixel_max).astype(np.uint8)


def with_counts(name: str, **changes) -> registry.DatasetInfo:
    """The registry entry of `name` with a few fields changed, to load tiny generated copies."""
    return dataclasses.replace(dataset_info(name), **changes)


# --- registry ----------------------------------------------------------------------------------------


def test_registry_entries_are_consistent():
    assert dataset_names() == ["cifar10", "cifar100", "digits", "fashion_mnist", "mnist", "tiny_imagenet"]
    for name in dataset_names():
        info = dataset_info(name)
        assert info.name == name
        assert len(info.mean) == len(info.std) == info.image_shape[-1]
        assert info.min_class_count > 0
    assert dataset_info("fashion_mnist").mean == (0.2861,) and dataset_info("fashion_mnist").std == (0.3530,)
    assert dataset_info("mnist").mean == (0.1307,) and dataset_info("mnist").std == (0.3081,)
    assert dataset_info("cifar10").std == (0.2023, 0.1994, 0.2010)
    assert dataset_info("cifar100").mean == (0.5071, 0.4866, 0.4409)
    assert dataset_info("tiny_imagenet").mean == (0.485, 0.456, 0.406)
    assert dataset_info("tiny_imagenet").image_shape == (64, 64, 3)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UserError, match=r"Unknown dataset 'cifar'.*cifar10, cifar100, digits"):
        dataset_info("cifar")
    with pytest.raises(UserError, match="Valid names"):
        load("imagenet")


# --- digits ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_real():
    return load("digits")


def test_digits_split_is_fixed_stratified_and_disjoint():
    first, second = digits.load_digits(), digits.load_digits()
    for a, b in zip(first[:4], second[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        np.bincount(first.train_labels), [143, 146, 142, 147, 145, 146, 145, 144, 140, 144]
    )
    np.testing.assert_array_equal(np.bincount(first.test_labels), [35, 36, 35, 36, 36, 36, 36, 35, 34, 36])
    assert first.train_images.shape == (1442, 8, 8, 1) and first.test_images.shape == (355, 8, 8, 1)
    assert first.train_images.dtype == np.uint8 and first.train_images.max() == 16
    # Every fifth image of a class is held out: ranks 4, 9, ... within each class. Class 0 sits at
    # rows 0 2 3 5 6 7 9 10, so its fifth image is row 6; class 1 has only three.
    labels = np.array([0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(digits.held_out_mask(labels), [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])


def test_digits_normalisation_constants_match_its_training_split(digits_real):
    x = np.asarray(digits_real.train_images)
    assert abs(x.mean()) < 1e-3 and abs(x.std() - 1) < 1e-3
    assert digits_real.image_shape == (8, 8, 1) and digits_real.min_class_count == 140
    assert digits_real.class_names == tuple(str(d) for d in range(10))


# --- sample_class_batch --------------------------------------------------------------------------------


def test_sample_class_batch_is_distinct_of_one_class_and_pure_in_the_key(digits_real):
    real, key = digits_real, jax.random.key(0)
    for label in (0, 8):
        rows = np.asarray(class_indices(real, jnp.int32(label), key, 32))
        assert len(set(rows.tolist())) == 32
        assert np.all(np.asarray(real.train_labels)[rows] == label)
        batch = sample_class_batch(real, jnp.int32(label), key, 32)
        np.testing.assert_array_equal(batch, np.asarray(real.train_images)[rows])
    same = sample_class_batch(real, jnp.int32(3), key, 32)
    np.testing.assert_array_equal(same, sample_class_batch(real, jnp.int32(3), key, 32))
    other = sample_class_batch(real, jnp.int32(3), jax.random.key(1), 32)
    assert not np.array_equal(same, other)
    jitted = jax.jit(sample_class_batch, static_argnums=3)(real, jnp.int32(3), key, 32)
    np.testing.assert_array_equal(same, jitted)


def test_sample_class_batch_of_a_whole_class_is_a_permutation_of_it(digits_real):
    real, count = digits_real, 140  # class 8, the smallest
    start = int(real.class_start[8])
    rows = np.asarray(class_indices(real, jnp.int32(8), jax.random.key(7), count))
    np.testing.assert_array_equal(np.sort(rows), np.arange(start, start + count))


# --- IDX (MNIST, Fashion-MNIST) --------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_load_and_normalise_exactly(tmp_path, gz):
    arrays = write_idx_dataset(tmp_path, per_class=3, gz=gz)
    real = registry.load_info(with_counts("fashion_mnist", min_class_count=3), data_dir=str(tmp_path))
    assert real.image_shape == (28, 28, 1) and real.class_names[0] == "T-shirt/top"
    np.testing.assert_array_equal(real.class_count, np.full(10, 3))
    order = np.argsort(arrays["train_y"], kind="stable")
    expected = (arrays["train_x"][order, :, :, None] / 255.0 - 0.2861) / 0.3530
    np.testing.assert_allclose(real.train_images, expected, atol=1e-5)
    np.testing.assert_array_equal(real.train_labels, arrays["train_y"][order])
    np.testing.assert_allclose(
        real.test_images, (arrays["test_x"][..., None] / 255.0 - 0.2861) / 0.3530, atol=1e-5
    )


def test_idx_files_are_found_in_a_named_subfolder(tmp_path):
    write_idx_dataset(tmp_path / "mnist", per_class=2)
    real = registry.load_info(with_counts("mnist", min_class_count=2), data_dir=str(tmp_path))
    assert real.train_images.shape == (20, 28, 28, 1) and real.class_names[3] == "3"


def test_idx_reader_decodes_a_hand_written_file(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (2, 3, 4))
    (tmp_path / "x.gz").write_bytes(gzip.compress(header + data.tobytes()))
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "x.gz", magic=idx.IMAGES_MAGIC), data)
    write_idx(tmp_path / "y.gz", data)
    assert gzip.decompress((tmp_path / "y.gz").read_bytes()) == header + data.tobytes()


def test_corrupt_idx_files_name_the_file_and_the_fix(tmp_path):
    write_idx_dataset(tmp_path, per_class=1)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    good = images.read_bytes()
    images.write_bytes(labels.read_bytes())  # a labels file where the images belong: wrong magic
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz has IDX magic number 0x00000801") as e:
        load("fashion_mnist", data_dir=str(tmp_path))
    assert "Replace the file" in str(e.value) and "apt-get install -y dataset-fashion-mnist" in str(e.value)
    images.write_bytes(good[: len(good) // 2])  # a truncated download
    with pytest.raises(UserError, match="not a valid gzip file"):
        load("fashion_mnist", data_dir=str(tmp_path))
    images.write_bytes(gzip.compress(gzip.decompress(good)[:-5]))  # valid gzip, missing pixels
    with pytest.raises(UserError, match=r"declares dimensions \(10, 28, 28\)"):
        load("fashion_mnist", data_dir=str(tmp_path))


def test_incomplete_data_fails_against_the_registry_counts(tmp_path):
    write_idx_dataset(tmp_path, per_class=3)
    with pytest.raises(UserError, match="3 training images, fewer than the 6000"):
        load("fashion_mnist", data_dir=str(tmp_path))


def test_missing_mnist_names_every_way_to_get_it(tmp_path):
    with pytest.raises(UserError) as e:
        load("mnist", data_dir=str(tmp_path))
    message = str(e.value)
    assert "no IDX files in" in message and str(tmp_path) in message
    assert "train-images-idx3-ubyte.gz" in message and "--config.data_dir=FOLDER" in message
    assert "tfds.builder('mnist'" in message and "file_format='array_record'" in message
    assert "pip install tensorflow-cpu" in message


def test_missing_fashion_mnist_suggests_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "FASHION_MNIST", dataclasses.replace(mnist.FASHION_MNIST, system_dirs=()))
    with pytest.raises(UserError, match="apt-get install -y dataset-fashion-mnist"):
        load("fashion_mnist", data_dir=str(tmp_path))


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_debian_fashion_mnist_is_complete():
    real = load("fashion_mnist")
    assert real.train_images.shape == (60000, 28, 28, 1) and real.test_images.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(real.class_count, np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(np.asarray(real.test_labels)), np.full(10, 1000))
    assert abs(float(jnp.mean(real.train_images))) < 0.01  # the reference constants fit this data


# --- CIFAR: the official binary archive -----------------------------------------------------------------


def cifar_records(images: np.ndarray, labels: list[np.ndarray]) -> bytes:
    """The official binary layout: label byte(s), then the red, green and blue planes."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([*(lab[:, None] for lab in labels), planes], axis=1).astype(np.uint8).tobytes()


def write_cifar10_archive(path: pathlib.Path, per_batch_class: int = 1) -> dict[str, np.ndarray]:
    files, arrays = {}, {"train_x": [], "train_y": []}
    for i, name in enumerate(cifar.CIFAR10.train_files):
        x, y = random_images(10 * per_batch_class, (32, 32, 3), i), balanced_labels(10, per_batch_class, i)
        files[name] = cifar_records(x, [y])
        arrays["train_x"].append(x)
        arrays["train_y"].append(y)
    arrays = {k: np.concatenate(v) for k, v in arrays.items()}
    arrays["test_x"], arrays["test_y"] = random_images(10, (32, 32, 3), 9), np.arange(10)
    files["test_batch.bin"] = cifar_records(arrays["test_x"], [arrays["test_y"]])
    files["batches.meta.txt"] = "\n".join(f"class{c}" for c in range(10)).encode() + b"\n\n"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return arrays


def test_cifar_records_decode_in_the_published_plane_order():
    record = np.zeros(1 + 3072, np.uint8)
    record[0] = 7  # label
    record[1 + 1] = 255  # red plane, row 0, column 1
    record[1 + 1024 + 32] = 128  # green plane, row 1, column 0
    images, labels = cifar.decode_records(record.tobytes(), label_bytes=1, name="x")
    assert labels.tolist() == [7] and images.shape == (1, 32, 32, 3)
    assert images[0, 0, 1, 0] == 255 and images[0, 1, 0, 1] == 128 and images.sum() == 255 + 128


def test_cifar10_binary_archive_loads_without_tensorflow(tmp_path):
    arrays = write_cifar10_archive(tmp_path / "cifar-10-binary.tar.gz")
    real = registry.load_info(with_counts("cifar10", min_class_count=5), data_dir=str(tmp_path))
    info = dataset_info("cifar10")
    assert real.class_names == tuple(f"class{c}" for c in range(10))
    np.testing.assert_array_equal(real.class_count, np.full(10, 5))
    assert rows_by_class(pixels(real.train_images, info.mean, info.std), real.train_labels) == rows_by_class(
        arrays["train_x"], arrays["train_y"]
    )
    np.testing.assert_array_equal(pixels(real.test_images, info.mean, info.std), arrays["test_x"])


def test_cifar100_extracted_folder_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    x, fine = random_images(200, (32, 32, 3), 0), balanced_labels(100, 2, 0)
    (folder / "train.bin").write_bytes(cifar_records(x, [fine // 5, fine]))
    (folder / "test.bin").write_bytes(cifar_records(x[:100], [np.arange(100) // 5, np.arange(100)]))
    (folder / "fine_label_names.txt").write_text("\n".join(f"f{c}" for c in range(100)))
    real = registry.load_info(with_counts("cifar100", min_class_count=2), data_dir=str(tmp_path))
    np.testing.assert_array_equal(real.class_count, np.full(100, 2))
    np.testing.assert_array_equal(real.test_labels, np.arange(100))
    assert real.class_names[99] == "f99"


def test_missing_cifar_names_the_archive_and_the_tfds_command(tmp_path):
    with pytest.raises(UserError) as e:
        load("cifar10", data_dir=str(tmp_path))
    message = str(e.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in message
    assert (
        f"tfds.builder('cifar10', data_dir='{tmp_path}', file_format='array_record').download_and_prepare()"
        in (message)
    )
    assert "jaxdd[tf]" in message and str(tmp_path / "cifar10") in message


def test_truncated_cifar_archive_names_the_fix(tmp_path):
    path = tmp_path / "cifar-10-binary.tar.gz"
    write_cifar10_archive(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match=r"is not a complete cifar-10-binary\.tar\.gz.*Download it again"):
        load("cifar10", data_dir=str(tmp_path))


# --- CIFAR: a tensorflow-datasets preparation, read without TensorFlow -----------------------------------


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def prepare_fake_tfds_cifar10(data_dir: pathlib.Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Prepares images under tfds' name 'cifar10', with the stock builder's version and features.

    The builder subclasses the stock one (so `_info` – features, version – is tfds' own) and only
    replaces the download with the given images, PNG-encoded with PIL as the stock builder would
    with TensorFlow. Written in array_record format, as `how_to_prepare` tells users to.
    """
    import tensorflow_datasets as tfds

    class FakeCifar10(tfds.builder_cls("cifar10"), skip_registration=True):
        name = "cifar10"

        def _split_generators(self, dl_manager):
            self.info.features["label"].names = [f"tfds{c}" for c in range(10)]
            return {"train": self._generate_examples("train", 0), "test": self._generate_examples("test", 20)}

        def _generate_examples(self, split, offset):
            count = 20 if split == "train" else 10
            for i in range(offset, offset + count):
                yield f"{split}_{i}", {"id": f"{split}_{i}", "image": png(images[i]), "label": int(labels[i])}

    FakeCifar10(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def test_tfds_array_record_cifar10_is_read_without_tensorflow(tmp_path):
    images, labels = random_images(30, (32, 32, 3), 3), np.concatenate([np.arange(20) % 10, np.arange(10)])
    prepare_fake_tfds_cifar10(tmp_path, images, labels)
    real = registry.load_info(with_counts("cifar10", min_class_count=2), data_dir=str(tmp_path))
    info = dataset_info("cifar10")
    assert real.class_names == tuple(f"tfds{c}" for c in range(10))
    assert rows_by_class(pixels(real.train_images, info.mean, info.std), real.train_labels) == rows_by_class(
        images[:20], labels[:20]
    )
    assert rows_by_class(pixels(real.test_images, info.mean, info.std), real.test_labels) == rows_by_class(
        images[20:], labels[20:]
    )
    with pytest.raises(UserError, match="2 training images, fewer than the 5000"):
        load("cifar10", data_dir=str(tmp_path))  # the real entry reads the same files, then checks counts


def test_tfds_not_prepared_raises_before_any_download(tmp_path, monkeypatch):
    with pytest.raises(tfds_sources.NotPrepared, match=r"not prepared in .*cifar100"):
        tfds_sources.load_tfds("cifar100", data_dir=str(tmp_path))
    monkeypatch.setattr(tfds_sources, "tensorflow_available", lambda: False)
    with pytest.raises(UserError, match="Downloading 'cifar100' needs TensorFlow"):
        tfds_sources.load_tfds("cifar100", data_dir=str(tmp_path), download=True)
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing downloaded


# --- Tiny ImageNet ---------------------------------------------------------------------------------------

WNIDS = ("n03000001", "n01000002", "n02000003")  # deliberately unsorted: labels follow sorted wnids


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_tiny_imagenet_zip(path: pathlib.Path) -> dict[str, list[tuple[bytes, str]]]:
    """The official layout with 3 classes × 4 train and 2 val images; returns (jpeg, wnid) per split."""
    root, rng = "tiny-imagenet-200/", np.random.default_rng(0)
    splits = {"train": [], "val": []}
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(root + "wnids.txt", "\n".join(WNIDS) + "\n")
        archive.writestr(root + "words.txt", "".join(f"{w}\tthing {w[-1]}, other name\n" for w in WNIDS))
        annotations = []
        for c, wnid in enumerate(WNIDS):
            archive.writestr(f"{root}train/{wnid}/{wnid}_boxes.txt", "ignored\n")
            for i in range(4):
                image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                data = jpeg(image[..., 0] if i == 0 else image)  # one greyscale JPEG per class
                archive.writestr(f"{root}train/{wnid}/images/{wnid}_{i}.JPEG", data)
                splits["train"].append((data, wnid))
            for i in range(2):
                name = f"val_{2 * c + i}.JPEG"
                data = jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
                archive.writestr(f"{root}val/images/{name}", data)
                annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
                splits["val"].append((data, wnid))
        archive.writestr(root + "val/val_annotations.txt", "\n".join(annotations) + "\n")
        archive.writestr(root + "test/images/test_0.JPEG", jpeg(np.zeros((64, 64, 3), np.uint8)))
    return splits


def decoded(examples: list[tuple[bytes, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Images as PIL decodes them (RGB) and labels as indices of the sorted wnids."""
    images = np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data, _ in examples])
    return images, np.array([sorted(WNIDS).index(wnid) for _, wnid in examples])


def test_tiny_imagenet_prepares_from_the_zip_and_reads_back(tmp_path):
    zip_path = tiny_imagenet.manual_zip_path(str(tmp_path))
    splits = write_tiny_imagenet_zip(zip_path)
    info = with_counts("tiny_imagenet", num_classes=3, min_class_count=4)
    real = registry.load_info(info, data_dir=str(tmp_path))
    assert real.class_names == ("thing 2", "thing 3", "thing 1")  # words of the sorted wnids
    np.testing.assert_array_equal(real.class_count, [4, 4, 4])
    for split, images, labels in (
        ("train", real.train_images, real.train_labels),
        ("val", real.test_images, real.test_labels),
    ):
        assert rows_by_class(pixels(images, info.mean, info.std), labels) == rows_by_class(
            *decoded(splits[split])
        )
    zip_path.unlink()  # prepared: the zip is no longer needed
    again = registry.load_info(info, data_dir=str(tmp_path))
    np.testing.assert_array_equal(again.train_images, real.train_images)


def test_missing_tiny_imagenet_zip_gives_the_download_command(tmp_path):
    with pytest.raises(UserError) as e:
        load("tiny_imagenet", data_dir=str(tmp_path))
    zip_path = tmp_path / "downloads" / "manual" / "tiny-imagenet-200.zip"
    assert f"wget -O {zip_path} http://cs231n.stanford.edu/tiny-imagenet-200.zip" in str(e.value)
    assert not (tmp_path / "tiny_imagenet").exists()


def test_corrupt_tiny_imagenet_zip_is_reported(tmp_path):
    zip_path = tiny_imagenet.manual_zip_path(str(tmp_path))
    zip_path.parent.mkdir(parents=True)
    zip_path.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="is not the official Tiny ImageNet zip"):
        load("tiny_imagenet", data_dir=str(tmp_path))
