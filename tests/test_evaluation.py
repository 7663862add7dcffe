"""The evaluation protocol: learns an easy task, N distinct networks, loop = vmap, one program per student."""

import jax
import numpy as np
import pytest

from jaxdd import evaluation
from jaxdd.config import base_config, resolve_backend
from jaxdd.errors import UserError
from jaxdd.models import ConvNetSpec, get_model

TINY = ConvNetSpec(width=8, depth=1)


def _arrays(*arrays):
    return tuple(jax.numpy.asarray(a) for a in arrays)


def test_protocol_reaches_high_accuracy_on_a_separable_set(blobs):
    train_x, train_y = blobs(3, 5, seed=0)
    test_x, test_y = blobs(3, 40, seed=1)
    model = get_model(TINY, num_classes=3, image_shape=(8, 8, 1))
    protocol = evaluation.EvalProtocol(epochs=60, lr=0.05)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    accs = evaluation.evaluate_model(model, protocol, keys, *_arrays(train_x, train_y, test_x, test_y))
    assert accs.shape == (2,) and accs.min() >= 0.95


def _noisy_task():
    rng = np.random.default_rng(0)
    train_x = rng.uniform(size=(6, 8, 8, 1)).astype(np.float32)
    test_x = rng.uniform(size=(300, 8, 8, 1)).astype(np.float32)
    return _arrays(train_x, rng.integers(0, 3, 6), test_x, rng.integers(0, 3, 300))


def test_each_key_is_its_own_network_and_the_same_key_the_same_network():
    model = get_model(TINY, num_classes=3, image_shape=(8, 8, 1))
    protocol = evaluation.EvalProtocol(epochs=3)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
    keys = np.stack([k1, k2, k3, k1])
    accs = evaluation.evaluate_model(model, protocol, keys, *_noisy_task(), parallel="loop")
    assert accs[0] == accs[3]
    assert len(set(accs[:3].tolist())) == 3  # chance-level accuracies of three distinct networks
    assert evaluation.summarize(accs[:3])["std"] > 0


def test_vmap_and_loop_train_the_same_networks():
    model = get_model(TINY, num_classes=3, image_shape=(8, 8, 1))
    protocol = evaluation.EvalProtocol(epochs=3, augment="color_crop_cutout_scale_rotate")
    keys = jax.random.split(jax.random.PRNGKey(4), 3)
    data = _noisy_task()
    looped = evaluation.evaluate_model(model, protocol, keys, *data, parallel="loop")
    vmapped = evaluation.evaluate_model(model, protocol, keys, *data, parallel="vmap")
    np.testing.assert_allclose(looped, vmapped, atol=2 / 300)  # at most two borderline test images


@pytest.mark.parametrize(("backend", "expected"), [("cpu", "loop"), ("gpu", "vmap"), ("tpu", "vmap")])
def test_eval_parallel_auto_is_the_backends_measured_choice_recorded_in_the_config(backend, expected):
    config = base_config()
    assert config.eval.parallel == "auto"
    assert (
        resolve_backend(config, backend).eval.parallel == expected == evaluation.backend_parallelism(backend)
    )


def test_the_library_is_given_a_concrete_way_to_train_the_networks():
    model = get_model(TINY, num_classes=3, image_shape=(8, 8, 1))
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    with pytest.raises(UserError, match=r"parallel='auto' must be one of loop, vmap"):
        evaluation.evaluate_model(
            model, evaluation.EvalProtocol(epochs=1), keys, *_noisy_task(), parallel="auto"
        )


def test_equal_students_share_one_compiled_program():
    """A KD τ search and a second evaluation of the same shapes reuse the program: `Student` is hashed by
    value, not by identity."""
    model = get_model(TINY, num_classes=3, image_shape=(8, 8, 1))
    protocol = evaluation.EvalProtocol(epochs=1)
    keys = jax.random.split(jax.random.PRNGKey(5), 2)
    images, labels, test_images, test_labels = _noisy_task()
    before = evaluation._accuracy_block._cache_size()
    for _ in range(2):  # two distinct but equal students
        student = evaluation.Student(get_model(TINY, num_classes=3, image_shape=(8, 8, 1)), protocol)
        evaluation.train_students(student, keys, images, labels, test=(test_images, test_labels))
    assert evaluation._accuracy_block._cache_size() == before + 1
    plain = evaluation.evaluate_model(model, protocol, keys, images, labels, test_images, test_labels)
    assert evaluation._accuracy_block._cache_size() == before + 1  # the plain student is that student
    np.testing.assert_array_equal(
        plain, evaluation.train_students(student, keys, images, labels, test=(test_images, test_labels))
    )
