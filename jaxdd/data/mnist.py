"""MNIST and Fashion-MNIST: the four published IDX files from a directory, else tensorflow-datasets.

Lookup order: `data_dir` (or `data_dir/<folder>`) holding the four IDX files
`{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`; then the Debian package folder
(`/usr/share/datasets/fashion-mnist/` from `apt-get install dataset-fashion-mnist`; Debian has no MNIST
package); then a tfds preparation in `data_dir` or tfds' default directory. The IDX files are read
directly rather than through tfds' stock builder because Debian rewrote their gzip headers, which makes
tfds' checksums reject them; numpy reads all 70,000 images in well under a second.
"""

from __future__ import annotations

import dataclasses
import pathlib

from jaxdd.data import idx, tfds_sources
from jaxdd.data.arrays import DatasetArrays
from jaxdd.errors import UserError

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclasses.dataclass(frozen=True)
class IdxSource:
    """Where an MNIST-style dataset may be found, and how a user gets it."""

    tfds_name: str
    folders: tuple[str, ...]  # sub-folders of data_dir that may hold the files
    system_dirs: tuple[str, ...]  # folders that OS packages install
    class_names: tuple[str, ...]
    download_url: str
    package_hint: str  # how to install an OS package that provides the files, or ""


MNIST = IdxSource(
    tfds_name="mnist",
    folders=("mnist", "MNIST"),
    system_dirs=(),
    class_names=tuple(str(d) for d in range(10)),
    download_url="https://ossci-datasets.s3.amazonaws.com/mnist/ (a mirror of http://yann.lecun.com/exdb/mnist/)",
    package_hint="",
)
FASHION_MNIST = IdxSource(
    tfds_name="fashion_mnist",
    folders=("fashion-mnist", "fashion_mnist"),
    system_dirs=("/usr/share/datasets/fashion-mnist",),
    class_names=FASHION_CLASSES,
    download_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ "
    "(see https://github.com/zalandoresearch/fashion-mnist)",
    package_hint="`apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu: the files land in "
    "/usr/share/datasets/fashion-mnist/, found without data_dir)",
)


def candidate_dirs(source: IdxSource, data_dir: str | None) -> list[pathlib.Path]:
    """Folders searched for the IDX files, in order."""
    dirs = []
    if data_dir:
        root = pathlib.Path(data_dir).expanduser()
        dirs += [root] + [root / folder for folder in source.folders]
    return dirs + [pathlib.Path(d) for d in source.system_dirs]


def how_to_get(source: IdxSource, data_dir: str | None) -> str:
    """Every way to make `source` loadable, for error messages."""
    stems = ", ".join(f"{stem}.gz" for stems in idx.SPLIT_FILES.values() for stem in stems)
    ways = []
    if source.package_hint:
        ways.append(source.package_hint)
    ways.append(
        f"download the four IDX files ({stems}) from {source.download_url} into a folder and pass "
        "--config.data_dir=FOLDER"
    )
    ways.append(tfds_sources.how_to_prepare(source.tfds_name, data_dir))
    return " Either " + "; or ".join(ways)


def load_idx_source(
    source: IdxSource, *, data_dir: str | None = None, download: bool = False
) -> DatasetArrays:
    """Reads an MNIST-style dataset from the first folder holding its IDX files, else from tfds.

    Returns: `DatasetArrays` with images [N, 28, 28, 1] uint8 (pixel_max 255), 60,000 train and
    10,000 test images for the real datasets.
    Raises: `UserError` naming every way to get the data when none is found, or naming a corrupt file.
    """
    for directory in candidate_dirs(source, data_dir):
        if idx.has_idx_files(directory):
            try:
                train_images, train_labels = idx.read_split(
                    directory, "train", num_classes=len(source.class_names)
                )
                test_images, test_labels = idx.read_split(
                    directory, "test", num_classes=len(source.class_names)
                )
            except UserError as e:
                raise UserError(
                    f"{e} Replace the file with a fresh copy.{how_to_get(source, data_dir)}"
                ) from None
            return DatasetArrays(
                train_images=train_images,
                train_labels=train_labels,
                test_images=test_images,
                test_labels=test_labels,
                class_names=source.class_names,
                pixel_max=255.0,
                source=str(directory),
            )
    try:
        return tfds_sources.load_tfds(source.tfds_name, data_dir=data_dir, download=download)
    except tfds_sources.NotPrepared as e:
        searched = (
            ", ".join(str(d) for d in candidate_dirs(source, data_dir)) or "no folder (no data_dir given)"
        )
        raise UserError(
            f"Dataset '{source.tfds_name}' not found: no IDX files in {searched}, and no tfds preparation "
            f"in {e.data_path}.{how_to_get(source, data_dir)}"
        ) from None


def load_mnist(*, data_dir: str | None = None, download: bool = False) -> DatasetArrays:
    """MNIST (LeCun et al., 1998): 28×28 grey digits, 60,000 train / 10,000 test."""
    return load_idx_source(MNIST, data_dir=data_dir, download=download)


def load_fashion_mnist(*, data_dir: str | None = None, download: bool = False) -> DatasetArrays:
    """Fashion-MNIST (Xiao et al., 2017): 28×28 grey clothing images, 60,000 train / 10,000 test."""
    return load_idx_source(FASHION_MNIST, data_dir=data_dir, download=download)
