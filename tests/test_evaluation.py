"""The evaluation protocol: learns an easy task, N distinct networks, loop = vmap, the table format."""

import jax
import numpy as np
import pytest

from jaxdd import evaluation
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


@pytest.mark.parametrize(
    ("parallel", "backend", "expected"),
    [("auto", "cpu", "loop"), ("auto", "gpu", "vmap"), ("vmap", "cpu", "vmap")],
)
def test_resolve_parallelism(parallel, backend, expected):
    assert evaluation.resolve_parallelism(parallel, backend) == expected


def test_markdown_table_prints_percent_mean_and_std():
    rows = {
        "dc": {"ConvNet": evaluation.summarize([0.5, 0.7])},
        "random": {"MLP": evaluation.summarize([0.25])},
    }
    table = evaluation.markdown_table(rows, ["ConvNet", "MLP"])
    assert table.splitlines() == [
        "| set | ConvNet | MLP |",
        "|---|---|---|",
        "| dc | 60.0 ± 10.0 | – |",
        "| random | – | 25.0 ± 0.0 |",
    ]
