"""Shared fixtures: tiny in-memory datasets built from arrays (no files, no downloads)."""

import jax
import numpy as np
import pytest

from jaxdd.data.real import from_arrays


def blobs(num_classes: int, per_class: int, shape=(8, 8, 1), *, noise: float = 0.1, seed: int = 0):
    """An easily separable image set in [0, 1]: class c is a fixed random template (the same for every
    seed) plus per-image noise. Templates differ in pattern, not only in brightness, so networks with
    instance normalisation separate them too."""
    templates = np.random.default_rng(12345).uniform(0.2, 0.8, size=(num_classes, *shape))
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    images = templates[labels] + noise * rng.normal(size=(len(labels), *shape))
    return np.clip(images, 0, 1).astype(np.float32), labels.astype(np.int32)


@pytest.fixture(name="blobs")
def blobs_fixture():
    """The `blobs` factory, for tests that build their own arrays."""
    return blobs


@pytest.fixture
def tiny_real():
    """RealData with 3 classes of 12 (train) / 6 (test) 8×8×1 images."""
    train_x, train_y = blobs(3, 12, seed=1)
    test_x, test_y = blobs(3, 6, seed=2)
    return from_arrays(
        name="blobs",
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        mean=(0.5,),
        std=(0.25,),
        class_names=("a", "b", "c"),
    )


@pytest.fixture(scope="module")
def fast_compilation():
    """XLA's optimisations off for a whole module (`pytestmark = pytest.mark.usefixtures(...)`): its
    tests run tiny programs whose compile time, not run time, dominates."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drops JAX's compiled programs after each test module: one process runs the whole suite, and the
    programs it would otherwise keep (MTT's rematerialised unrolls among them) grew until XLA:CPU crashed
    compiling a late test (a segfault in test_training, reproduced twice at 96% of a clean CI run)."""
    yield
    jax.clear_caches()
