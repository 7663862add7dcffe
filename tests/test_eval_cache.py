"""Evaluation results cached per (set, architecture, protocol, networks' keys); the fixed test subset."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import data, eval_cache, evaluation
from jaxdd.errors import UserError


def _real(per_class_test=(5, 7, 9)):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(per_class_test)])
    images = np.random.default_rng(0).uniform(size=(len(labels), 8, 8, 1)).astype(np.float32)
    return data.from_arrays(
        name="blobs", train_images=images, train_labels=labels, test_images=images, test_labels=labels,
        mean=(0.5,), std=(0.25,), class_names=("a", "b", "c"),
    )  # fmt: skip


def test_the_test_subset_is_stratified_fixed_and_bounded():
    real = _real()
    subset = data.test_subset(real, 7)
    counts = np.bincount(np.asarray(subset.test_labels), minlength=3)
    assert counts.tolist() == [3, 2, 2]  # ⌊7/3⌋ each, the first 7 mod 3 classes one more
    again = data.test_subset(real, 7)
    np.testing.assert_array_equal(np.asarray(subset.test_images), np.asarray(again.test_images))
    np.testing.assert_array_equal(np.asarray(subset.train_images), np.asarray(real.train_images))
    with pytest.raises(UserError, match=r"eval\.test_size=18 needs 6 test images of class 0"):
        data.test_subset(real, 18)


def test_a_cached_architecture_is_read_and_a_changed_key_is_recomputed(tmp_path):
    real = _real()
    calls = []

    def accuracies(model, key):
        calls.append(np.asarray(jax.random.key_data(key)).tolist())
        return np.asarray([0.5, 0.25]), {}

    tag = {"set": eval_cache.set_digest(jnp.zeros((2, 8, 8, 1)), jnp.arange(2)), "protocol": "p"}
    run = lambda tag, acc=accuracies: evaluation.for_each_arch(
        ("MLP",),
        real,
        jax.random.key(0),
        acc,
        note=lambda s: "",
        cache=(tmp_path, tag, True),
        log=lambda _: None,
    )
    first = run(tag)
    assert len(calls) == 1 and first["MLP"]["mean"] == pytest.approx(0.375)
    never = lambda model, key: pytest.fail("a cached architecture was evaluated again")
    assert run(tag, never)["MLP"]["accs"] == first["MLP"]["accs"]
    run({**tag, "protocol": "q"})  # another protocol: another entry
    assert len(calls) == 2
    other_set = {**tag, "set": eval_cache.set_digest(jnp.ones((2, 8, 8, 1)), jnp.arange(2))}
    run(other_set)
    assert len(calls) == 3
    # a damaged entry counts as missing
    for path in tmp_path.glob("MLP-*.json"):
        path.write_text("{")
    run(tag)
    assert len(calls) == 4
