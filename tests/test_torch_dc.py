"""The PyTorch baseline of benchmarks/bench_torch_dc.py computes what jaxdd's DC step computes: the same
matching loss and pixel gradient on identical weights and data, and the same outer iteration (pixel
steps with momentum, inner training) from the same initial network. Skipped where torch is absent."""

import jax
import ml_collections
import numpy as np
import pytest

from jaxdd.config import resolve_backend
from jaxdd.data.real import from_arrays
from jaxdd.methods import gradient_matching as gm
from jaxdd.models import get_model

torch = pytest.importorskip("torch")
tdc = pytest.importorskip("benchmarks.bench_torch_dc")

SPEC = {"width": 8, "depth": 2}
SHAPE = (8, 8, 1)  # grayscale: the first conv pads by 3 on both sides
PER_CLASS = 6  # = batch_real: every match sees the whole class, in whatever order it is drawn


@pytest.fixture(name="real")
def real_fixture(blobs):
    images, labels = blobs(3, PER_CLASS, SHAPE)
    return from_arrays(
        name="blobs", train_images=images, train_labels=labels, test_images=images[:3],
        test_labels=labels[:3], mean=(0.5,), std=(0.25,), class_names=("a", "b", "c"),
    )  # fmt: skip


def _config(outer: int, inner: int) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        {
            "devices": 0,
            "method": "dc",
            "dataset": "blobs",
            "ipc": 2,
            "init": "noise",
            "seed": 0,
            "model": SPEC,
        }
    )
    config.gm = gm.default_config()
    config.gm.update(outer_loop=outer, inner_loop=inner, batch_real=PER_CLASS, class_chunk=1)
    return resolve_backend(config)


def _torch_side(real, params, images: np.ndarray):
    net = tdc.torch_convnet(real.num_classes, SHAPE, **SPEC)
    tdc.load_jaxdd_params(net, params)
    syn = torch.from_numpy(np.array(images).transpose(0, 3, 1, 2)).requires_grad_(True)
    starts, counts = np.asarray(real.class_start), np.asarray(real.class_count)
    train = torch.from_numpy(np.array(real.train_images).transpose(0, 3, 1, 2))
    real_by_class = [train[s : s + n] for s, n in zip(starts, counts, strict=True)]
    return net, syn, real_by_class


def test_torch_matching_loss_and_pixel_gradient_equal_jaxdds_on_identical_weights(real):
    model = get_model(SPEC, num_classes=3, image_shape=SHAPE)
    params = model.init(jax.random.PRNGKey(3), np.zeros((1, *SHAPE), np.float32), train=False)["params"]
    images = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (6, *SHAPE)))
    loss, grad = gm.matching_loss_and_grad(
        model, params, {}, images, real, jax.random.PRNGKey(5), gm.MatchOptions(batch_real=PER_CLASS)
    )
    net, syn, real_by_class = _torch_side(real, params, images)
    generator = torch.Generator().manual_seed(0)
    torch_loss = tdc.matching_loss(net, syn, real_by_class, ipc=2, batch_real=PER_CLASS, generator=generator)
    (torch_grad,) = torch.autograd.grad(torch_loss, [syn])
    assert float(loss) > 0.1  # weight rows of 3 layers: a loss of exactly 0 would test nothing
    np.testing.assert_allclose(float(torch_loss.detach()), float(loss), rtol=1e-5)
    torch_grad = torch_grad.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(torch_grad, np.asarray(grad), rtol=1e-3, atol=1e-4 * np.abs(grad).max())


def test_torch_outer_iteration_equals_jaxdds_outer_step_from_the_same_network(real):
    config = _config(outer=2, inner=3)
    state = gm.init(config, real, jax.random.PRNGKey(0))
    new_state, metrics = gm.make_step(config, real)(state, real)
    # the networks outer_step draws (its documented key derivation: fold_in(key, step), then split)
    settings = gm.settings_from_config(config, min_class_count=PER_CLASS, num_classes=3)
    net_key, _ = jax.random.split(jax.random.fold_in(state.key, state.step))
    model = get_model(SPEC, num_classes=3, image_shape=SHAPE)
    nets = gm.init_nets(model, settings, net_key, SHAPE)
    params = jax.tree.map(lambda x: x[0], nets.params)

    net, syn, real_by_class = _torch_side(real, params, state.images)
    pixel_opt = tdc.pixel_optimizer(syn, settings)
    generator = torch.Generator().manual_seed(0)
    losses = tdc.outer_iteration(net, syn, pixel_opt, real_by_class, settings, generator=generator)
    assert len(losses) == 2
    np.testing.assert_allclose(losses[0] / 3, float(metrics["loss_first"]), rtol=1e-5)
    # the second match sees the pixels after one step and the network after 3 inner epochs
    np.testing.assert_allclose(losses[1] / 3, float(metrics["loss_last"]), rtol=1e-4)
    assert abs(losses[1] - losses[0]) > 1e-3
    jax_update = np.asarray(new_state.images) - np.asarray(state.images)
    torch_update = syn.detach().numpy().transpose(0, 2, 3, 1) - np.asarray(state.images)
    assert np.abs(jax_update).max() > 1e-4
    np.testing.assert_allclose(torch_update, jax_update, rtol=1e-3, atol=1e-3 * np.abs(jax_update).max())
