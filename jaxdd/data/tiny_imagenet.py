"""Tiny ImageNet (Le & Yang, 2015): 200 classes of 64×64 colour images, as a tfds builder.

The builder reads the official `tiny-imagenet-200.zip` (never extracted) from tfds' manual directory
`<data_dir>/downloads/manual/` and writes `array_record` files whose images are raw uint8 tensors
[64, 64, 3] (a `Tensor` feature, not `Image`), so preparing and reading need no TensorFlow. JPEGs are
decoded with PIL (`convert('RGB')`: some are greyscale). The official validation set (50 per class) is
the test split: the test labels are not public. Labels index the sorted WordNet ids of `wnids.txt`.

Zip layout: `tiny-imagenet-200/wnids.txt`, `words.txt` (wnid TAB names), `train/<wnid>/images/*.JPEG`
(500 per class), `val/images/*.JPEG` and `val/val_annotations.txt` (filename TAB wnid TAB bbox...).
"""

from __future__ import annotations

import io
import pathlib
import zipfile
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import constants

from jaxdd.data import tfds_sources
from jaxdd.data.arrays import DatasetArrays
from jaxdd.errors import UserError

ZIP_NAME = "tiny-imagenet-200.zip"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_ROOT = "tiny-imagenet-200/"
IMAGE_SHAPE = (64, 64, 3)


class TinyImagenet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """tfds builder for Tiny ImageNet from the manually downloaded official zip.

    Not registered with tfds (no import side effect, no clash with another 'tiny_imagenet'):
    instantiate it directly. Defaults to the array_record format.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Official zip; val is the test split; uint8 tensor images."
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Download {URL} (about 237 MB) and place {ZIP_NAME}, unextracted, in the manual directory "
        "(`<data_dir>/downloads/manual/` by default)."
    )

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Tiny ImageNet: 200 ImageNet classes at 64x64, 500 train / 50 val images each.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=IMAGE_SHAPE, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
                    ),
                    "label": tfds.features.ClassLabel(),  # names (wnids) are set from the zip
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://www.kaggle.com/c/tiny-imagenet",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        zip_path = pathlib.Path(dl_manager.manual_dir) / ZIP_NAME
        wnids, words = read_class_names(zip_path)
        self.info.features["label"].names = wnids
        self.info.metadata["class_words"] = [words.get(wnid, wnid) for wnid in wnids]
        return {
            "train": self._generate_examples(zip_path, "train"),
            "test": self._generate_examples(zip_path, "val"),
        }

    def _generate_examples(self, zip_path: pathlib.Path, split: str) -> Iterator[tuple[str, dict]]:
        with zipfile.ZipFile(zip_path) as archive:
            for member, wnid in _labelled_members(archive, split):
                image = decode_jpeg(archive.read(member), member)
                yield member, {"image": image, "label": wnid, "file_name": member.rsplit("/", 1)[-1]}


def read_class_names(zip_path: pathlib.Path) -> tuple[list[str], dict[str, str]]:
    """Sorted WordNet ids of the classes, and each wnid's first English name, from the zip."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            wnids = sorted(archive.read(_ROOT + "wnids.txt").decode().split())
            words = {}
            for line in archive.read(_ROOT + "words.txt").decode().splitlines():
                wnid, _, names = line.partition("\t")
                words[wnid] = names.split(",")[0].strip()
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise UserError(
            f"{zip_path} is not the official Tiny ImageNet zip ({e}); download it again from {URL}."
        ) from None
    return wnids, words


def _labelled_members(archive: zipfile.ZipFile, split: str) -> Iterator[tuple[str, str]]:
    """(member path, wnid) of every JPEG of 'train' or 'val', in a fixed order."""
    if split == "train":
        for member in sorted(archive.namelist()):
            parts = member[len(_ROOT) :].split("/")
            if member.startswith(_ROOT + "train/") and len(parts) == 4 and parts[3].endswith(".JPEG"):
                yield member, parts[1]
    else:
        annotations = archive.read(_ROOT + "val/val_annotations.txt").decode()
        for line in sorted(annotations.splitlines()):
            if line.strip():
                file_name, wnid = line.split("\t")[:2]
                yield f"{_ROOT}val/images/{file_name}", wnid


def decode_jpeg(data: bytes, name: str) -> np.ndarray:
    """One JPEG as [64, 64, 3] uint8 RGB; `UserError` naming `name` if it is not 64×64."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image.convert("RGB"), np.uint8)
    if array.shape != IMAGE_SHAPE:
        raise UserError(f"{name} in the Tiny ImageNet zip is {array.shape}, expected {IMAGE_SHAPE}.")
    return array


def manual_zip_path(data_dir: str | None) -> pathlib.Path:
    """`<data_dir>/downloads/manual/tiny-imagenet-200.zip`, data_dir defaulting to tfds' own."""
    root = pathlib.Path(data_dir or constants.get_default_data_dir()).expanduser()
    return root / "downloads" / "manual" / ZIP_NAME


def load_tiny_imagenet(*, data_dir: str | None = None, download: bool = False) -> DatasetArrays:
    """Tiny ImageNet's train (100,000) and val (10,000, as test) images: [N, 64, 64, 3] uint8.

    Prepares the array_record files on first use (decoding the zip's JPEGs takes minutes), then
    reads them back with `as_data_source`. `download` is ignored: the zip is a manual download.
    Raises: `UserError` with the download command, before any work, when the zip is missing.
    """
    del download
    root = str(pathlib.Path(data_dir or constants.get_default_data_dir()).expanduser())
    builder = TinyImagenet(data_dir=root)
    if not tfds_sources.is_prepared(builder):
        zip_path = manual_zip_path(root)
        if not zip_path.is_file():
            raise UserError(
                f"Tiny ImageNet is not prepared in {builder.data_path} and its zip is not at {zip_path}. "
                f"Download it: `mkdir -p {zip_path.parent} && wget -O {zip_path} {URL}` (do not extract it), "
                f"then run again{' with the same --config.data_dir' if data_dir else ''}; the first run "
                "converts it (minutes)."
            )
        read_class_names(zip_path)  # a bad zip fails here, before tfds starts writing
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(zip_path.parent))
        )
    splits = {
        split: tfds_sources.read_split(builder, split, image_key="image", label_key="label")
        for split in ("train", "test")
    }
    words = builder.info.metadata.get("class_words") if builder.info.metadata else None
    class_names = tuple(words) if words else tuple(builder.info.features["label"].names)
    return DatasetArrays.from_splits(splits, class_names, str(builder.data_path))
