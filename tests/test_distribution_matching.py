"""Distribution matching (DM) against independent expectations: the loss of a tiny network by hand in
NumPy, a zero loss when the synthetic class means are the real ones (with and without BatchNorm, with
siamese DSA), one compilation per configuration, config errors, two iterations through the driver.

Tiny sizes throughout (8x8 images, 3 classes); the module compiles with most XLA optimisations off.
"""

import json

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from jaxdd import run as driver
from jaxdd.config import base_config, resolve_backend, validate
from jaxdd.data.real import from_arrays
from jaxdd.errors import UserError
from jaxdd.methods import distribution_matching as dm
from jaxdd.methods import get_method
from jaxdd.models import get_model

PER_CLASS = 6


pytestmark = pytest.mark.usefixtures("fast_compilation")


class TinyEmbed(nn.Module):
    """embedding = act(flatten(x) @ W + b) [B, 5]; logits = embedding @ V + c."""

    num_classes: int
    linear: bool = False

    @nn.compact
    def __call__(self, x, *, train):
        embedding = nn.Dense(5)(x.reshape(x.shape[0], -1))
        embedding = embedding if self.linear else nn.relu(embedding)
        return nn.Dense(self.num_classes)(embedding), {"embedding": embedding}


def _real(blobs, num_classes: int = 3):
    x, y = blobs(num_classes, PER_CLASS, seed=1)
    return from_arrays(
        name="blobs", train_images=x, train_labels=y, test_images=x, test_labels=y,
        mean=(0.5,), std=(0.25,), class_names=tuple("abc"[:num_classes]),
    )  # fmt: skip


def _numpy_loss(params, real, images):
    """Σ_c ‖mean relu(R_c W + b) − mean relu(S_c W + b)‖², with R_c the whole class (order-free)."""
    w, b = (np.asarray(params["Dense_0"][k], np.float64) for k in ("kernel", "bias"))
    embed = lambda x: np.maximum(np.asarray(x, np.float64).reshape(len(x), -1) @ w + b, 0)
    train_x, train_y = np.asarray(real.train_images), np.asarray(real.train_labels)
    syn = np.asarray(images).reshape(real.num_classes, -1, *images.shape[1:])
    return sum(
        np.sum((embed(train_x[train_y == c]).mean(0) - embed(syn[c]).mean(0)) ** 2)
        for c in range(real.num_classes)
    )


def test_loss_matches_numpy_and_the_batchnorm_path_agrees_without_batchnorm(blobs):
    real = _real(blobs)
    model = TinyEmbed(num_classes=3)
    params = model.init(jax.random.key(1), real.train_images[:1], train=False)["params"]
    images = jax.random.normal(jax.random.key(2), (6, 8, 8, 1))
    settings = dm.Settings(batch_real=PER_CLASS)  # the whole class: its mean does not depend on the draw
    key = jax.random.key(3)
    loss, grad = dm.matching_loss_and_grad(model, params, {}, images, real, key, settings)
    np.testing.assert_allclose(float(loss), _numpy_loss(params, real, images), rtol=1e-5)
    # the all-classes batch (BatchNorm nets' path) gives the same loss and gradient for a net without BN
    all_loss, all_grad = jax.value_and_grad(
        lambda x: dm._all_classes_loss(model, params, {}, x, real, key, settings)
    )(images)
    np.testing.assert_allclose(float(all_loss), float(loss), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(all_grad), np.asarray(grad), rtol=1e-4, atol=1e-7)
    # the gradient is that of the NumPy loss (central differences on a few pixels)
    flat = np.asarray(images, np.float64).reshape(-1)
    for index in (0, 70, 300):
        step = np.zeros_like(flat)
        step[index] = 1e-3
        plus = _numpy_loss(params, real, (flat + step).reshape(images.shape).astype(np.float32))
        minus = _numpy_loss(params, real, (flat - step).reshape(images.shape).astype(np.float32))
        assert float(grad.reshape(-1)[index]) == pytest.approx((plus - minus) / 2e-3, rel=2e-2, abs=1e-4)


def test_loss_is_zero_when_the_synthetic_class_means_are_the_real_ones(blobs):
    real = _real(blobs)
    key = jax.random.key(0)
    # a linear embedding: ipc = 1 image per class, the class's mean image
    model = TinyEmbed(num_classes=3, linear=True)
    params = model.init(jax.random.key(1), real.train_images[:1], train=False)["params"]
    means = real.train_images.reshape(3, PER_CLASS, 8, 8, 1).mean(1)
    settings = dm.Settings(batch_real=PER_CLASS)
    assert float(dm.matching_loss(model, params, {}, means, real, key, settings)) == pytest.approx(
        0, abs=1e-9
    )
    # any network, with siamese DSA and with BatchNorm: the synthetic set is the whole real set
    strategy = "color_crop_cutout_scale_rotate"
    for norm in ("instancenorm", "batchnorm"):
        net = get_model({"width": 4, "depth": 1, "norm": norm}, num_classes=3, image_shape=(8, 8, 1))
        variables = net.init(jax.random.key(1), real.train_images[:1], train=False)
        stats = variables.get("batch_stats", {})
        settings = dm.Settings(batch_real=PER_CLASS, strategy=strategy)
        loss, _ = dm.matching_loss_and_grad(
            net, variables["params"], stats, real.train_images, real, key, settings
        )
        assert float(loss) == pytest.approx(0, abs=1e-8), norm
        # a perturbed set is not a match
        moved = real.train_images.at[0].add(1.0)
        assert float(dm.matching_loss(net, variables["params"], stats, moved, real, key, settings)) > 1e-6


def _config(model=None, **dm_overrides) -> ml_collections.ConfigDict:
    values = base_config().to_dict()
    values.update({"dataset": "digits", "method": "dm", "ipc": 1, "iterations": 2, "init": "real"})
    values.update({"checkpoint_every": 1, "log_every": 1, "compilation_cache_dir": ""})
    values["model"] = model or "ConvNetW32"  # config.validate takes registry names
    values["dm"].update({"batch_real": 8, **dm_overrides})
    values["eval"].update({"archs": "", "baselines": ""})
    return resolve_backend(ml_collections.ConfigDict(values))  # the backend's choices, as validate makes


def test_outer_step_compiles_once_and_moves_the_images(blobs):
    real = _real(blobs)
    config = _config(model={"width": 4, "depth": 1, "norm": "batchnorm"})
    method = get_method("dm")
    state = method.init(config, real, jax.random.key(0))
    step = method.make_step(config, real)
    before = dm.outer_step._cache_size()
    first, metrics = step(state, real)
    second, _ = step(first, real)
    assert dm.outer_step._cache_size() == before + 1
    assert int(second.step) == 2 and np.isfinite(float(metrics["loss"]))
    assert not np.allclose(np.asarray(second.images), np.asarray(state.images))


def test_validate_names_bad_values():
    for overrides, match in (
        ({"lr_img": -1.0}, "dm.lr_img"),  # 0 is AUTO (`config.RULES`: the readme's value)
        ({"momentum_img": 1.0}, "dm.momentum_img"),
        ({"batch_real": 0}, "dm.batch_real"),
        ({"dsa_strategy": "colour"}, "unknown op"),
    ):
        with pytest.raises(UserError, match=match):
            validate(_config(**overrides))
    config = _config()
    config.iterations = 0  # allowed, as for every method: the run exports the initialisation
    validate(config)


def test_two_iterations_through_the_driver(tmp_path):
    driver.run(_config(), tmp_path, log=lambda _: None)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert steps == [1, 2]
    with np.load(tmp_path / "synset.npz") as synset:
        assert synset["images"].shape == (10, 8, 8, 1)
        assert np.isfinite(synset["images"]).all()
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())[-1] == 2
